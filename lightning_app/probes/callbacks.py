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
from lightning_app.probes.embed import gathered_layers
from lightning_app.probes.geometry import alignment, uniformity
from lightning_app.probes.heldout import INDOMAIN_DOCUMENTS, HeldOutProbe
from lightning_app.probes.interval import knn_cv_correct
from lightning_app.probes.knn import FOLDS, K, METRICS, SEED, TEST_FRACTION
from lightning_app.probes.score import layer_scores

# Tokens per text when embedding during training (probes, MTEB, the grid's models' MTEB): shorter than
# the paper's evaluation length (evaluate.mteb_encoder.DEFAULT_MAX_LENGTH), as these evaluations repeat.
MAX_LENGTH = 256


@dataclass
class _Prepared:
    """A probe corpus ready to embed: token ids of the documents and a batch of their crop pairs."""

    corpus: LabelledTexts
    token_ids: list[list[int]]
    crop_pairs: dict[str, torch.Tensor] | None


def check_options(corpora: list[ProbeCorpus], k: int, metric: str, test_fraction: float, max_length: int,
                  batch_size: int, geometry_pairs: int, cv_folds: int, indomain_documents: int) -> None:
    """LayerProbe's options, each wrong one as one line naming it."""
    names = [spec.name for spec in corpora]
    if len(set(names)) != len(names):
        raise ConfigError(f"probe.corpora: names must differ (they become tags), got {names}")
    if tags.INDOMAIN in names:
        raise ConfigError(f"probe.corpora: the name '{tags.INDOMAIN}' is the in-domain signals' (probe/indomain/...); "
                          "expected another name")
    if metric not in METRICS:
        raise ConfigError(f"probe.metric: expected one of {METRICS}, got {metric!r}")
    if k < 1 or max_length < 3 or batch_size < 1 or geometry_pairs < 0:
        raise ConfigError(f"probe: expected k >= 1, max_length >= 3, batch_size >= 1 and "
                          f"geometry_pairs >= 0, got {k}, {max_length}, {batch_size}, {geometry_pairs}")
    if cv_folds == 1 or cv_folds < 0:
        raise ConfigError(f"probe.cv_folds: expected 0 (off) or at least 2 folds, got {cv_folds}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"probe.test_fraction: expected 0 < test_fraction < 1, got {test_fraction}")
    if indomain_documents == 1 or indomain_documents < 0:
        raise ConfigError(f"probe.indomain_documents: expected 0 (off) or at least 2 held-out documents "
                          f"(retrieval needs 2), got {indomain_documents}")


def prepare_corpus(spec: ProbeCorpus, tokenizer, k: int, test_fraction: float, seed: int, max_length: int,
                   view: View, geometry_pairs: int) -> _Prepared:
    """Read, sample, check and tokenize one probe corpus, with a batch of its crop pairs for the geometry."""
    corpus = load_probe_corpus(spec, k, test_fraction, seed)
    ids = tokenizer(corpus.texts, truncation=True, max_length=max_length, verbose=False)["input_ids"]
    pairs = document_pairs(corpus.texts, view, lambda text: token_ids(tokenizer, text), seed,
                           limit=geometry_pairs) if geometry_pairs else []
    batch = PairCollator(tokenizer, max_length)(pairs) if len(pairs) >= 2 else None
    return _Prepared(corpus, ids, batch)


def score_metrics(name: str, scores: dict[str, torch.Tensor]) -> dict[str, float]:
    """``probe/<name>/<score>/layer_NN`` of every layer and ``probe/<name>/<score>`` of the last one."""
    metrics = {}
    for score, values in scores.items():
        metrics.update(tags.layer_tags(tags.probe_tag(name, score), values))
        metrics[tags.probe_tag(name, score)] = values[-1].item()
    return metrics


def crop_geometry(pl_module: LightningModule, name: str, batch: dict, device: torch.device) -> dict[str, float]:
    """Alignment and uniformity (Wang & Isola 2020) of the last layer on a batch of crop pairs;
    uniformity is the mean over the two views."""
    embeddings = pl_module.encoder(*(batch[key].to(device) for key in ("input_ids", "attention_mask"))).float()
    first, second = embeddings.chunk(2)
    return {tags.probe_tag(name, "alignment"): alignment(first, second),
            tags.probe_tag(name, "uniformity"): (uniformity(first) + uniformity(second)) / 2}


class LayerProbe(Callback):
    """kNN accuracy of every layer on labelled probe corpora, and label-free signals on held-out
    documents of the training corpus, at step 0 and at every validation.

    The paper's protocol (González-Márquez et al. 2025): mean-pooled hidden states of each layer (one
    forward pass), k=10 nearest neighbours by Euclidean distance, a seeded stratified 10% test split
    scored against the other 90% (``score.layer_scores``). Logs ``probe/<corpus>/knn_acc/layer_NN``,
    ``probe/<corpus>/knn_acc`` (last layer, for ``ModelCheckpoint``), a figure against step 0, the last
    layer's alignment and uniformity on crop pairs, ``probe/indomain/<view>/<signal>/layer_NN``
    (``heldout.HeldOutProbe``), and at the end the projector. Under DDP every rank logs the same values.

    Args:
        corpora: labelled corpora to probe (default: BBC News, 5 topics); an empty list probes nothing.
        k: neighbours of the kNN classifier (and of the in-domain lexical overlap).
        metric: ``euclidean`` or ``cosine``.
        test_fraction: share of each class in the test split.
        seed: seed of the document sample, the split, the crop pairs and the in-domain dropout masks.
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
        summary: at the end of fit, print and log the verdict (``probe/summary`` text: ``summary.log_summary``).
        indomain_documents: held-out documents of the training corpus for the label-free in-domain
            signals (the first ones of the validation slice, ``data.val_fraction``); 0 turns them off.
    """

    def __init__(self, corpora: list[ProbeCorpus] | None = None, k: int = K, metric: str = "euclidean",
                 test_fraction: float = TEST_FRACTION, seed: int = SEED, max_length: int = MAX_LENGTH, batch_size: int = 32,
                 linear_probe: bool = False, geometry_pairs: int = 128, view: View | None = None,
                 projector: bool = True, cv_folds: int = 0, at_start: bool = True, tsne: bool = False,
                 summary: bool = True, indomain_documents: int = INDOMAIN_DOCUMENTS) -> None:
        self.corpora = list(corpora) if corpora is not None else [ProbeCorpus()]
        check_options(self.corpora, k, metric, test_fraction, max_length, batch_size, geometry_pairs, cv_folds,
                      indomain_documents)
        self.scoring = {"k": k, "test_fraction": test_fraction, "seed": seed, "metric": metric,
                        "cv_folds": cv_folds, "linear": linear_probe}
        self.k, self.seed, self.max_length, self.batch_size = k, seed, max_length, batch_size
        self.geometry_pairs, self.projector, self.at_start = geometry_pairs, projector, at_start
        self.tsne, self.summary, self.folds = tsne, summary, cv_folds or FOLDS
        self.view = view if view is not None else SentenceCrops()
        self.heldout = HeldOutProbe(indomain_documents, k, seed, batch_size)
        self.data_source: str | None = None  # data.source, the training corpus, once set up
        self.prepared: dict[str, _Prepared] = {}
        self.baseline: dict[str, torch.Tensor] = {}  # corpus -> per-layer kNN accuracy at the start of fit
        self.start_correct: dict[str, torch.Tensor] = {}  # corpus -> last layer's per-document kNN correctness, step 0
        self.last_layer: dict[str, tuple[int, torch.Tensor]] = {}  # corpus -> (step, (N, H) on the CPU)
        self.start_layer: dict[str, torch.Tensor] = {}  # corpus -> last layer's (N, H) at step 0, with tsne
        self.history: dict[str, list[tuple[int, float]]] = {}  # corpus -> (step, last-layer kNN accuracy)
        self.last_step: int | None = None  # the step of the last probe

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Read, sample, check and tokenize every probe corpus and the held-out documents before training."""
        if not self.prepared:
            for spec in self.corpora:
                self.prepared[spec.name] = prepare_corpus(spec, pl_module.tokenizer, self.k,
                                                          self.scoring["test_fraction"], self.seed, self.max_length,
                                                          self.view, self.geometry_pairs)
        self.heldout.setup(trainer.datamodule)
        self.data_source = getattr(getattr(trainer.datamodule, "hparams", None), "source", None)

    def state_dict(self) -> dict:
        """What a resumed fit needs of the probes before it (for its figures and summary): step 0's
        results and the history."""
        return {"baseline": self.baseline, "start_correct": self.start_correct, "start_layer": self.start_layer,
                "history": self.history, "last_step": self.last_step, "indomain": self.heldout.series}

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        self.heldout.series = state.pop("indomain", {})
        for name, value in state.items():
            setattr(self, name, value)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_start and trainer.ckpt_path is None:  # a resumed fit: the stopped run probed the start
            board.log_at_step(trainer, self._probe(trainer, pl_module, baseline=True))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = self._probe(trainer, pl_module, baseline=False)
        pl_module.log_dict(metrics, logger=False, sync_dist=False)  # callback_metrics, for ModelCheckpoint
        board.log_at_step(trainer, metrics)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Probe the final weights if not done yet, for the projector, t-SNE maps and summary (``summary.finish``)."""
        if (self.projector or self.tsne or self.summary) and self.last_step is not None \
                and (self.last_step != trainer.global_step or not self.last_layer):  # (a resumed fit's)
            self._probe(trainer, pl_module, baseline=False)  # every rank: the embedding is gathered
        summary.finish(trainer, self)

    def _probe(self, trainer: Trainer, pl_module: LightningModule, baseline: bool) -> dict[str, float]:
        """Embed and score every corpus and the held-out documents in eval mode without gradients;
        restore the training mode."""
        was_training = pl_module.training
        pl_module.eval()
        metrics: dict[str, float] = {}
        try:
            with torch.no_grad():
                for name, prepared in self.prepared.items():
                    metrics.update(self._probe_corpus(trainer, pl_module, name, prepared, baseline))
                metrics.update(self.heldout(trainer, pl_module))
        finally:
            pl_module.train(was_training)
        self.last_step = trainer.global_step
        return metrics

    def _probe_corpus(self, trainer, pl_module, name: str, prepared: _Prepared, baseline: bool) -> dict[str, float]:
        layers = gathered_layers(trainer, pl_module, prepared.token_ids, self.batch_size)
        labels = prepared.corpus.labels.to(layers.device)
        scores = layer_scores(layers, labels, **self.scoring)
        metrics = score_metrics(name, scores)
        if prepared.crop_pairs is not None:
            metrics.update(crop_geometry(pl_module, name, prepared.crop_pairs, layers.device))
        if baseline:
            self.baseline[name] = scores[tags.KNN]
            if trainer.global_step == 0:  # the summary's paired interval starts here
                self.start_correct[name] = knn_cv_correct(layers[-1], labels, self.k, self.folds, self.seed,
                                                          self.scoring["metric"]).cpu()
            if self.tsne:
                self.start_layer[name] = layers[-1].float().cpu()
        self.last_layer[name] = (trainer.global_step, layers[-1].float().cpu())
        self.history.setdefault(name, []).append((trainer.global_step, scores[tags.KNN][-1].item()))
        if trainer.is_global_zero:
            board.add_accuracy_figure(trainer, name, scores[tags.KNN], self.baseline.get(name), self.k)
        return metrics
