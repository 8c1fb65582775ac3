import math

import pytest
import torch

from lightning_app.errors import ConfigError
from lightning_app.probes.geometry import alignment, uniformity


def test_alignment_is_zero_for_identical_pairs():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert alignment(x, x) == pytest.approx(0.0, abs=1e-12)
    assert alignment(x, 3.0 * x) == pytest.approx(0.0, abs=1e-10)  # normalised inside


def test_alignment_hand_computed():
    # Pair 1 orthogonal (squared distance 2), pair 2 identical direction, pair 3 antipodal (distance 2).
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 5.0], [1.0, 0.0], [0.0, -1.0]])
    assert alignment(a, b) == pytest.approx((2.0 + 0.0 + 4.0) / 3)
    assert alignment(a, b, alpha=1) == pytest.approx((math.sqrt(2) + 0.0 + 2.0) / 3)


def test_uniformity_hand_computed_square():
    # Four unit vectors at 90 degrees (given unnormalised): 4 adjacent pairs with squared distance 2,
    # 2 opposite pairs with squared distance 4.
    x = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0], [0.0, -3.0]])
    expected = math.log((4 * math.exp(-2 * 2) + 2 * math.exp(-2 * 4)) / 6)
    assert uniformity(x) == pytest.approx(expected)
    assert uniformity(x, t=1) == pytest.approx(math.log((4 * math.exp(-2) + 2 * math.exp(-4)) / 6))


def test_uniformity_of_collapsed_embeddings_is_zero():
    x = torch.tensor([[1.0, 2.0, 3.0]]).repeat(10, 1) * torch.arange(1.0, 11.0)[:, None]
    assert uniformity(x) == pytest.approx(0.0, abs=1e-6)


def test_spread_embeddings_are_more_uniform_than_clustered():
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(200, 16, generator=g)
    clustered = torch.ones(200, 16) + 0.1 * torch.randn(200, 16, generator=g)
    assert uniformity(spread) < uniformity(clustered) < 0.0


def test_bad_shapes_raise():
    with pytest.raises(ConfigError, match="N >= 2"):
        uniformity(torch.randn(1, 4))
    with pytest.raises(ConfigError, match="equal shape"):
        alignment(torch.randn(3, 4), torch.randn(2, 4))
