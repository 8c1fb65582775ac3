"""The in-domain probe: label-free signals of every layer on held-out documents of the training corpus.

The documents are the data module's validation slice (``data.pairs.held_out``: chosen by content
hash, so training never reads them). Every view type (sentence crops, token crops, dropout) turns
each into a pair, whatever the run trains with, and ``indomain.indomain_signals`` scores each view
set per layer. Pairs and TF-IDF neighbours are drawn once, so every validation scores the same pairs.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from lightning_app.data.collate import PairCollator
from lightning_app.data.pairs import document_pair, token_ids
from lightning_app.data.views import Dropout, SentenceCrops, TokenCrops, View
from lightning_app.errors import ConfigError
from lightning_app.probes import tags
from lightning_app.probes.embed import gathered_layers, seeded_dropout
from lightning_app.probes.indomain import indomain_signals, tfidf_neighbours

OPTION = "probe.indomain_documents"
INDOMAIN_DOCUMENTS = 1000  # its default: where the validation slice allows, enough to rank among 1,000
VIEW_TYPES = {"sentence_crops": SentenceCrops, "token_crops": TokenCrops, "dropout": Dropout}


@dataclass
class ViewSet:
    """One view type's pairs of the held-out documents as the model reads them (view 1 of every
    document, then view 2: token ids with special tokens) and each document's TF-IDF neighbours."""

    ids: list[list[int]]
    lexical: torch.Tensor  # (N, k) from indomain.tfidf_neighbours

    @property
    def documents(self) -> int:
        return len(self.ids) // 2


def probe_views(run_view: View, body: int) -> dict[str, View]:
    """One view per type: the run's own view for its type, the defaults for the others (token crops in
    windows of at most ``2 * body`` tokens, so their longest span fits the ``body`` tokens a view keeps)."""
    defaults = {TokenCrops: lambda: TokenCrops(chunk_tokens=min(TokenCrops().chunk_tokens, 2 * body))}
    return {name: run_view if type(run_view) is cls else defaults.get(cls, cls)()
            for name, cls in VIEW_TYPES.items()}


def view_set(texts: list[str], view: View, collator: PairCollator, tokenizer, seed: int, k: int) -> ViewSet | None:
    """The pair ``view`` draws from each text (``document_pair`` at epoch 0, as the validation pairs), cut
    and framed as in a training batch, and the TF-IDF neighbours of the texts that give one; None when
    fewer than 2 do."""
    kept, first, second = [], [], []
    for text in texts:
        pair = document_pair(view, text, partial(token_ids, tokenizer), seed, 0)
        if pair is not None:
            kept.append(text)
            first.append(collator.prefix + pair[0][:collator.body] + collator.suffix)
            second.append(collator.prefix + pair[1][:collator.body] + collator.suffix)
    if len(kept) < 2:
        return None
    return ViewSet(first + second, tfidf_neighbours(kept, min(k, len(kept) - 1)))


class HeldOutProbe:
    """``probe/indomain/<view>/<signal>/layer_NN`` on up to ``documents`` held-out documents (0: off).

    Dropout views are the same tokens twice, identical in eval mode, so they are embedded in training
    mode with torch's generators seeded by ``seed`` (``embed.seeded_dropout``): the same masks at every
    validation for a given world size, and training's own random numbers untouched. The other views
    are embedded in eval mode. ``series`` keeps every logged value (tag -> step -> value) for the summary.
    """

    def __init__(self, documents: int, k: int, seed: int, batch_size: int) -> None:
        self.documents, self.k, self.seed, self.batch_size = documents, k, seed, batch_size
        self.sets: dict[str, ViewSet] | None = None
        self.held_out = 0  # documents read from the validation slice
        self.series: dict[str, dict[int, float]] = {}

    def setup(self, datamodule) -> None:
        """Read the held-out documents and draw every view type's pairs, once; one ``ConfigError`` line
        naming the option when the slice has fewer than 2 documents or no view gives 2 pairs."""
        if self.sets is not None or self.documents == 0:
            return
        if not hasattr(datamodule, "held_out_texts"):
            rank_zero_warn(f"{OPTION}: no ContrastiveDataModule holds documents out of training; no in-domain signals")
            self.sets = {}
            return
        hp = datamodule.hparams
        texts = datamodule.held_out_texts(self.documents)
        if len(texts) < 2:
            raise ConfigError(f"{OPTION}: the validation slice of '{hp.source}' (data.val_fraction {hp.val_fraction}) "
                              f"holds {len(texts)} document(s); retrieval needs at least 2: raise data.val_fraction, "
                              f"or set {OPTION} to 0 to turn the in-domain signals off")
        sets = {}
        for name, view in probe_views(datamodule.view, datamodule.collate.body).items():
            found = view_set(texts, view, datamodule.collate, datamodule.tokenizer, hp.seed, self.k)
            if found is None:
                rank_zero_warn(f"{OPTION}: {view!r} gives a pair for fewer than 2 of the {len(texts)} held-out "
                               f"documents; no probe/indomain/{name} signals", category=UserWarning)
            else:
                sets[name] = found
        if not sets:
            raise ConfigError(f"{OPTION}: no view type gives a pair for 2 of the {len(texts)} held-out documents "
                              f"of '{hp.source}'; expected longer documents, or set {OPTION} to 0")
        self.sets, self.held_out = sets, len(texts)

    def __call__(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """Every view set's signals from one forward pass over both of its views (``gathered_layers``: every
        rank gets and logs the same values); call it without gradients, the module in eval mode."""
        metrics = {}
        for name, views in (self.sets or {}).items():
            with seeded_dropout(pl_module.encoder, self.seed) if name == "dropout" else nullcontext():
                layers = gathered_layers(trainer, pl_module, views.ids, self.batch_size)
            first, second = layers[:, :views.documents], layers[:, views.documents:]
            signals = indomain_signals(first, second, views.lexical.to(layers.device), views.lexical.shape[1])
            metrics.update({tags.indomain_tag(name, key): value for key, value in signals.items()})
        for tag, value in metrics.items():
            self.series.setdefault(tag, {})[trainer.global_step] = value
        return metrics
