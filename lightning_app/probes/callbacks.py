"""LayerProbe: per-layer kNN probes of the encoder being trained, logged to TensorBoard. It reads
the LightningModule's ``encoder`` and ``tokenizer``; the module knows nothing of it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightning import Callback, LightningModule, Trainer

from lightning_app.data.collate import PairCollator
from lightning_app.data.pairs import document_pairs, token_ids
from lightning_app.data.views import SentenceCrops, View
from lightning_app.errors import ConfigError
from lightning_app.probes import board, summary, tags
from lightning_app.probes.corpus import LabelledTexts, ProbeCorpus, load_probe_corpus
from lightning_app.probes.embed import embed_layers
from lightning_app.probes.geometry import alignment, uniformity
from lightning_app.probes.knn import METRICS
from lightning_app.probes.score import layer_scores


@dataclass
class _Prepared:
    """A probe corpus ready to embed: token ids of the documents and a batch of their crop pairs."""

    corpus: LabelledTexts
    token_ids: list[list[int]]
    crop_pairs: dict[str, torch.Tensor] | None


def check_options(corpora: list[ProbeCorpus], k: int, metric: str, test_fraction: float, max_length: int,
                  batch_size: int, geometry_pairs: int, cv_folds: int) -> None:
    """LayerProbe's options, each wrong one as one line naming it."""
    names = [spec.name for spec in corpora]
    if len(set(names)) != len(names):
        raise ConfigError(f"probe.corpora: names must differ (they become tags), got {names}")
    if metric not in METRICS:
        raise ConfigError(f"probe.metric: expected one of {METRICS}, got {metric!r}")
    if k < 1 or max_length < 3 or batch_size < 1 or geometry_pairs < 0:
        raise ConfigError(f"probe: expected k >= 1, max_length >= 3, batch_size >= 1 and "
                          f"geometry_pairs >= 0, got {k}, {max_length}, {batch_size}, {geometry_pairs}")
    if cv_folds == 1 or cv_folds < 0:
        raise ConfigError(f"probe.cv_folds: expected 0 (off) or at least 2 folds, got {cv_folds}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"probe.test_fraction: expected 0 < test_fraction < 1, got {test_fraction}")


def log_at_step(trainer: Trainer, metrics: dict[str, float]) -> None:
    """Log at ``global_step`` (the optimizer steps behind these weights): one x axis for all probes."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


def gathered_layers(trainer: Trainer, pl_module: LightningModule, ids: list[list[int]], batch_size: int) -> torch.Tensor:
    """Every layer's embeddings of all documents on every rank: rank r embeds documents r, r + W, ...
    and the shards are gathered (padded to equal size) and put back in document order."""
    world, rank = trainer.world_size, trainer.global_rank
    local = embed_layers(pl_module.encoder, ids[rank::world], pl_module.tokenizer.pad_token_id, batch_size)
    if world == 1:
        return local
    per_rank = -(-len(ids) // world)
    padded = local.new_zeros(local.shape[0], per_rank, local.shape[2])
    padded[:, :local.shape[1]] = local
    gathered = pl_module.all_gather(padded)  # (W, L, per_rank, H); row j of rank r is document j * W + r
    return gathered.permute(1, 2, 0, 3).reshape(local.shape[0], per_rank * world, -1)[:, :len(ids)]


class LayerProbe(Callback):
    """kNN accuracy of every layer on labelled probe corpora, at step 0 and at every validation.

    The paper's protocol (González-Márquez et al. 2025): mean-pooled hidden states of each layer
    (all from one forward pass), k=10 nearest neighbours by Euclidean distance, a seeded stratified
    10% test split scored against the other 90% (``probes.score.layer_scores``). Logs
    ``probe/<corpus>/knn_acc/layer_NN`` per layer and ``probe/<corpus>/knn_acc`` (last layer, for
    ``ModelCheckpoint(monitor=...)``), a per-layer figure against step 0, alignment and uniformity
    of the last layer on crop pairs, and at the end of fit the last layer's embeddings in
    TensorBoard's projector. Under DDP the ranks embed shards, gather them and log the same values.

    Args:
        corpora: labelled corpora to probe (default: BBC News, 5 topics); an empty list probes nothing.
        k: neighbours of the kNN classifier.
        metric: ``euclidean`` or ``cosine``.
        test_fraction: share of each class in the test split.
        seed: seed of the document sample, the split and the crop pairs.
        max_length: tokens per probe document, special tokens included (longer ones are truncated).
        batch_size: documents per forward pass.
        linear_probe: also fit a logistic regression per layer (``probe/<corpus>/linear_acc``).
        geometry_pairs: crop pairs (from the first documents that give one) for alignment and
            uniformity of the last layer; 0 turns them off.
        view: how a probe document becomes a crop pair for the geometry (None: ``SentenceCrops()``).
        projector: write the last layer's embeddings and labels to TensorBoard's projector at the end.
        cv_folds: also score every layer by stratified ``cv_folds``-fold cross-validated kNN accuracy
            (``probe/<corpus>/knn_cv_acc``), far less noisy than one 10% split; 0 turns it off.
        at_start: probe at step 0 (the untrained baseline of the figure).
        tsne: at the end of fit, t-SNE maps of the last layer at step 0 and at the end, side by side
            (``probe/<corpus>/tsne`` in TensorBoard's Images tab).
        summary: at the end of fit, print and log (``probe/summary`` text) each corpus's last-layer
            kNN accuracy at step 0, at the end and at its best step, and which weights were exported.
    """

    def __init__(self, corpora: list[ProbeCorpus] | None = None, k: int = 10, metric: str = "euclidean",
                 test_fraction: float = 0.1, seed: int = 42, max_length: int = 256, batch_size: int = 32,
                 linear_probe: bool = False, geometry_pairs: int = 128, view: View | None = None,
                 projector: bool = True, cv_folds: int = 0, at_start: bool = True, tsne: bool = False,
                 summary: bool = True) -> None:
        self.corpora = list(corpora) if corpora is not None else [ProbeCorpus()]
        check_options(self.corpora, k, metric, test_fraction, max_length, batch_size, geometry_pairs, cv_folds)
        self.scoring = {"k": k, "test_fraction": test_fraction, "seed": seed, "metric": metric,
                        "cv_folds": cv_folds, "linear": linear_probe}
        self.k, self.seed, self.max_length, self.batch_size = k, seed, max_length, batch_size
        self.geometry_pairs, self.projector, self.at_start = geometry_pairs, projector, at_start
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
            corpus = load_probe_corpus(spec, self.k, self.scoring["test_fraction"], self.seed)
            ids = tokenizer(corpus.texts, truncation=True, max_length=self.max_length, verbose=False)["input_ids"]
            pairs = document_pairs(corpus.texts, self.view, lambda text: token_ids(tokenizer, text), self.seed,
                                   limit=self.geometry_pairs) if self.geometry_pairs else []
            batch = PairCollator(tokenizer, self.max_length)(pairs) if len(pairs) >= 2 else None
            self.prepared[spec.name] = _Prepared(corpus, ids, batch)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_start:
            log_at_step(trainer, self._probe(trainer, pl_module, baseline=True))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = self._probe(trainer, pl_module, baseline=False)
        pl_module.log_dict(metrics, logger=False, sync_dist=False)  # callback_metrics, for ModelCheckpoint
        log_at_step(trainer, metrics)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Probe the final weights if not done yet; then the projector, the t-SNE maps and the summary."""
        if not (self.projector or self.tsne or self.summary):
            return
        if any(step != trainer.global_step for step, _ in self.last_layer.values()):
            self._probe(trainer, pl_module, baseline=False)  # every rank: the embedding is gathered
        if self.projector and trainer.is_global_zero:
            board.add_projectors(trainer, self.last_layer, {name: p.corpus for name, p in self.prepared.items()})
        if self.tsne:
            summary.log_tsne_maps(trainer, self)
        if self.summary:
            summary.log_summary(trainer, self)

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
        layers = gathered_layers(trainer, pl_module, prepared.token_ids, self.batch_size)
        scores = layer_scores(layers, prepared.corpus.labels.to(layers.device), **self.scoring)
        metrics = {}
        for score, values in scores.items():
            metrics.update(tags.layer_tags(tags.probe_tag(name, score), values))
            metrics[tags.probe_tag(name, score)] = values[-1].item()
        if prepared.crop_pairs is not None:
            embeddings = pl_module.encoder(*(prepared.crop_pairs[key].to(layers.device)
                                             for key in ("input_ids", "attention_mask"))).float()
            first, second = embeddings.chunk(2)  # Wang & Isola 2020; uniformity: mean over the two views
            metrics[tags.probe_tag(name, "alignment")] = alignment(first, second)
            metrics[tags.probe_tag(name, "uniformity")] = (uniformity(first) + uniformity(second)) / 2
        if baseline:
            self.baseline[name] = scores[tags.KNN]
            if self.tsne:
                self.start_layer[name] = layers[-1].float().cpu()
        self.last_layer[name] = (trainer.global_step, layers[-1].float().cpu())
        self.history.setdefault(name, []).append((trainer.global_step, scores[tags.KNN][-1].item()))
        if trainer.is_global_zero:
            board.add_accuracy_figure(trainer, name, scores[tags.KNN], self.baseline.get(name), self.k)
        return metrics
