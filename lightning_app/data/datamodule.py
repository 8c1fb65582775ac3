"""The LightningDataModule: a streamed corpus -> view pairs -> padded token batches."""

from __future__ import annotations

import hashlib
import logging
import os
import random

import torch
from datasets.distributed import split_dataset_by_node
from jsonargparse import lazy_instance
from lightning import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

from lightning_app.data.bucketing import LengthBuckets
from lightning_app.data.sources import open_corpus
from lightning_app.data.views import SentenceCrops, View
from lightning_app.errors import ConfigError
from lightning_app.model.encoder import load_tokenizer

log = logging.getLogger(__name__)


def _unit_hash(*parts: object) -> int:
    """A stable 64-bit hash (the same in every process, unlike ``hash``)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def held_out(text: str, fraction: float) -> bool:
    """Whether a document belongs to the validation slice: decided by its content alone."""
    return _unit_hash("validation", text) < fraction * 2**64


def document_rng(seed: int, epoch: int, text: str) -> random.Random:
    """The view sampler's generator for one document: the same pair for the same seed and epoch,
    whichever rank or worker reads the document, and after a resume."""
    return random.Random(_unit_hash(seed, epoch, text))


class PairStream(IterableDataset):
    """Streams documents and yields ``{"a": ids, "b": ids, "skipped": n}`` pairs.

    Tokenization runs here, in the dataloader workers. ``skipped`` counts the documents dropped
    (no pair) since the previous yield, so the training step can log how many were skipped.
    """

    def __init__(self, documents, view: View, tokenizer, seed: int = 0) -> None:
        self.documents = documents
        self.view = view
        self.tokenizer = tokenizer
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.documents.set_epoch(epoch)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def __iter__(self):
        skipped = 0
        for doc in self.documents:
            text = doc["text"]
            pair = self.view.pair(text, self.tokenize, document_rng(self.seed, self.epoch, text)) if text else None
            if pair is None or not pair[0] or not pair[1]:
                skipped += 1
                continue
            yield {"a": pair[0], "b": pair[1], "skipped": skipped}
            skipped = 0

    def state_dict(self) -> dict:
        return {"documents": self.documents.state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(state["epoch"])
        self.documents.load_state_dict(state["documents"])


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after one sequence (``[CLS]``/``[SEP]``, ``<s>``/``</s>``)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next(i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain)
    return full[:start], full[start + len(plain):]


class PairCollator:
    """Pairs -> one batch of 2B rows (all first views, then all second views), truncated to
    ``max_length`` with special tokens and padded to the longest row of the batch.

    ``tokens`` (a plain int) counts the non-padding tokens, so that throughput and FLOP counts
    need no device synchronisation."""

    def __init__(self, tokenizer, max_length: int = 128) -> None:
        self.prefix, self.suffix = special_tokens(tokenizer)
        self.body = max_length - len(self.prefix) - len(self.suffix)
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        views = [r["a"] for r in rows] + [r["b"] for r in rows]
        ids = [self.prefix + v[:self.body] + self.suffix for v in views]
        width = max(map(len, ids))
        return {
            "input_ids": torch.tensor([x + [self.pad_id] * (width - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
            "docs_skipped": torch.tensor(sum(r["skipped"] for r in rows)),
            "tokens": sum(map(len, ids)),
        }


class ContrastiveDataModule(LightningDataModule):
    """Streams a corpus, turns each document into a pair of views and batches them.

    Args:
        source: local file, folder or glob (jsonl, json, parquet, csv, txt), a Hugging Face
            dataset id, or ``packaged:bbcnews``.
        view: how a document becomes a pair: ``SentenceCrops`` (the paper's default),
            ``TokenCrops`` or ``Dropout`` from ``lightning_app.data.views``, or your own ``View``.
        text_field: the column that holds the text.
        subset: the hub dataset's configuration name.
        split: the hub dataset's split.
        sample_by: for .txt files: one document per ``document`` (file), ``line`` or ``paragraph``.
        tokenizer: tokenizer name or folder; linked to ``model.model`` by the CLI.
        max_length: tokens per view, special tokens included.
        batch_size: pairs per batch and device (each pair is two rows).
        length_buckets: training batches sorted together by length, so each pads little
            (``LengthBuckets``); 1 keeps the stream's order. Validation batches are never bucketed.
        num_workers: dataloader worker processes (tokenization runs there).
        shuffle_buffer: documents held in the streaming shuffle buffer.
        val_fraction: share of documents held out for the validation loss, chosen by content hash.
        val_documents: at most this many held-out documents per validation.
        check_documents: documents read at setup to check that the corpus yields pairs.
        seed: seed of the shuffle and of the view sampler.
        trust_remote_code: run dataset or tokenizer code from the hub (off unless asked for).
    """

    def __init__(self, source: str = "packaged:bbcnews", view: View = lazy_instance(SentenceCrops),
                 text_field: str = "text", subset: str | None = None, split: str = "train",
                 sample_by: str = "document", tokenizer: str = "packaged:minilm", max_length: int = 128,
                 batch_size: int = 32, length_buckets: int = 16, num_workers: int = 1, shuffle_buffer: int = 1000,
                 val_fraction: float = 0.05, val_documents: int = 256, check_documents: int = 200,
                 seed: int = 42, trust_remote_code: bool = False) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size: expected >= 1, got {batch_size}")
        if length_buckets < 1:
            raise ConfigError(f"data.length_buckets: expected >= 1 (1 turns bucketing off), got {length_buckets}")
        if max_length < 3:
            raise ConfigError(f"data.max_length: expected >= 3 tokens, got {max_length}")
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"data.val_fraction: expected 0 <= val_fraction < 1, got {val_fraction}")
        self.save_hyperparameters(ignore=["view"])
        self.view = view
        self.train_pairs: PairStream | LengthBuckets | None = None
        self.val_pairs: PairStream | None = None

    def setup(self, stage: str) -> None:
        if self.train_pairs is not None:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.tokenizer, hp.trust_remote_code)
        self.collate = PairCollator(self.tokenizer, hp.max_length)
        documents = open_corpus(hp.source, hp.text_field, subset=hp.subset, split=hp.split,
                                sample_by=hp.sample_by, trust_remote_code=hp.trust_remote_code)
        self._check_pairs(documents)
        if hp.num_workers > 0:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        fraction = hp.val_fraction
        train = documents.filter(lambda doc: not held_out(doc["text"] or "", fraction))
        train = split_dataset_by_node(train, rank=rank, world_size=world)
        train = train.shuffle(seed=hp.seed, buffer_size=hp.shuffle_buffer)
        self.train_pairs = PairStream(train, self.view, self.tokenizer, hp.seed)
        if hp.length_buckets > 1:
            self.train_pairs = LengthBuckets(self.train_pairs, hp.batch_size, hp.length_buckets, hp.seed)
        if fraction > 0 and hp.val_documents > 0:
            val = documents.filter(lambda doc: held_out(doc["text"] or "", fraction))
            val = split_dataset_by_node(val.take(hp.val_documents), rank=rank, world_size=world)
            self.val_pairs = PairStream(val, self.view, self.tokenizer, hp.seed)

    def _check_pairs(self, documents) -> None:
        """Fail before training when the first documents give no pair (wrong view or corpus)."""
        n = self.hparams.check_documents
        pairs = sum(1 for _ in PairStream(documents.take(n), self.view, self.tokenizer, self.hparams.seed))
        if pairs == 0:
            raise ConfigError(f"data.source: none of the first {n} documents of '{self.hparams.source}' "
                              f"yields a pair with {self.view!r}; expected documents long enough for two views")
        log.info("%d of the first %d documents give a %s pair", pairs, n, type(self.view).__name__)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_pairs, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_pairs, drop_last=False) if self.val_pairs is not None else []

    def _loader(self, pairs: PairStream | LengthBuckets, drop_last: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(pairs, batch_size=self.hparams.batch_size, collate_fn=self.collate,
                          num_workers=workers, drop_last=drop_last, persistent_workers=False,
                          prefetch_factor=4 if workers else None)
