"""Callbacks that watch a run in TensorBoard: per-layer kNN probes (LayerProbe) and weight drift
(LayerDrift). They read the LightningModule's ``encoder`` and ``tokenizer``; the module knows
nothing of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_app.data.datamodule import PairCollator, document_rng
from lightning_app.data.views import SentenceCrops, View
from lightning_app.errors import ConfigError
from lightning_app.probes.corpus import LabelledTexts, ProbeCorpus, load_probe_corpus
from lightning_app.probes.embed import embed_layers, tokenize
from lightning_app.probes.geometry import alignment, uniformity
from lightning_app.probes.knn import (METRICS, layer_knn_accuracy, layer_knn_cv_accuracy, linear_probe_accuracy,
                                      stratified_split)


def layer_tag(prefix: str, layer: int, num_layers: int) -> str:
    """``<prefix>/layer_00`` .. ``layer_NN``, zero-padded to at least two digits."""
    return f"{prefix}/layer_{layer:0{max(2, len(str(num_layers)))}d}"


@dataclass
class _Prepared:
    """A probe corpus ready to embed: token ids of the documents and of their crop pairs."""

    corpus: LabelledTexts
    token_ids: list[list[int]]
    crop_pairs: dict[str, torch.Tensor] | None


class LayerProbe(Callback):
    """kNN accuracy of every layer on labelled probe corpora, at step 0 and at every validation.

    The paper's protocol (González-Márquez et al. 2025): mean-pooled hidden states of each layer
    (all from one forward pass), k=10 nearest neighbours by Euclidean distance, a seeded stratified
    10% test split scored against the other 90%, computed in torch on the training device.
    Logs ``probe/<corpus>/knn_acc/layer_NN`` per layer and ``probe/<corpus>/knn_acc`` (last layer,
    for ``ModelCheckpoint(monitor=...)``), a per-layer figure against step 0, alignment and
    uniformity of the last layer on crop pairs, and at the end of fit the last layer's embeddings
    in TensorBoard's projector. Under DDP each rank embeds a shard; the embeddings are gathered
    and every rank scores the same tensors, so all ranks log the same values.

    Args:
        corpora: labelled corpora to probe (default: BBC News, 5 topics).
        k: neighbours of the kNN classifier.
        metric: ``euclidean`` or ``cosine``.
        test_fraction: share of each class in the test split.
        seed: seed of the document sample, the split and the crop pairs.
        max_length: tokens per probe document, special tokens included (longer ones are truncated).
        batch_size: documents per forward pass.
        linear_probe: also fit a logistic regression per layer (``probe/<corpus>/linear_acc``).
        geometry_pairs: crop pairs (from the first documents that give one) for alignment and
            uniformity of the last layer; 0 turns them off.
        view: how a probe document becomes a crop pair for alignment and uniformity (None: the
            paper's ``SentenceCrops()``).
        projector: write the last layer's embeddings and labels to TensorBoard's projector at the
            end of fit.
        cv_folds: also score every layer by stratified ``cv_folds``-fold cross-validated kNN
            accuracy (``probe/<corpus>/knn_cv_acc``), each document predicted once from the other
            folds: far less noisy than one 10% split on a corpus of a few thousand; 0 turns it off.
        at_start: probe at step 0 (the untrained baseline of the figure); off saves one probe
            when another run already measured the same starting weights.
        tsne: at the end of fit, log t-SNE maps of the last layer's probe embeddings at step 0
            and at the end side by side (``probe/<corpus>/tsne`` in TensorBoard's Images tab).
        summary: at the end of fit, print and log (``probe/summary`` text) each corpus's last-layer
            kNN accuracy at step 0, at the end and at its best step, and which weights were exported.
    """

    def __init__(self, corpora: list[ProbeCorpus] | None = None, k: int = 10, metric: str = "euclidean",
                 test_fraction: float = 0.1, seed: int = 42, max_length: int = 256, batch_size: int = 32,
                 linear_probe: bool = False, geometry_pairs: int = 128,
                 view: View | None = None, projector: bool = True, cv_folds: int = 0,
                 at_start: bool = True, tsne: bool = False, summary: bool = True) -> None:
        self.corpora = list(corpora) if corpora is not None else [ProbeCorpus()]
        if not self.corpora:
            raise ConfigError("LayerProbe.corpora: expected at least one probe corpus")
        names = [spec.name for spec in self.corpora]
        if len(set(names)) != len(names):
            raise ConfigError(f"LayerProbe.corpora: names must differ (they become tags), got {names}")
        if metric not in METRICS:
            raise ConfigError(f"LayerProbe.metric: expected one of {METRICS}, got {metric!r}")
        if k < 1 or max_length < 3 or batch_size < 1 or geometry_pairs < 0:
            raise ConfigError(f"LayerProbe: expected k >= 1, max_length >= 3, batch_size >= 1 and "
                              f"geometry_pairs >= 0, got {k}, {max_length}, {batch_size}, {geometry_pairs}")
        if cv_folds == 1 or cv_folds < 0:
            raise ConfigError(f"LayerProbe.cv_folds: expected 0 (off) or at least 2 folds, got {cv_folds}")
        if not 0 < test_fraction < 1:
            raise ConfigError(f"LayerProbe.test_fraction: expected 0 < test_fraction < 1, got {test_fraction}")
        self.k, self.metric, self.test_fraction, self.seed = k, metric, test_fraction, seed
        self.max_length, self.batch_size = max_length, batch_size
        self.linear_probe, self.geometry_pairs, self.projector = linear_probe, geometry_pairs, projector
        self.cv_folds, self.at_start = cv_folds, at_start
        self.tsne, self.summary = tsne, summary
        self.view = view if view is not None else SentenceCrops()
        self.prepared: dict[str, _Prepared] = {}
        self.baseline: dict[str, torch.Tensor] = {}  # corpus -> per-layer kNN accuracy at the start of fit
        self.last_layer: dict[str, tuple[int, torch.Tensor]] = {}  # corpus -> (step, (N, H) on the CPU)
        self.start_layer: dict[str, torch.Tensor] = {}  # corpus -> last layer's (N, H) at step 0, with tsne
        self.history: dict[str, list[tuple[int, float]]] = {}  # corpus -> (step, last-layer kNN accuracy)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Read, sample, check and tokenize every probe corpus before training starts."""
        if self.prepared:
            return
        tokenizer = pl_module.tokenizer
        for spec in self.corpora:
            corpus = load_probe_corpus(spec, self.k, self.test_fraction, self.seed)
            self.prepared[spec.name] = _Prepared(corpus, tokenize(tokenizer, corpus.texts, self.max_length),
                                                 self._crop_pairs(corpus.texts, tokenizer))

    def _crop_pairs(self, texts: list[str], tokenizer) -> dict[str, torch.Tensor] | None:
        """Up to ``geometry_pairs`` crop pairs as one padded batch (first views, then second views)."""
        if not self.geometry_pairs:
            return None
        ids = lambda text: tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
        rows = []
        for text in texts:
            pair = self.view.pair(text, ids, document_rng(self.seed, 0, text))
            if pair and pair[0] and pair[1]:
                rows.append({"a": pair[0], "b": pair[1], "skipped": 0})
            if len(rows) == self.geometry_pairs:
                break
        return PairCollator(tokenizer, self.max_length)(rows) if len(rows) >= 2 else None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_start:
            self._log(trainer, self._probe(trainer, pl_module, baseline=True))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = self._probe(trainer, pl_module, baseline=False)
        pl_module.log_dict(metrics, logger=False, sync_dist=False)  # callback_metrics, for ModelCheckpoint
        self._log(trainer, metrics)

    @staticmethod
    def _log(trainer: Trainer, metrics: dict[str, float]) -> None:
        """Log at ``global_step`` (the number of optimizer steps behind these weights), so the step-0
        baseline, the probes and the figures share one x axis."""
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not (self.projector or self.tsne or self.summary):
            return
        if any(step != trainer.global_step for step, _ in self.last_layer.values()):
            self._probe(trainer, pl_module, baseline=False)  # every rank: the embedding is gathered
        if self.projector:
            self._write_projector(trainer)
        if self.tsne or self.summary:
            from lightning_app.probes.summary import log_summary, log_tsne_maps
            if self.tsne:
                log_tsne_maps(trainer, self)
            if self.summary:
                log_summary(trainer, self)

    def _probe(self, trainer: Trainer, pl_module: LightningModule, baseline: bool) -> dict[str, float]:
        """Embed and score every corpus in eval mode without gradients; restore the training mode."""
        was_training = pl_module.training
        pl_module.eval()
        metrics: dict[str, float] = {}
        try:
            with torch.no_grad():
                for name, prepared in self.prepared.items():
                    metrics.update(self._probe_corpus(trainer, pl_module, name, prepared, baseline))
        finally:
            pl_module.train(was_training)
        return metrics

    def _probe_corpus(self, trainer, pl_module, name: str, prepared: _Prepared, baseline: bool) -> dict[str, float]:
        pad_id = pl_module.tokenizer.pad_token_id
        layers = self._embed_gathered(trainer, pl_module, prepared.token_ids, pad_id)
        labels = prepared.corpus.labels.to(layers.device)
        accuracies = layer_knn_accuracy(layers, labels, self.k, self.test_fraction, self.seed, self.metric)
        num_layers = len(accuracies) - 1
        metrics = {layer_tag(f"probe/{name}/knn_acc", i, num_layers): acc.item() for i, acc in enumerate(accuracies)}
        metrics[f"probe/{name}/knn_acc"] = accuracies[-1].item()
        if self.cv_folds:
            cv = layer_knn_cv_accuracy(layers, labels, self.k, self.cv_folds, self.seed, self.metric)
            metrics.update({layer_tag(f"probe/{name}/knn_cv_acc", i, num_layers): acc.item() for i, acc in enumerate(cv)})
            metrics[f"probe/{name}/knn_cv_acc"] = cv[-1].item()
        if self.linear_probe:
            train_idx, test_idx = stratified_split(labels, self.test_fraction, self.seed)
            linear = [linear_probe_accuracy(layer[train_idx], labels[train_idx], layer[test_idx], labels[test_idx])
                      for layer in layers]
            metrics.update({layer_tag(f"probe/{name}/linear_acc", i, num_layers): acc for i, acc in enumerate(linear)})
            metrics[f"probe/{name}/linear_acc"] = linear[-1]
        if prepared.crop_pairs is not None:
            metrics.update(self._geometry(pl_module, name, prepared.crop_pairs))
        if baseline:
            self.baseline[name] = accuracies
            if self.tsne:
                self.start_layer[name] = layers[-1].float().cpu()
        self.last_layer[name] = (trainer.global_step, layers[-1].float().cpu())
        self.history.setdefault(name, []).append((trainer.global_step, accuracies[-1].item()))
        self._log_figure(trainer, name, accuracies)
        return metrics

    def _embed_gathered(self, trainer, pl_module, token_ids: list[list[int]], pad_id: int) -> torch.Tensor:
        """All layers' embeddings of every document: rank r embeds documents r, r + W, ... and the
        shards are gathered (padded to equal size) and put back in document order on every rank."""
        world, rank = trainer.world_size, trainer.global_rank
        local = embed_layers(pl_module.encoder, token_ids[rank::world], pad_id, self.batch_size)
        if world == 1:
            return local
        per_rank = -(-len(token_ids) // world)
        padded = local.new_zeros(local.shape[0], per_rank, local.shape[2])
        padded[:, :local.shape[1]] = local
        gathered = pl_module.all_gather(padded)  # (W, L, per_rank, H); row j of rank r is document j * W + r
        return gathered.permute(1, 2, 0, 3).reshape(local.shape[0], per_rank * world, -1)[:, :len(token_ids)]

    def _geometry(self, pl_module, name: str, pairs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Alignment and uniformity (Wang & Isola 2020) of the last layer on crop pairs; uniformity
        is the mean over the two views, as in their reference code. Every rank computes the same."""
        device = next(pl_module.encoder.parameters()).device
        embeddings = pl_module.encoder(pairs["input_ids"].to(device), pairs["attention_mask"].to(device)).float()
        first, second = embeddings.chunk(2)
        return {f"probe/{name}/alignment": alignment(first, second),
                f"probe/{name}/uniformity": (uniformity(first) + uniformity(second)) / 2}

    @rank_zero_only
    def _log_figure(self, trainer: Trainer, name: str, accuracies: torch.Tensor) -> None:
        """Accuracy against layer, now and at step 0, as a TensorBoard image."""
        writers = [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not writers:
            return
        image = accuracy_figure(name, accuracies, self.baseline.get(name), trainer.global_step, self.k)
        for writer in writers:
            writer.add_image(f"probe/{name}/knn_acc_by_layer", image, trainer.global_step, dataformats="HWC")

    @rank_zero_only
    def _write_projector(self, trainer: Trainer) -> None:
        """The last layer's probe embeddings, with label and opening words, in the projector."""
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            for name, (step, embeddings) in self.last_layer.items():
                corpus = self.prepared[name].corpus
                rows = [[" ".join(corpus.classes[label].split()), " ".join(text[:80].split())]
                        for label, text in zip(corpus.labels.tolist(), corpus.texts)]
                logger.experiment.add_embedding(embeddings, metadata=rows, metadata_header=["label", "text"],
                                                tag=f"probe/{name}", global_step=step)
            logger.experiment.flush()


def accuracy_figure(name: str, accuracies: torch.Tensor, baseline: torch.Tensor | None, step: int,
                    k: int) -> np.ndarray:
    """An (H, W, 3) uint8 image: kNN accuracy against layer at ``step``, and at step 0 when given."""
    figure = Figure(figsize=(5, 3.2), dpi=100)
    axes = figure.add_subplot()
    layers = range(len(accuracies))
    if baseline is not None:
        axes.plot(layers, baseline.tolist(), "o--", color="0.55", label="step 0")
    axes.plot(layers, accuracies.tolist(), "o-", color="C0", label=f"step {step}")
    axes.set_xticks(list(layers), ["emb"] + [str(i) for i in layers][1:])
    axes.set_xlabel("layer")
    axes.set_ylabel(f"{k}-NN accuracy")
    axes.set_title(name)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class LayerDrift(Callback):
    """How far fine-tuning has moved each layer's weights: ``||theta - theta_0|| / ||theta_0||`` over
    the layer's parameters, ``theta_0`` taken at the start of fit. Logged as ``drift/layer_NN``
    (layer 00: the embeddings); frozen layers stay exactly 0. Weights are the same on every rank,
    so rank 0 logs without any communication.

    Args:
        every_n_steps: log every this many optimizer steps; None follows ``trainer.log_every_n_steps``.
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ConfigError(f"LayerDrift.every_n_steps: expected >= 1 or null, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.initial: list[list[torch.Tensor]] = []
        self.logged_step = -1

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.initial = [[p.detach().clone() for p in group] for group in pl_module.encoder.layer_parameters()]
        self._log(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        every = self.every_n_steps or trainer.log_every_n_steps
        if trainer.global_step % every == 0 and trainer.global_step != self.logged_step:
            self._log(trainer, pl_module)

    @torch.no_grad()
    def drift(self, pl_module: LightningModule) -> list[float]:
        """Relative change of every layer since the start of fit, embeddings first."""
        values = []
        for group, initial in zip(pl_module.encoder.layer_parameters(), self.initial):
            moved = sum((p.detach().float() - p0.float()).pow(2).sum() for p, p0 in zip(group, initial))
            size = sum(p0.float().pow(2).sum() for p0 in initial)
            values.append((moved.sqrt() / size.sqrt()).item())
        return values

    def _log(self, trainer: Trainer, pl_module: LightningModule) -> None:
        values = self.drift(pl_module)
        metrics = {layer_tag("drift", i, len(values) - 1): value for i, value in enumerate(values)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.logged_step = trainer.global_step
