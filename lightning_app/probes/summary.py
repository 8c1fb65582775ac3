"""The end of fit, in a few lines: did training help on each probe corpus (with a paired 95%
interval, also logged as ``probe/<corpus>/knn_cv_change``, ``_low`` and ``_high``), is that corpus
yours, what the label-free signals of your corpus did, and what was exported.

Self-supervised fine-tuning does not always help: from a model that is already a good sentence
encoder, some corpora end below the untrained model on the probes. The summary says so plainly,
next to the best step, before anyone uses the model. With ``LayerProbe(tsne=True)`` the step-0 and
final last-layer embeddings are also drawn as t-SNE maps side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from lightning import Trainer
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_app.model.export import ExportEncoder
from lightning_app.probes import board, tags, verdict
from lightning_app.probes.interval import knn_cv_correct, paired_interval
from lightning_app.probes.knn import SEED
from lightning_app.probes.plots import layout, palette


@dataclass
class CorpusSummary:
    """Last-layer kNN accuracy of one probe corpus: (step, accuracy) at step 0 (None when not
    probed), at the end and at the best step (the earliest of equal bests)."""

    name: str
    start: tuple[int, float] | None
    end: tuple[int, float]
    best: tuple[int, float]

    @property
    def worse(self) -> bool:
        return self.start is not None and self.end[1] < self.start[1]


def summarize(history: dict[str, list[tuple[int, float]]]) -> list[CorpusSummary]:
    """One summary per corpus from its (step, accuracy) probes in the order they ran."""
    out = []
    for name, probes in history.items():
        start = next(((s, a) for s, a in probes if s == 0), None)
        best = max(probes, key=lambda p: (p[1], -p[0]))
        out.append(CorpusSummary(name, start, probes[-1], best))
    return out


def summary_lines(summaries: list[CorpusSummary], k: int, exported: str | None,
                  details: dict[str, list[str]] | None = None, trailer: list[str] = ()) -> list[str]:
    """The printed and logged text: one line per corpus, a plain warning where training hurt, the
    corpus's ``details`` (its interval, whether it is the training corpus), then the ``trailer``."""
    lines = [f"probe summary: last-layer {k}-NN accuracy at step 0, at the end, and at the best step" if summaries
             else "probe summary: no labelled probe corpus (probe.corpora is empty)"]
    for s in summaries:
        start = f"step 0 {s.start[1]:.4f}" if s.start else "step 0 not probed"
        change = f" ({s.end[1] - s.start[1]:+.4f})" if s.start else ""
        lines.append(f"  {s.name}: {start} -> step {s.end[0]} {s.end[1]:.4f}{change}; "
                     f"best {s.best[1]:.4f} at step {s.best[0]}")
        if s.worse:
            lines.append(f"  {s.name}: training made it worse: the end ({s.end[1]:.4f}) is below step 0 "
                         f"({s.start[1]:.4f}); the untrained model or the best checkpoint may serve this corpus better.")
        lines.extend((details or {}).get(s.name, []))
    lines.extend(trailer)
    if exported:
        lines.append(f"  exported: {exported}")
    return lines


def end_outcomes(probe) -> dict[str, tuple[int, torch.Tensor, torch.Tensor]]:
    """Per labelled corpus of a ``LayerProbe`` probed at step 0: the end step and the last layer's per-document
    k-fold kNN correctness at step 0 and at the end (``knn_cv_correct``)."""
    outcomes = {}
    for spec in probe.corpora:
        if spec.name in probe.start_correct and spec.name in probe.last_layer:
            step, end = probe.last_layer[spec.name]
            after = knn_cv_correct(end, probe.prepared[spec.name].corpus.labels, probe.k, probe.folds, probe.seed,
                                   probe.scoring["metric"])
            outcomes[spec.name] = (step, probe.start_correct[spec.name], after)
    return outcomes


def change_metrics(outcomes: dict[str, tuple[int, torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """``tags.change_tags`` of each corpus in ``outcomes``: its paired change and 95% interval, as shares."""
    return {tag: value for name, (_, before, after) in outcomes.items()
            for tag, value in zip(tags.change_tags(name), paired_interval(before, after))}


def labelled_details(probe, outcomes: dict[str, tuple[int, torch.Tensor, torch.Tensor]]
                     ) -> tuple[dict[str, list[str]], tuple[str, float] | None, str | None]:
    """Per labelled corpus of a ``LayerProbe``: its paired interval from step 0 to the end (from ``end_outcomes``)
    and whether it is the training corpus; also ``(corpus, share)`` of documents that changed outcome (the
    training corpus's if it changed, else the first that did) and the first corpus that is the training corpus."""
    details, changes, own = {}, {}, None
    for spec in probe.corpora:
        lines = details.setdefault(spec.name, [])
        if spec.name in outcomes:
            step, before, after = outcomes[spec.name]
            line, changed = verdict.interval_line(spec.name, before, after, probe.folds, step)
            lines.append(line)
            changes[spec.name] = changed
        if probe.data_source:
            lines.append(verdict.domain_line(spec.name, spec.source, spec.label_field, probe.data_source))
            own = own or (spec.name if verdict.same_source(spec.source, probe.data_source) else None)
    seen = own if changes.get(own) else next((name for name, share in changes.items() if share > 0), None)
    return details, (seen, changes[seen]) if seen else None, own


def corpus_lines(probe, seen: tuple[str, float] | None, own: str | None) -> list[str]:
    """The training corpus's label-free signals (step 0 -> end, last layer) and what they cannot say."""
    if not probe.data_source:
        return []
    heldout = probe.heldout
    return [*verdict.signal_lines(heldout.series, list(heldout.sets or {}), heldout.held_out, probe.data_source),
            *verdict.judgement_lines(own, seen, heldout.series)]


def finish(trainer: Trainer, probe) -> None:
    """What a ``LayerProbe`` shows at the end of fit, as asked: the projector, the t-SNE maps, the summary."""
    if probe.projector and trainer.is_global_zero:
        board.add_projectors(trainer, probe.last_layer, {name: p.corpus for name, p in probe.prepared.items()})
    if probe.tsne:
        log_tsne_maps(trainer, probe)
    if probe.summary:
        log_summary(trainer, probe)


@rank_zero_only
def log_summary(trainer: Trainer, probe) -> list[str]:
    """Print the summary and add it to TensorBoard as text (``probe/summary``): each corpus's last-layer kNN
    accuracy at step 0, at the end and at its best step, its paired 95% interval and whether it is the
    training corpus; the training corpus's label-free signals; and which weights were exported. The intervals
    are also logged as scalars at the final step (``tags.change_tags``) through the trainer's loggers."""
    exporter = next((c for c in trainer.callbacks if isinstance(c, ExportEncoder)), None)
    outcomes = end_outcomes(probe)
    details, seen, own = labelled_details(probe, outcomes)
    lines = summary_lines(summarize(probe.history), probe.k, exporter.chosen(trainer)[1] if exporter else None,
                          details, corpus_lines(probe, seen, own))
    print("\n".join(lines), flush=True)
    if outcomes:
        board.log_at_step(trainer, change_metrics(outcomes))
        for logger in trainer.loggers:
            logger.save()
    for writer in board.writers(trainer):
        writer.add_text("probe/summary", "\n".join(f"    {line}" for line in lines), trainer.global_step)
        writer.flush()
    return lines


def tsne_pair_figure(name: str, start: np.ndarray, end: np.ndarray, labels: list[str], end_step: int,
                     seed: int = SEED) -> np.ndarray:
    """An (H, W, 3) uint8 image: t-SNE of the step-0 and final embeddings, side by side, coloured by label."""
    codes, classes, colors = palette(labels)
    figure = Figure(figsize=(9, 4.6), dpi=100)
    size = float(np.clip(8000 / max(len(labels), 1), 0.2, 8))
    for column, (embeddings, title) in enumerate(((start, "step 0"), (end, f"step {end_step}"))):
        axes = figure.add_subplot(1, 2, column + 1)
        xy = layout(embeddings, "tsne", seed)
        for code, (cls, color) in enumerate(zip(classes, colors)):
            mask = codes == code
            axes.scatter(xy[mask, 0], xy[mask, 1], s=size, c=color, linewidths=0, label=cls, rasterized=True)
        axes.set_xticks([]), axes.set_yticks([])
        axes.set_title(f"{name}: {title}", fontsize=10)
    figure.axes[-1].legend(loc="best", fontsize=7, markerscale=2)
    figure.tight_layout()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


@rank_zero_only
def log_tsne_maps(trainer: Trainer, probe) -> None:
    """``probe/<corpus>/tsne``: the step-0 and final maps of every probed corpus, at the final step."""
    for name, start in probe.start_layer.items():
        step, end = probe.last_layer[name]
        corpus = probe.prepared[name].corpus
        labels = [corpus.classes[i] for i in corpus.labels.tolist()]
        image = tsne_pair_figure(name, start.numpy(), end.numpy(), labels, step, probe.seed)
        for writer in board.writers(trainer):
            writer.add_image(f"probe/{name}/tsne", image, step, dataformats="HWC")
            writer.flush()
