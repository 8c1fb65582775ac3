"""The training stream: documents shuffled in windows, turned into pairs, epoch after epoch, with
an exact resume state; and the loader whose length is the run's."""

from __future__ import annotations

import copy
import random
from itertools import islice

from torch.utils.data import IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_app.data.bucketing import regroup_by_length
from lightning_app.data.pairs import document_pair, stable_hash, token_ids
from lightning_app.data.views import View


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
        order = random.Random(stable_hash(self.seed, epoch, window, "window"))
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
