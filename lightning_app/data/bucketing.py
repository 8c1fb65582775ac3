"""Length bucketing of a pair stream, so that each batch pads to a length close to its rows'."""

from __future__ import annotations

import hashlib
import random

from torch.utils.data import IterableDataset, get_worker_info


def bucket_rng(seed: int, epoch: int, worker: int) -> random.Random:
    """The batch shuffler of one worker and epoch (stable across processes, unlike ``hash``)."""
    digest = hashlib.blake2b(f"buckets\x1f{seed}\x1f{epoch}\x1f{worker}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def pair_length(pair: dict) -> int:
    """The longer view's tokens: the row length that this pair pads its batch to."""
    return max(len(pair["a"]), len(pair["b"]))


class LengthBuckets(IterableDataset):
    """Regroups a stream of pairs into batches of similar length (fairseq-style bucketing).

    Reads ``buckets * batch_size`` pairs, sorts them by length, cuts them into batches and yields
    those batches in a shuffled order; the DataLoader then batches the stream in the same cuts.
    Only the grouping changes: every pair is yielded once, and a stream's last
    ``n % batch_size`` pairs (the incomplete batch that ``drop_last`` drops) stay last, so the
    same pairs are trained on with or without bucketing.

    Args:
        pairs: the pair stream (a ``PairStream``).
        batch_size: pairs per batch, as in the DataLoader.
        buckets: batches sorted together.
        seed: seed of the batch shuffle.
    """

    def __init__(self, pairs, batch_size: int, buckets: int, seed: int = 0) -> None:
        self.pairs = pairs
        self.batch_size = batch_size
        self.buckets = buckets
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.pairs.set_epoch(epoch)

    def __iter__(self):
        worker = get_worker_info()
        rng = bucket_rng(self.seed, self.epoch, worker.id if worker else 0)
        window = self.buckets * self.batch_size
        buffer = []
        for pair in self.pairs:
            buffer.append(pair)
            if len(buffer) == window:
                yield from self._regroup(buffer, rng)
                buffer = []
        whole = len(buffer) - len(buffer) % self.batch_size
        yield from self._regroup(buffer[:whole], rng)
        yield from buffer[whole:]

    def _regroup(self, pairs: list[dict], rng: random.Random):
        ordered = sorted(pairs, key=pair_length)
        batches = [ordered[i:i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]
        rng.shuffle(batches)
        for batch in batches:
            yield from batch
