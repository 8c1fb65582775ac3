"""The grid's report: a table (markdown and CSV) of kNN accuracy per setting, mean ± std over seeds,
with the paper's numbers beside ours, and figures of accuracy by layer, by step and weight drift;
``signals.csv`` sets each cell's labelled change (with its paired 95% interval) beside the change of
every label-free in-domain signal. Every number is read from the cells' own TensorBoard logs and MTEB
score files."""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from lightning_app.errors import ConfigError
from lightning_app.experiments.grid import UNTRAINED, Cell
from lightning_app.evaluate.scores import read_scores
from lightning_app.experiments.logs import read_scalars
from lightning_app.probes import tags
from lightning_app.probes.heldout import VIEW_TYPES
from lightning_app.probes.tags import Series, layer_series
from lightning_app.probes.verdict import SIGNALS

# González-Márquez et al. (TMLR 2026): MPNet, batch 64, one epoch; in-domain kNN accuracy (mean over
# their labelled corpora) and the mean of MTEB block means.
PAPER = {UNTRAINED: (46.5, 33.2), "dropout": (49.1, 42.8), "crops": (55.8, 48.7)}
LABELS = {UNTRAINED: "untrained", "dropout": "dropout", "crops": "crops", "token_crops": "token crops",
          "crops_last2": "crops, last 2 layers", "crops_last1": "crops, last 1 layer"}
# signals.csv: a cell's labelled figures of the last layer, then each <view>/<signal>'s end minus step 0.
SIGNAL_COLUMNS = [f"{view}/{signal}" for view in VIEW_TYPES for signal in SIGNALS]
SIGNAL_HEADERS = ["setting", "seed", "corpus", "knn_cv_start", "knn_cv_end", "knn_cv_change", "change_low",
                  "change_high", *SIGNAL_COLUMNS]


@dataclass
class Measured:
    """One setting's records over its seeds (one entry per seed)."""

    setting: str
    seeds: list[int] = field(default_factory=list)
    split: list[list[float]] = field(default_factory=list)  # seed -> per-layer kNN, 10% split
    cv: list[list[float]] = field(default_factory=list)  # seed -> per-layer kNN, k-fold
    by_step: list[Series] = field(default_factory=list)  # seed -> last layer (cv, else split) by step
    drift: list[list[float]] = field(default_factory=list)  # seed -> per-layer drift at the end
    wall_s: list[float] = field(default_factory=list)
    mteb: list[dict] = field(default_factory=list)  # scores.json of each model evaluated on MTEB, with its seed
    signals: list[dict] = field(default_factory=list)  # seed -> signal_figures

    def per_layer(self) -> list[list[float]]:
        """Per-layer kNN accuracy of each seed: k-fold where measured, else the 10% split."""
        return [values for values in self.cv if values] or self.split


def _at(series: list[Series], step: int) -> list[float]:
    return [values[step] for values in series]


def _final(series: Series | None) -> float | None:
    return series[max(series)] if series else None


def signal_figures(scalars: dict[str, Series], corpus: str) -> dict[str, str | float | None]:
    """One cell's row of signals.csv past setting and seed: the corpus, the last layer's k-fold kNN accuracy at
    step 0 and at the end, its paired change and 95% interval (``tags.change_tags``; a cell logged before
    them has the change end minus step 0 alone), and each in-domain signal's end minus step 0 at the last
    layer; None where not logged."""
    cv = layer_series(scalars, tags.probe_tag(corpus, tags.KNN_CV))
    start, end = (cv[-1].get(0), _final(cv[-1])) if cv else (None, None)
    change, low, high = (_final(scalars.get(tag)) for tag in tags.change_tags(corpus))
    if change is None and start is not None and end is not None:
        change = end - start
    figures = {"corpus": corpus, "knn_cv_start": start, "knn_cv_end": end, "knn_cv_change": change,
               "change_low": low, "change_high": high}
    for column in SIGNAL_COLUMNS:
        layers = layer_series(scalars, tags.indomain_tag(*column.split("/")))
        figures[column] = _final(layers[-1]) - layers[-1][0] if layers and 0 in layers[-1] else None
    return figures


def collect(cells: list[Cell], corpus: str, untrained_mteb: dict | None) -> dict[str, Measured]:
    """Each setting's records from its finished cells; ``untrained`` from the cells that probed step 0."""
    measured: dict[str, Measured] = {}
    base = measured.setdefault(UNTRAINED, Measured(UNTRAINED))
    if untrained_mteb:
        base.mteb.append(untrained_mteb)
    for cell in cells:
        if not cell.done:
            continue
        scalars = read_scalars(cell.log_dir)
        split = layer_series(scalars, tags.probe_tag(corpus, tags.KNN))
        cv = layer_series(scalars, tags.probe_tag(corpus, tags.KNN_CV))
        if not split:
            raise ConfigError(f"cell {cell.name} is marked done but {cell.log_dir} holds no {tags.probe_tag(corpus, tags.KNN)}; "
                              f"remove {cell.folder} to run it again")
        final = max(split[-1])
        row = measured.setdefault(cell.setting, Measured(cell.setting))
        row.seeds.append(cell.seed)
        row.split.append(_at(split, final))
        row.cv.append(_at(cv, final) if cv else [])
        row.by_step.append(dict(sorted((cv or split)[-1].items())))
        drift = layer_series(scalars, tags.DRIFT)
        row.drift.append([values[max(values)] for values in drift])
        row.signals.append(signal_figures(scalars, corpus))
        row.wall_s.append(json.loads(cell.done_file.read_text())["wall_s"])
        mteb = read_scores(cell.folder / "mteb")
        if mteb:
            row.mteb.append({**mteb, "seed": cell.seed})
        if 0 in split[-1] and cell.seed not in base.seeds:
            base.seeds.append(cell.seed)
            base.split.append(_at(split, 0))
            base.cv.append(_at(cv, 0) if cv else [])
    return {setting: row for setting, row in measured.items() if row.seeds}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(values: list[float]) -> str:
    """``mean ± std`` x 100; a single value alone."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.1f} ± {std:.1f}"


def table_rows(measured: dict[str, Measured]) -> list[dict]:
    """One row per setting: final-layer kNN (split and k-fold) mean ± std, the change against the
    untrained base (per seed, then averaged), MTEB and the paper's numbers."""
    base = measured.get(UNTRAINED)
    base_cv = dict(zip(base.seeds, base.cv)) if base else {}
    rows = []
    for setting, row in measured.items():
        cv_last = [values[-1] for values in row.cv if values]
        gains = [values[-1] - base_cv[seed][-1] for seed, values in zip(row.seeds, row.cv)
                 if values and base_cv.get(seed)]
        mteb = [scores["mean"] for scores in row.mteb if scores.get("mean") is not None]
        paper = PAPER.get(setting, (None, None))
        rows.append({
            "setting": LABELS[setting], "seeds": len(row.seeds),
            "knn_split": _pm([values[-1] for values in row.split]), "knn_cv": _pm(cv_last),
            "cv_gain": "-" if setting == UNTRAINED or not gains else
                       "{:+.1f} ± {:.1f}".format(*mean_std([100 * g for g in gains])),
            "mteb": _pm(mteb),
            "minutes": f"{statistics.fmean(row.wall_s) / 60:.1f}" if row.wall_s else "-",
            "paper_knn": "-" if paper[0] is None else f"{paper[0]:.1f}",
            "paper_mteb": "-" if paper[1] is None else f"{paper[1]:.1f}",
        })
    return rows


HEADERS = {"setting": "setting", "seeds": "seeds", "knn_split": "kNN, 10% split", "knn_cv": "kNN, 10-fold",
           "cv_gain": "10-fold vs untrained", "mteb": "MTEB mean", "minutes": "min/run",
           "paper_knn": "paper kNN", "paper_mteb": "paper MTEB"}


def cell_rows(measured: dict[str, Measured]) -> list[list]:
    """One row per run: the final-layer scores of each setting and seed, unaveraged."""
    rows = []
    for setting, row in measured.items():
        mteb = {scores.get("seed"): scores["mean"] for scores in row.mteb}  # seed None: the base model
        for index, seed in enumerate(row.seeds):
            score = mteb.get(seed, mteb.get(None))
            rows.append([setting, seed, f"{row.split[index][-1]:.4f}",
                         f"{row.cv[index][-1]:.4f}" if row.cv[index] else "",
                         "" if score is None else f"{score:.4f}",
                         row.wall_s[index] if index < len(row.wall_s) else ""])
    return rows


def signal_rows(measured: dict[str, Measured]) -> list[list]:
    """signals.csv below its header: one row per trained run, blank where a figure was not logged."""
    def text(value) -> str:
        return "" if value is None else value if isinstance(value, str) else f"{value:.6g}"

    return [[setting, seed, *(text(figures[key]) for key in SIGNAL_HEADERS[2:])]
            for setting, row in measured.items() for seed, figures in zip(row.seeds, row.signals)]


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows])


def layer_table(measured: dict[str, Measured]) -> tuple[list[str], list[list[str]]]:
    """Per-layer k-fold (else split) kNN accuracy, mean over seeds, one row per setting."""
    rows = []
    layers = 0
    for setting, row in measured.items():
        per_seed = row.per_layer()
        layers = max(layers, len(per_seed[0]))
        rows.append([LABELS[setting]] + [f"{100 * statistics.fmean(v):.1f}" for v in zip(*per_seed)])
    return ["setting", *tags.layer_names(layers)], rows


def mteb_table(measured: dict[str, Measured]) -> tuple[list[str], list[list[str]]]:
    """MTEB block means and their mean x 100 per setting (mean ± std over the evaluated seeds)."""
    blocks = list(dict.fromkeys(block for row in measured.values() for scores in row.mteb for block in scores["blocks"]))
    rows = [[LABELS[setting], str(len(row.mteb))]
            + [_pm([scores["blocks"][block] for scores in row.mteb if block in scores["blocks"]]) for block in blocks]
            + [_pm([scores["mean"] for scores in row.mteb])]
            for setting, row in measured.items() if row.mteb]
    return ["setting", "models", *blocks, "mean of block means"], rows


def _figure(path: Path, title: str, xlabel: str, ylabel: str, draw) -> None:
    figure = Figure(figsize=(6, 3.8), dpi=110)
    axes = figure.add_subplot()
    draw(axes)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def _band(axes, xs, per_seed: list[list[float]], label: str, style: str = "o-", color=None) -> None:
    means = [statistics.fmean(v) for v in zip(*per_seed)]
    stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in zip(*per_seed)]
    axes.errorbar(xs, means, yerr=stds, fmt=style, capsize=3, label=f"{label} (n={len(per_seed)})", color=color)


def figures(measured: dict[str, Measured], folder: Path, title: str) -> list[str]:
    """knn_by_layer.png, knn_by_step.png and drift_by_layer.png; returns the file names."""
    metric = "10-fold kNN accuracy" if any(v for row in measured.values() for v in row.cv) else "kNN accuracy"

    def by_layer(axes) -> None:
        for setting, style, color in ((UNTRAINED, "s--", "0.5"), ("dropout", "o-", "C1"), ("crops", "o-", "C0"),
                                      ("token_crops", "^-", "C2")):
            if setting in measured:
                values = measured[setting].per_layer()
                _band(axes, range(len(values[0])), values, LABELS[setting], style, color)
        count = len(next(iter(measured.values())).per_layer()[0])
        axes.set_xticks(range(count), tags.layer_names(count, prefix=""))

    base = measured.get(UNTRAINED)
    start = {seed: values[-1] for seed, values in zip(base.seeds, base.per_layer())} if base else {}

    def by_step(axes) -> None:
        for index, (setting, row) in enumerate(measured.items()):
            if setting == UNTRAINED:
                continue
            # Step 0 is the same seed's untrained model, the same in every cell of the seed.
            series = [{0: start[seed], **values} if seed in start else values
                      for seed, values in zip(row.seeds, row.by_step)]
            steps = sorted(set.intersection(*(set(values) for values in series)))
            _band(axes, steps, [[values[step] for step in steps] for values in series], LABELS[setting],
                  "o-", f"C{index}")

    def drift(axes) -> None:
        for index, (setting, row) in enumerate(measured.items()):
            if setting != UNTRAINED and row.drift and row.drift[0]:
                _band(axes, range(len(row.drift[0])), row.drift, LABELS[setting], "o-", f"C{index}")
        count = max(len(row.drift[0]) for row in measured.values() if row.drift and row.drift[0])
        axes.set_xticks(range(count), tags.layer_names(count, prefix=""))

    _figure(folder / "knn_by_layer.png", f"{title}\naccuracy by layer, before and after", "layer", metric, by_layer)
    _figure(folder / "knn_by_step.png", f"{title}\nlast layer during training", "step", metric, by_step)
    _figure(folder / "drift_by_layer.png", f"{title}\nweight drift at the end", "layer",
            "||θ - θ₀|| / ||θ₀||", drift)
    return ["knn_by_layer.png", "knn_by_step.png", "drift_by_layer.png"]


def write_report(measured: dict[str, Measured], folder: Path, title: str, header: list[str]) -> Path:
    """results.csv, cells.csv (one row per run), layers.csv, signals.csv (one row per trained run), the
    figures and report.md in ``folder``; returns report.md."""
    rows = table_rows(measured)
    with open(folder / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(HEADERS))
        writer.writeheader()
        writer.writerows(rows)
    with open(folder / "cells.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["setting", "seed", "knn_split", "knn_cv", "mteb_mean", "wall_s"]]
                                     + cell_rows(measured))
    layer_headers, layer_rows = layer_table(measured)
    with open(folder / "layers.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([layer_headers] + layer_rows)
    with open(folder / "signals.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([SIGNAL_HEADERS] + signal_rows(measured))
    names = figures(measured, folder, title)
    mteb_tasks = sorted({task for row in measured.values() for scores in row.mteb for task in scores["tasks"]})
    lines = [f"# {title}", "", *header, "",
             markdown_table(list(HEADERS.values()), [[row[key] for key in HEADERS] for row in rows]), "",
             "kNN accuracy x 100 of the last layer (k=10, Euclidean): one seeded stratified 10% test split "
             "(the paper's protocol) and 10-fold cross-validation (every document predicted once); "
             "mean ± std over training seeds (the probe sample and splits are fixed). 'vs untrained' is "
             "the per-seed difference from the same seed's step-0 model. "
             + (f"MTEB mean: mean of block means x 100 over {', '.join(mteb_tasks)}. " if mteb_tasks else "")
             + "The paper's columns are its own figures (MPNet, its corpora, batch 64, one epoch), "
             "printed for direction, not for equality.", "",
             "## Accuracy by layer", "", markdown_table(layer_headers, layer_rows), "",
             *[f"![{name}]({name})" for name in names], ""]
    if mteb_tasks:
        lines += ["## MTEB", "", f"Tasks: {', '.join(mteb_tasks)}; main score x 100.", "",
                  markdown_table(*mteb_table(measured)), ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
