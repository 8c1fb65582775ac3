"""Label-based probes of embedding quality: kNN accuracy (the paper's protocol) and a linear probe.

Everything runs in torch on the device the tensors live on, so probing every layer of a model on
a GPU needs no round trip through numpy.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_accuracy

from lightning_app.errors import ConfigError

METRICS = ("euclidean", "cosine")
# The paper's protocol: 10 neighbours, a seeded 10% stratified test split.
K = 10
TEST_FRACTION = 0.1
SEED = 42
FOLDS = 10  # cross-validated accuracy: every document is a test document once


def stratified_split(
    labels: torch.Tensor, test_fraction: float = TEST_FRACTION, seed: int = SEED
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified train/test split; returns sorted ``(train_idx, test_idx)`` on ``labels.device``.

    A class with ``c`` examples sends ``round(test_fraction * c)`` (half rounded up) of them, chosen
    uniformly at random, to the test split, clipped to ``[1, c - 1]`` so that a class with at least
    two examples appears in both splits; a single-example class goes to the train split. Classes are
    visited in ascending label order with one ``torch.Generator`` seeded by ``seed``, so the split
    depends only on ``labels`` and ``seed``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    cpu_labels = labels.detach().cpu()
    generator = torch.Generator().manual_seed(seed)
    train_parts, test_parts = [], []
    for cls in torch.unique(cpu_labels):
        members = torch.nonzero(cpu_labels == cls).flatten()
        count = members.numel()
        n_test = 0 if count < 2 else min(max(math.floor(test_fraction * count + 0.5), 1), count - 1)
        shuffled = members[torch.randperm(count, generator=generator)]
        test_parts.append(shuffled[:n_test])
        train_parts.append(shuffled[n_test:])
    train_idx = torch.sort(torch.cat(train_parts)).values
    test_idx = torch.sort(torch.cat(test_parts)).values
    return train_idx.to(labels.device), test_idx.to(labels.device)


def _distances(queries: torch.Tensor, train_x: torch.Tensor, metric: str) -> torch.Tensor:
    """Rank-equivalent distances: squared euclidean (``|q|^2 - 2 q.x + |x|^2``) or ``1 - cos(q, x)``."""
    if metric == "cosine":
        return 1.0 - F.normalize(queries, dim=1) @ F.normalize(train_x, dim=1).T
    squared = (queries * queries).sum(1, keepdim=True) - 2.0 * queries @ train_x.T
    return (squared + (train_x * train_x).sum(1)).clamp_min_(0.0)


@torch.no_grad()
def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, k: int = K,
                metric: str = "euclidean", chunk_size: int = 1024) -> torch.Tensor:
    """Majority vote of the ``k`` nearest training points for each test row (uniform weights).

    Tie rules, compared with ``sklearn.neighbors.KNeighborsClassifier(n_neighbors=k)``:

    * vote ties: the smallest class label among the classes with the most votes wins, exactly as
      sklearn (``argmax`` over its sorted ``classes_``), whichever neighbour is nearest.
    * distance ties at the ``k``-th neighbour: the neighbours are the first ``k`` training points in
      the order (distance, training index), i.e. the lower training indices are kept. sklearn leaves
      this case undefined: its brute-force heap and its KD/ball trees keep whichever tied point
      their traversal leaves in the heap (in sklearn 1.9 often not the lowest index), so
      predictions agree with sklearn whenever the ``k``-th and ``k+1``-th nearest distances
      differ, and may differ only when they are equal (up to floating-point rounding).

    Distances (squared euclidean, or ``1 - cosine similarity`` for ``metric="cosine"``) are computed
    for ``chunk_size`` test rows at a time, so memory is ``O(chunk_size * len(train_x))``.
    """
    if metric not in METRICS:
        raise ConfigError(f"kNN metric must be one of {METRICS}, got {metric!r}")
    if not 1 <= k <= len(train_x):
        raise ConfigError(f"kNN needs 1 <= k <= number of training examples, got k={k} with {len(train_x)}")
    classes, codes = torch.unique(train_y, return_inverse=True)
    votes_per_point = F.one_hot(codes, len(classes)).to(train_x.dtype)
    predictions = []
    for queries in torch.split(test_x, chunk_size):
        dist = _distances(queries, train_x, metric)
        kth = dist.topk(k, dim=1, largest=False).values[:, -1:]
        closer = dist < kth
        at_kth = dist == kth
        free_slots = k - closer.sum(1, keepdim=True)
        chosen = closer | (at_kth & (at_kth.cumsum(1, dtype=torch.int32) <= free_slots))
        votes = chosen.to(train_x.dtype) @ votes_per_point
        predictions.append(classes[votes.argmax(1)])  # argmax returns the first (smallest) class on ties
    return torch.cat(predictions)


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 k: int = K, metric: str = "euclidean", chunk_size: int = 1024) -> float:
    """Fraction of test rows whose kNN prediction (see ``knn_predict`` for the tie rule) equals ``test_y``."""
    predictions = knn_predict(train_x, train_y, test_x, k=k, metric=metric, chunk_size=chunk_size)
    return (predictions == test_y).sum().item() / len(test_y)


def split_accuracy(points, labels: list, k: int = K, test_fraction: float = TEST_FRACTION, seed: int = SEED) -> float:
    """kNN accuracy (Euclidean) of any (N, D) points and labels: a seeded stratified test split
    (``stratified_split``; a class of one example stays in training) predicted from the rest."""
    _, codes = np.unique(np.asarray([str(label) for label in labels]), return_inverse=True)
    codes, points = torch.as_tensor(codes), torch.as_tensor(np.asarray(points, dtype=np.float32))
    train_idx, test_idx = stratified_split(codes, test_fraction, seed)
    if len(test_idx) == 0:
        raise ConfigError("kNN accuracy needs a class with at least 2 examples (one to test)")
    return knn_accuracy(points[train_idx], codes[train_idx], points[test_idx], codes[test_idx], min(k, len(train_idx)))


def _check_layers(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    if embeddings.dim() != 3 or labels.shape != (embeddings.shape[1],):
        raise ConfigError(
            f"expected embeddings (L, N, H) and labels (N,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
        )


def _layer_accuracy(embeddings: torch.Tensor, labels: torch.Tensor, test_sets: list[torch.Tensor], k: int,
                    metric: str) -> torch.Tensor:
    """Per-layer share of the rows of ``test_sets`` whose kNN prediction, from every row outside
    their own test set, is right: (L,) float64 on the CPU."""
    correct = torch.zeros(embeddings.shape[0], dtype=torch.float64)
    tested = 0
    for test_idx in test_sets:
        keep = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
        keep[test_idx] = False
        train_idx = torch.nonzero(keep).flatten()
        for layer, values in enumerate(embeddings):
            predictions = knn_predict(values[train_idx], labels[train_idx], values[test_idx], k=k, metric=metric)
            correct[layer] += (predictions == labels[test_idx]).sum().item()
        tested += len(test_idx)
    return correct / tested


def layer_knn_accuracy(embeddings: torch.Tensor, labels: torch.Tensor, k: int = K, test_fraction: float = TEST_FRACTION,
                       seed: int = SEED, metric: str = "euclidean") -> torch.Tensor:
    """kNN accuracy of each layer of ``embeddings`` (L, N, H), all layers sharing one stratified split.

    Returns a float64 tensor of shape (L,) on the CPU. Raises ``ConfigError`` if ``labels`` does not
    match ``embeddings``, if a class has fewer than two examples (it cannot be in both splits), or
    if the train split has fewer than ``k`` examples.
    """
    _check_layers(embeddings, labels)
    classes, counts = torch.unique(labels, return_counts=True)
    if (counts < 2).any():
        small = classes[counts < 2].tolist()
        raise ConfigError(f"kNN probe needs at least 2 examples per class to split, classes {small} have 1")
    train_idx, test_idx = stratified_split(labels, test_fraction=test_fraction, seed=seed)
    if len(train_idx) < k:
        raise ConfigError(f"kNN probe needs at least k={k} training examples, the split has {len(train_idx)}")
    return _layer_accuracy(embeddings, labels, [test_idx], k, metric)


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-4,
) -> float:
    """Test accuracy of a multinomial logistic regression fitted on ``(train_x, train_y)``.

    Features are standardised with train-split statistics; the model minimises
    ``mean cross-entropy + weight_decay / 2 * ||W||^2`` (bias not penalised) with full-batch L-BFGS
    (``epochs`` iterations, strong-Wolfe line search, step ``lr``) from zero weights, so the fit is
    deterministic. Test labels never seen in training count as errors. Accuracy is torchmetrics'
    micro-averaged ``multiclass_accuracy``.
    """
    classes, train_codes = torch.unique(train_y, return_inverse=True)
    # Fit with autograd on even when called from a no_grad/inference_mode block (e.g. a Lightning
    # validation hook); cloning there turns inference tensors into ordinary ones.
    with torch.inference_mode(False), torch.enable_grad():
        train_x, test_x, train_codes = train_x.detach().clone(), test_x.detach().clone(), train_codes.clone()
        mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-8)
        train_z, test_z = (train_x - mean) / std, (test_x - mean) / std
        weight = train_x.new_zeros(train_x.shape[1], len(classes), requires_grad=True)
        bias = train_x.new_zeros(len(classes), requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=lr, max_iter=epochs, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(train_z @ weight + bias, train_codes) + 0.5 * weight_decay * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        predictions = (test_z @ weight + bias).argmax(1)
    # Unseen test labels get the extra code len(classes), which no prediction can match.
    position = torch.searchsorted(classes, test_y).clamp_max(len(classes) - 1)
    test_codes = torch.where(classes[position] == test_y, position, len(classes))
    return multiclass_accuracy(predictions, test_codes, num_classes=len(classes) + 1, average="micro").item()


def stratified_folds(labels: torch.Tensor, folds: int = FOLDS, seed: int = SEED) -> list[torch.Tensor]:
    """``folds`` disjoint test index sets covering every example, each class dealt round-robin over
    the folds after a seeded shuffle (like sklearn's ``StratifiedKFold(shuffle=True)``), so every
    fold holds about ``1 / folds`` of each class. Sorted indices on ``labels.device``."""
    if folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {folds}")
    cpu_labels = labels.detach().cpu()
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in range(folds)]
    offset = 0
    for cls in torch.unique(cpu_labels):
        members = torch.nonzero(cpu_labels == cls).flatten()
        shuffled = members[torch.randperm(members.numel(), generator=generator)]
        for position in range(folds):  # continue where the last class stopped, balancing fold sizes
            parts[(offset + position) % folds].append(shuffled[position::folds])
        offset += members.numel()
    return [torch.sort(torch.cat(part)).values.to(labels.device) for part in parts]


def layer_knn_cv_accuracy(embeddings: torch.Tensor, labels: torch.Tensor, k: int = K, folds: int = FOLDS, seed: int = SEED,
                          metric: str = "euclidean") -> torch.Tensor:
    """Cross-validated kNN accuracy of each layer of ``embeddings`` (L, N, H): every example is
    predicted once, from the other folds (``stratified_folds``), so the score uses all N test
    predictions instead of one 10% split and is far less noisy on small corpora. (L,) float64."""
    _check_layers(embeddings, labels)
    return _layer_accuracy(embeddings, labels, stratified_folds(labels, folds, seed), k, metric)
