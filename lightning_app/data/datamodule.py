"""The LightningDataModule: a streamed corpus -> view pairs -> padded token batches."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import random
import warnings
from functools import partial
from itertools import islice

import torch
from datasets.distributed import split_dataset_by_node
from jsonargparse import lazy_instance
from lightning import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_app.data.bucketing import regroup_by_length
from lightning_app.data.guard import GuardedDocuments
from lightning_app.data.sources import open_corpus
from lightning_app.data.views import SentenceCrops, View
from lightning_app.errors import ConfigError
from lightning_app.model.encoder import load_tokenizer

log = logging.getLogger(__name__)
# Lightning warns that an iterable dataset's length may be wrong with several workers; the
# training loader's length is the run's length in batches, whatever the workers read.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


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


def document_pair(view: View, text: str | None, tokenize, seed: int, epoch: int):
    """The document's two views as token ids, or None when it gives no pair."""
    pair = view.pair(text, tokenize, document_rng(seed, epoch, text)) if text else None
    return pair if pair is not None and pair[0] and pair[1] else None


def document_pairs(documents, view: View, tokenize, seed: int, epoch: int = 0) -> list[dict]:
    """``{"a": ids, "b": ids}`` for each of ``documents`` that gives a pair."""
    pairs = (document_pair(view, doc["text"], tokenize, seed, epoch) for doc in documents)
    return [{"a": pair[0], "b": pair[1], "skipped": 0} for pair in pairs if pair is not None]


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


class PairStream(IterableDataset):
    """The training stream: documents shuffled in windows, turned into pairs, epoch after epoch.

    The stream reads ``window`` documents, permutes them with a generator drawn from
    ``(seed, epoch, window index)``, turns them into pairs, optionally groups the pairs into
    batches of similar length (:func:`~lightning_app.data.bucketing.regroup_by_length`), yields
    them, then reads the next window. At the end of the corpus it starts the next epoch (a new
    permutation and new views), so it never runs dry: training length is ``trainer.max_steps``
    and no DDP rank waits for another at an epoch's end. Tokenization runs here, in the
    dataloader workers.

    Its state (epoch, window index, the corpus position where the window starts, the pairs
    already yielded from it and the batch offset) is exact: a window's pairs are a function of
    its documents and the seed, so a loaded state rebuilds the window and continues with the next
    unyielded pair, neither repeating nor skipping one. A buffer shuffle (``datasets``' ``shuffle``)
    would lose its buffer on resume, hence the windows.
    """

    def __init__(self, documents, view: View, tokenizer, seed: int = 0, window: int = 1000,
                 batch_size: int = 1, length_buckets: int = 1) -> None:
        self.documents = documents
        self.view = view
        self.tokenizer = tokenizer
        self.seed = seed
        self.window = max(window, 1)
        self.batch_size = batch_size
        self.length_buckets = length_buckets
        self.position = {"epoch": 0, "window": 0, "window_start": None, "consumed": 0, "offset": 0}

    def tokenize(self, text: str) -> list[int]:
        return token_ids(self.tokenizer, text)

    def _window_pairs(self, documents: list[dict]) -> tuple[list[dict], int]:
        """The pairs of one window in the order they are yielded (``skipped``: the documents
        without a pair just before each), and the documents without a pair after the last."""
        epoch, window = self.position["epoch"], self.position["window"]
        order = random.Random(_unit_hash(self.seed, epoch, window, "window"))
        documents = documents[:]
        order.shuffle(documents)
        pairs, skipped = [], 0
        for doc in documents:
            pair = document_pair(self.view, doc["text"], self.tokenize, self.seed, epoch)
            if pair is None:
                skipped += 1
                continue
            pairs.append({"a": pair[0], "b": pair[1], "skipped": skipped})
            skipped = 0
        if self.length_buckets > 1:
            pairs = regroup_by_length(pairs, self.batch_size, self.length_buckets, self.position["offset"], order)
        return pairs, skipped

    def __iter__(self):
        """``{"a": ids, "b": ids, "skipped": n}``, updating ``position`` before each pair is handed out."""
        position = self.position
        skipped = 0  # documents without a pair not yet reported with a pair (a log count only)
        while True:
            self.documents.set_epoch(position["epoch"])
            if position["window_start"] is not None:
                self.documents.load_state_dict(position["window_start"])
            stream = iter(self.documents)
            read_any = False
            while documents := list(islice(stream, self.window)):
                read_any = True
                pairs, trailing = self._window_pairs(documents)
                for pair in pairs[position["consumed"]:]:
                    position["consumed"] += 1
                    yield {**pair, "skipped": pair["skipped"] + skipped}
                    skipped = 0
                skipped += trailing
                position.update(window=position["window"] + 1, window_start=self.documents.state_dict(),
                                consumed=0, offset=(position["offset"] + len(pairs)) % self.batch_size)
            if not read_any:  # this worker's share of the corpus is empty
                return
            position.update(epoch=position["epoch"] + 1, window=0, window_start=None, consumed=0)

    def state_dict(self) -> dict:
        return copy.deepcopy(self.position)

    def load_state_dict(self, state: dict) -> None:
        self.position = copy.deepcopy(state)


class RunLengthLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` over an endless stream whose length is the run's, in batches."""

    def __init__(self, dataset: PairStream, batches: int, **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self.batches = batches

    def __len__(self) -> int:
        return self.batches


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
            (``regroup_by_length``); 1 keeps the stream's order. Validation batches are never bucketed.
        num_workers: dataloader worker processes (tokenization runs there).
        shuffle_buffer: documents shuffled together: the stream is permuted in windows of this
            many documents, with a new permutation each epoch.
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
        self.train_pairs: PairStream | None = None
        self.val_pairs: list[dict] | None = None

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
        train = GuardedDocuments(split_dataset_by_node(train, rank=rank, world_size=world), hp.source)
        self.train_pairs = PairStream(train, self.view, self.tokenizer, hp.seed, hp.shuffle_buffer,
                                      hp.batch_size, hp.length_buckets)
        if fraction > 0 and hp.val_documents > 0:
            # Every rank reads the same held-out pairs; Lightning's DistributedSampler gives each
            # rank as many, so the gathered negatives of validation steps line up across ranks.
            val = documents.filter(lambda doc: held_out(doc["text"] or "", fraction)).take(hp.val_documents)
            self.val_pairs = document_pairs(GuardedDocuments(val, hp.source), self.view,
                                            partial(token_ids, self.tokenizer), hp.seed)

    def _check_pairs(self, documents) -> None:
        """Fail before training when the first documents give no pair (wrong view or corpus)."""
        n = self.hparams.check_documents
        first = GuardedDocuments(documents.take(n), self.hparams.source)
        pairs = len(document_pairs(first, self.view, partial(token_ids, self.tokenizer), self.hparams.seed))
        if pairs == 0:
            raise ConfigError(f"data.source: none of the first {n} documents of '{self.hparams.source}' "
                              f"yields a pair with {self.view!r}; expected documents long enough for two views")
        log.info("%d of the first %d documents give a %s pair", pairs, n, type(self.view).__name__)

    def train_dataloader(self) -> StatefulDataLoader:
        """The endless pair stream, as long as the run: ``trainer.max_steps`` optimizer steps.

        A ``StatefulDataLoader`` (one state per worker, taken with every batch), so Lightning's
        checkpoints hold the stream position. Its known length also stops Lightning from
        fetching a batch ahead, which the saved position would count as consumed.
        """
        max_steps = self.trainer.max_steps if self.trainer else -1
        if max_steps < 0:
            raise ConfigError("trainer.max_steps: a streamed corpus has no known length; set "
                              "trainer.max_steps so the run, its warmup and decay have a length")
        workers = self.hparams.num_workers
        return RunLengthLoader(self.train_pairs, max_steps * self.trainer.accumulate_grad_batches,
                               batch_size=self.hparams.batch_size, collate_fn=self.collate, num_workers=workers,
                               drop_last=True, prefetch_factor=4 if workers else None)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_pairs:
            return []
        return DataLoader(self.val_pairs, batch_size=self.hparams.batch_size, collate_fn=self.collate)
