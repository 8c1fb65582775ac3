"""The LightningDataModule: a streamed corpus -> view pairs -> padded token batches."""

from __future__ import annotations

import logging
import os
import warnings
from functools import partial

from datasets.distributed import split_dataset_by_node
from jsonargparse import lazy_instance
from lightning import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_app.data.collate import PairCollator
from lightning_app.data.guard import GuardedDocuments
from lightning_app.data.pairs import document_pairs, held_out, token_ids
from lightning_app.data.sources import open_corpus
from lightning_app.data.stream import PairStream, RunLengthLoader
from lightning_app.data.views import SentenceCrops, View
from lightning_app.errors import ConfigError
from lightning_app.packaged import load_tokenizer

log = logging.getLogger(__name__)
# Lightning warns that an iterable dataset's length may be wrong with several workers; the
# training loader's length is the run's length in batches, whatever the workers read.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


def first_held_out(documents, fraction: float, source: str, limit: int) -> list[str]:
    """The first ``limit`` distinct non-empty texts of ``documents`` in the validation slice (``held_out``:
    by content hash, so training never reads them), in stream order, the same on every rank."""
    texts: dict[str, None] = {}  # an ordered set: a duplicate would be its own rival in retrieval
    if fraction <= 0 or limit <= 0:
        return []
    for doc in GuardedDocuments(documents.filter(lambda doc: held_out(doc["text"] or "", fraction)), source):
        if doc["text"] and doc["text"].strip():
            texts[doc["text"]] = None
            if len(texts) == limit:
                break
    return list(texts)


def lowest_priority(worker_id: int) -> None:
    """A dataloader worker yields the CPU to the training step (nice 19): on a machine whose cores
    the step's threads fill, the worker runs in the step's gaps instead of stalling its threads;
    where a core is idle, or while the trainer waits for a batch, it runs as before."""
    if hasattr(os, "nice"):
        os.nice(19)


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
        length_buckets: opt-in: group training batches by length across this many batches
            (``regroup_by_length``), so each pads little. It changes which in-batch negatives a pair
            sees (no longer the paper's random ones), hence a warning; 1 (the default) keeps the
            stream's random batches, whose padding the model's in-batch cut (``model.tokens_per_chunk``)
            already removes. Validation batches are never bucketed.
        num_workers: dataloader worker processes (tokenization runs there), at the lowest CPU
            priority (``lowest_priority``).
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
                 batch_size: int = 32, length_buckets: int = 1, num_workers: int = 1, shuffle_buffer: int = 1000,
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
        if length_buckets > 1:
            rank_zero_warn(f"data.length_buckets {length_buckets}: batches are grouped by length, which changes the "
                           "in-batch negatives (not the paper's random ones); 1 turns it off", category=UserWarning)
        self.save_hyperparameters(ignore=["view"])
        self.view = view
        self.train_pairs: PairStream | None = None
        self.documents = None  # the whole corpus stream (training and validation slices), after setup
        self.val_pairs: list[dict] | None = None

    def setup(self, stage: str) -> None:
        if self.train_pairs is not None:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.tokenizer, hp.trust_remote_code)
        self.collate = PairCollator(self.tokenizer, hp.max_length)
        self.view.check_fits(self.collate.body, hp.max_length)
        documents = open_corpus(hp.source, hp.text_field, subset=hp.subset, split=hp.split,
                                sample_by=hp.sample_by, trust_remote_code=hp.trust_remote_code)
        self._check_pairs(documents)
        self.documents = documents
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
            texts = (doc["text"] for doc in GuardedDocuments(val, hp.source))
            self.val_pairs = document_pairs(texts, self.view, partial(token_ids, self.tokenizer), hp.seed)

    def held_out_texts(self, limit: int) -> list[str]:
        """The first ``limit`` distinct texts of the validation slice (``first_held_out``)."""
        return first_held_out(self.documents, self.hparams.val_fraction, self.hparams.source, limit)

    def _check_pairs(self, documents) -> None:
        """Fail before training when the first documents give no pair (wrong view or corpus)."""
        n = self.hparams.check_documents
        texts = (doc["text"] for doc in GuardedDocuments(documents.take(n), self.hparams.source))
        pairs = len(document_pairs(texts, self.view, partial(token_ids, self.tokenizer), self.hparams.seed))
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
                               drop_last=True, prefetch_factor=4 if workers else None,
                               worker_init_fn=lowest_priority if workers else None)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_pairs:
            return []
        return DataLoader(self.val_pairs, batch_size=self.hparams.batch_size, collate_fn=self.collate)
