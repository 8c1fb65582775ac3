import random

import torch

from lightning_app.data.bucketing import LengthBuckets, pair_length
from lightning_app.data.views import Dropout
from tests.data.test_datamodule import make


class Pairs:
    """A fixed stream of pairs with views of random lengths; ``a[0]`` is the pair's number."""

    def __init__(self, n: int) -> None:
        rng = random.Random(0)
        self.items = [{"a": [i] * rng.randint(1, 50), "b": [i] * rng.randint(1, 50), "skipped": 0} for i in range(n)]

    def __iter__(self):
        return iter(self.items)

    def set_epoch(self, epoch: int) -> None:
        pass


def test_buckets_regroup_by_length_and_keep_the_incomplete_tail_last():
    pairs = Pairs(4 * 3 * 5 + 7)  # five windows of 3 batches of 4, then 7 pairs
    out = list(LengthBuckets(pairs, batch_size=4, buckets=3, seed=1))
    assert sorted(p["a"][0] for p in out) == list(range(len(pairs.items)))
    assert [p["a"][0] for p in out[-3:]] == [p["a"][0] for p in pairs.items[-3:]]
    for window in range(5 + 1):  # the sixth window is the last whole batch of the 7 remaining pairs
        batches = [out[12 * window + 4 * i:12 * window + 4 * i + 4] for i in range(3 if window < 5 else 1)]
        spans = sorted((min(map(pair_length, b)), max(map(pair_length, b))) for b in batches)
        assert all(high <= next_low for (_, high), (next_low, _) in zip(spans, spans[1:]))
        members = {p["a"][0] for b in batches for p in b}
        assert members == set(range(12 * window, 12 * window + 4 * len(batches)))


def test_bucket_order_depends_on_seed_and_epoch():
    def order(seed, epoch):
        buckets = LengthBuckets(Pairs(96), batch_size=4, buckets=8, seed=seed)
        buckets.set_epoch(epoch)
        return [p["a"][0] for p in buckets]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(2, 0) and order(1, 0) != order(1, 1)


def test_bucketing_trains_on_the_same_pairs_with_less_padding(bbc_jsonl):
    def batches(length_buckets):
        dm = make(bbc_jsonl, view=Dropout(), text_field="body", batch_size=16, length_buckets=length_buckets)
        return list(dm.train_dataloader())

    def pairs(loaded):
        rows = []
        for batch in loaded:
            ids = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
            half = len(ids) // 2
            rows += [(tuple(a), tuple(b)) for a, b in zip(ids[:half], ids[half:])]
        return sorted(rows)

    plain, bucketed = batches(1), batches(4)
    assert pairs(plain) == pairs(bucketed)
    assert sum(b["docs_skipped"] for b in plain) == sum(b["docs_skipped"] for b in bucketed)
    assert all(b["tokens"] == int(b["attention_mask"].sum()) for b in bucketed)
    padded = lambda loaded: sum(b["attention_mask"].numel() for b in loaded)  # noqa: E731
    assert padded(bucketed) < 0.9 * padded(plain)
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(plain, bucketed))
