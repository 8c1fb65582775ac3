"""The probe protocol as one pure function: per-layer embeddings and labels -> per-layer scores."""

from __future__ import annotations

import torch

from lightning_app.probes import tags
from lightning_app.probes.knn import (K, SEED, TEST_FRACTION, layer_knn_accuracy, layer_knn_cv_accuracy,
                                      linear_probe_accuracy, stratified_split)


def layer_scores(layers: torch.Tensor, labels: torch.Tensor, *, k: int = K, test_fraction: float = TEST_FRACTION,
                 seed: int = SEED, metric: str = "euclidean", cv_folds: int = 0,
                 linear: bool = False) -> dict[str, torch.Tensor]:
    """Scores of every layer of ``layers`` (L, N, H), each an (L,) float64 tensor on the CPU:
    ``knn_acc`` (k nearest neighbours, seeded stratified ``test_fraction`` split: the paper's
    protocol), ``knn_cv_acc`` with ``cv_folds`` >= 2 (every document predicted once from the other
    folds) and ``linear_acc`` with ``linear`` (logistic regression on the same split)."""
    scores = {tags.KNN: layer_knn_accuracy(layers, labels, k, test_fraction, seed, metric)}
    if cv_folds:
        scores[tags.KNN_CV] = layer_knn_cv_accuracy(layers, labels, k, cv_folds, seed, metric)
    if linear:
        train, test = stratified_split(labels, test_fraction, seed)
        scores[tags.LINEAR] = torch.tensor([linear_probe_accuracy(layer[train], labels[train], layer[test], labels[test])
                                            for layer in layers], dtype=torch.float64)
    return scores
