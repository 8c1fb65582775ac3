import random
import warnings

import pytest
import torch

from lightning_app.data.bucketing import pair_length, regroup_by_length
from lightning_app.data.views import Dropout
from tests.helpers import make_datamodule as make


def numbered_pairs(n: int) -> list[dict]:
    """Pairs with views of random lengths; ``a[0]`` is the pair's number."""
    rng = random.Random(0)
    return [{"a": [i] * rng.randint(1, 50), "b": [i] * rng.randint(1, 50), "skipped": 0} for i in range(n)]


@pytest.mark.parametrize("offset", [0, 1, 3])
def test_regrouping_completes_the_open_batch_sorts_groups_and_keeps_the_tail(offset):
    pairs = numbered_pairs(2 * 12 + 7)
    out = regroup_by_length(pairs, batch_size=4, buckets=3, offset=offset, rng=random.Random(1))
    assert sorted(p["a"][0] for p in out) == list(range(len(pairs)))
    head = (4 - offset) % 4
    assert out[:head] == pairs[:head]
    whole = head + (len(pairs) - head) // 4 * 4
    assert out[whole:] == pairs[whole:]
    for start in range(head, whole, 12):  # each group of 3 batches: batches span disjoint length ranges
        group = out[start:min(start + 12, whole)]
        batches = [group[i:i + 4] for i in range(0, len(group), 4)]
        spans = sorted((min(map(pair_length, b)), max(map(pair_length, b))) for b in batches)
        assert all(high <= next_low for (_, high), (next_low, _) in zip(spans, spans[1:]))
        assert {p["a"][0] for p in group} == {p["a"][0] for p in pairs[start:start + len(group)]}


def test_regrouping_depends_on_the_generator():
    order = lambda seed: [p["a"][0] for p in regroup_by_length(numbered_pairs(96), 4, 8, 0, random.Random(seed))]  # noqa: E731
    assert order(1) == order(1) and order(1) != order(2)


def test_bucketing_trains_on_the_same_pairs_with_less_padding(bbc_jsonl):
    def batches(length_buckets):
        dm = make(bbc_jsonl, view=Dropout(), text_field="body", batch_size=16, length_buckets=length_buckets)
        loader = dm.train_dataloader()
        return [batch for _, batch in zip(range(15), loader)]  # 240 pairs: the first epoch's

    def pairs(loaded):
        rows = []
        for batch in loaded:
            ids = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
            half = len(ids) // 2
            rows += [(tuple(a), tuple(b)) for a, b in zip(ids[:half], ids[half:])]
        return sorted(rows)

    plain, bucketed = batches(1), batches(4)
    assert pairs(plain) == pairs(bucketed)
    assert all(b["tokens"] == int(b["attention_mask"].sum()) for b in bucketed)
    padded = lambda loaded: sum(b["attention_mask"].numel() for b in loaded)  # noqa: E731
    assert padded(bucketed) < 0.9 * padded(plain)
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(plain, bucketed))


def test_bucketing_is_off_by_default_and_warns_that_it_changes_the_negatives(bbc_jsonl):
    with pytest.warns(UserWarning, match="data.length_buckets 4: batches are grouped by length, which changes the "
                                         "in-batch negatives"):
        make(bbc_jsonl, text_field="body", length_buckets=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert make(bbc_jsonl, text_field="body").hparams.length_buckets == 1
