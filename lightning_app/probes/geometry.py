"""Label-free geometry of embeddings: alignment and uniformity on the unit hypersphere.

Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment and
Uniformity on the Hypersphere". Both inputs are L2-normalised here, as the definitions assume.
"""

import torch
import torch.nn.functional as F

from lightning_app.errors import ConfigError


@torch.no_grad()
def alignment(a: torch.Tensor, b: torch.Tensor, alpha: float = 2) -> float:
    """Mean distance between positive pairs: ``E_i ||f(a_i) - f(b_i)||_2^alpha`` with ``f(x) = x / ||x||``.

    Row ``i`` of ``a`` (N, H) and row ``i`` of ``b`` (N, H) form a positive pair. Lower is better;
    0 means every pair maps to the same point, 4 (for alpha=2) means every pair is antipodal.
    """
    if a.shape != b.shape or a.dim() != 2 or len(a) == 0:
        raise ConfigError(
            f"alignment needs two non-empty (N, H) tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return (F.normalize(a, dim=1) - F.normalize(b, dim=1)).norm(dim=1).pow(alpha).mean().item()


@torch.no_grad()
def uniformity(x: torch.Tensor, t: float = 2) -> float:
    """Log mean Gaussian potential over all distinct pairs: ``log E_{i<j} exp(-t ||f(x_i) - f(x_j)||_2^2)``.

    ``f(x) = x / ||x||`` and the pairs are the ``N (N - 1) / 2`` rows of ``torch.pdist``. Lower is more
    uniform; 0 (log 1) means all embeddings collapsed to one point.
    """
    if x.dim() != 2 or len(x) < 2:
        raise ConfigError(f"uniformity needs an (N, H) tensor with N >= 2, got {tuple(x.shape)}")
    return torch.pdist(F.normalize(x, dim=1)).pow(2).mul(-t).exp().mean().log().item()
