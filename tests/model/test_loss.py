import math

import pytest
import torch

from lightning_app.model.loss import info_nce


def by_hand(a, b, t):
    """-mean_i log(exp(cos(a_i,b_i)/t) / sum_j exp(cos(a_i,b_j)/t)), written out with floats."""
    cos = lambda x, y: sum(p * q for p, q in zip(x, y)) / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))  # noqa: E731
    total = 0.0
    for i, ai in enumerate(a):
        scores = [math.exp(cos(ai, bj) / t) for bj in b]
        total += -math.log(scores[i] / sum(scores))
    return total / len(a)


A = [[1.0, 0.0, 0.5], [0.2, 1.0, 0.0], [0.0, 0.3, 1.0]]
B = [[0.9, 0.1, 0.4], [0.0, 1.0, 0.3], [0.5, 0.0, 0.8]]


def test_info_nce_equals_the_hand_computation():
    loss, acc = info_nce(torch.tensor(A), torch.tensor(B), temperature=0.05)
    assert loss.item() == pytest.approx(by_hand(A, B, 0.05), rel=1e-5)
    assert acc.item() == pytest.approx(1.0)


def test_symmetric_info_nce_averages_both_directions():
    loss, _ = info_nce(torch.tensor(A), torch.tensor(B), temperature=0.1, symmetric=True)
    assert loss.item() == pytest.approx((by_hand(A, B, 0.1) + by_hand(B, A, 0.1)) / 2, rel=1e-5)


def test_gathered_negatives_with_offset_equal_the_full_batch():
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    full, _ = info_nce(a, b, 0.05)
    halves = [info_nce(a[i:i + 3], b[i:i + 3], 0.05, a_all=a, b_all=b, offset=i)[0] for i in (0, 3)]
    assert torch.stack(halves).mean().item() == pytest.approx(full.item(), rel=1e-5)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature: expected > 0"):
        info_nce(torch.ones(2, 2), torch.ones(2, 2), temperature=0)
