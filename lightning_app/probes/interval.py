"""How sure the change of a labelled kNN probe between two checkpoints is, on the same documents.

Cross-validation makes every document a test document exactly once, so two checkpoints give paired
0/1 outcomes per document. The change in accuracy gets the Bonett & Price (2012) adjusted Wald
interval for paired proportions, which keeps at least its nominal coverage when few documents
change outcome, where the plain Wald interval on the paired differences falls short.
"""

import math
from statistics import NormalDist

import torch

from lightning_app.errors import ConfigError
from lightning_app.probes.knn import FOLDS, K, SEED, knn_predict, stratified_folds

VERDICTS = ("better", "worse", "no detectable change")


@torch.no_grad()
def knn_cv_correct(embeddings: torch.Tensor, labels: torch.Tensor, k: int = K, folds: int = FOLDS, seed: int = SEED,
                   metric: str = "euclidean") -> torch.Tensor:
    """Whether each document's kNN prediction from the other folds (``stratified_folds``) is right: bool
    (N,) for (N, H) embeddings, (L, N) for (L, N, H). Its mean over documents is ``layer_knn_cv_accuracy``."""
    if embeddings.dim() not in (2, 3) or labels.shape != (embeddings.shape[-2],):
        raise ConfigError(
            f"kNN probe: expected embeddings (N, H) or (L, N, H) and labels (N,), "
            f"got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
        )
    layers = embeddings if embeddings.dim() == 3 else embeddings.unsqueeze(0)
    correct = torch.zeros(layers.shape[:2], dtype=torch.bool, device=labels.device)
    for test_idx in stratified_folds(labels, folds, seed):
        keep = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
        keep[test_idx] = False
        for layer, values in enumerate(layers):
            predictions = knn_predict(values[keep], labels[keep], values[test_idx], k=k, metric=metric)
            correct[layer, test_idx] = predictions == labels[test_idx]
    return correct if embeddings.dim() == 3 else correct[0]


def _z(confidence: float) -> float:
    """Two-sided standard-normal quantile ``z_{(1 + confidence) / 2}``."""
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"paired interval: confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def paired_interval(correct_before, correct_after, confidence: float = 0.95) -> tuple[float, float, float]:
    """Change in accuracy ``mean(after) - mean(before)`` over the same N documents, with the Bonett & Price
    (2012) interval ``d* +- z sqrt((g* + l* - d*^2) / (N + 2))``, where ``g* = (gained + 1) / (N + 2)``,
    ``l* = (lost + 1) / (N + 2)``, ``d* = g* - l*``, clipped to [-1, 1]. Returns ``(difference, low, high)``."""
    before = torch.as_tensor(correct_before).bool().flatten().cpu()
    after = torch.as_tensor(correct_after).bool().flatten().cpu()
    if before.shape != after.shape or len(before) == 0:
        raise ConfigError(
            f"paired interval: expected two non-empty 0/1 vectors over the same documents, "
            f"got {len(before)} and {len(after)} values"
        )
    n = len(before)
    gained, lost = (after & ~before).sum().item(), (before & ~after).sum().item()
    g, l = (gained + 1) / (n + 2), (lost + 1) / (n + 2)
    half = _z(confidence) * math.sqrt((g + l - (g - l) ** 2) / (n + 2))
    return (gained - lost) / n, max(g - l - half, -1.0), min(g - l + half, 1.0)


def labels_for_width(discordance: float, half_width: float = 0.02, confidence: float = 0.95,
                     difference: float = 0.0) -> int:
    """About how many labelled documents give an interval of ``+- half_width``: ``z^2 (D - d^2) / half_width^2``,
    with ``D`` the share of documents the two checkpoints score differently and ``d`` the accuracy change."""
    if not 0.0 <= abs(difference) <= discordance <= 1.0:
        raise ConfigError(
            f"labels for width: expected 0 <= |difference| <= discordance <= 1, "
            f"got difference={difference}, discordance={discordance}"
        )
    if half_width <= 0.0:
        raise ConfigError(f"labels for width: half_width must be positive, got {half_width}")
    return math.ceil(_z(confidence) ** 2 * (discordance - difference**2) / half_width**2)


def verdict(diff: float, low: float, high: float) -> str:
    """"no detectable change" when the interval ``[low, high]`` covers 0, else "better" or "worse" by the
    sign of ``diff`` (which the interval shares)."""
    if low > high:
        raise ConfigError(f"verdict: expected an interval with low <= high, got [{low}, {high}]")
    if low <= 0.0 <= high:
        return VERDICTS[2]
    return VERDICTS[0] if diff > 0 else VERDICTS[1]
