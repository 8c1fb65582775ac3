import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from lightning_app.errors import ConfigError
from lightning_app.probes.knn import (
    knn_accuracy,
    knn_predict,
    layer_knn_accuracy,
    layer_knn_cv_accuracy,
    linear_probe_accuracy,
    stratified_folds,
    stratified_split,
)


def random_problem(seed, n_classes, n_train=300, n_test=120, dim=8, dtype=torch.float64):
    """Continuous data (no distance ties) with labels weakly tied to the features."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g, dtype=dtype)
    train_y = torch.randint(n_classes, (n_train,), generator=g)
    test_y = torch.randint(n_classes, (n_test,), generator=g)
    noise = 0.5 * dim**0.5
    train_x = centres[train_y] + noise * torch.randn(n_train, dim, generator=g, dtype=dtype)
    test_x = centres[test_y] + noise * torch.randn(n_test, dim, generator=g, dtype=dtype)
    return train_x, train_y, test_x, test_y


def sklearn_predict(train_x, train_y, test_x, **kwargs):
    model = KNeighborsClassifier(n_neighbors=10, **kwargs).fit(train_x.numpy(), train_y.numpy())
    return torch.from_numpy(model.predict(test_x.numpy()))


@pytest.mark.parametrize(("seed", "n_classes"), [(0, 2), (1, 5), (2, 17)])
@pytest.mark.parametrize("dim", [8, 40])  # sklearn uses a KD-tree below 16 features, brute force above
def test_euclidean_agrees_with_sklearn(seed, n_classes, dim):
    train_x, train_y, test_x, test_y = random_problem(seed, n_classes, dim=dim)
    expected = sklearn_predict(train_x, train_y, test_x)
    assert torch.equal(knn_predict(train_x, train_y, test_x, k=10), expected)
    expected_accuracy = (expected == test_y).double().mean().item()
    assert 0.0 < expected_accuracy < 1.0
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=10) == pytest.approx(expected_accuracy, abs=1e-12)


@pytest.mark.parametrize(("seed", "n_classes"), [(0, 3), (1, 9)])
def test_cosine_agrees_with_sklearn(seed, n_classes):
    train_x, train_y, test_x, test_y = random_problem(seed, n_classes)
    expected = sklearn_predict(train_x, train_y, test_x, metric="cosine")
    assert torch.equal(knn_predict(train_x, train_y, test_x, k=10, metric="cosine"), expected)
    # Cosine ignores norms, so it must differ from euclidean somewhere on this unnormalised data.
    assert not torch.equal(knn_predict(train_x, train_y, test_x, k=10), expected)


def test_float32_agrees_with_sklearn():
    train_x, train_y, test_x, _ = random_problem(3, 6, dtype=torch.float32)
    assert torch.equal(knn_predict(train_x, train_y, test_x, k=10), sklearn_predict(train_x, train_y, test_x))


def test_hand_computed_example():
    # 1-D points; query 0.4 has neighbours 0 (a), 1 (a), -1 (b) at distances 0.4, 0.6, 1.4.
    train_x = torch.tensor([[0.0], [1.0], [-1.0], [5.0], [6.0]])
    train_y = torch.tensor([0, 0, 1, 1, 1])
    test_x = torch.tensor([[0.4], [5.4], [3.4]])
    # k=3: query 0.4 -> {0,0,1} -> 0; 5.4 -> {1,1,0} (5, 6, 1) -> 1; 3.4 -> (5, 1, 6) -> {1,0,1} -> 1
    assert knn_predict(train_x, train_y, test_x, k=3).tolist() == [0, 1, 1]
    assert knn_accuracy(train_x, train_y, test_x, torch.tensor([0, 0, 1]), k=3) == pytest.approx(2 / 3)


def test_vote_tie_goes_to_smallest_label_like_sklearn():
    # k=2 with one vote each: the nearer neighbour has label 5, yet the smaller label 3 wins.
    train_x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    train_y = torch.tensor([5, 3, 7])
    test_x = torch.tensor([[0.1], [2.9]], dtype=torch.float64)  # second query: labels 7 (near) and 3
    predicted = knn_predict(train_x, train_y, test_x, k=2)
    assert predicted.tolist() == [3, 3]
    model = KNeighborsClassifier(n_neighbors=2).fit(train_x.numpy(), train_y.numpy())
    assert model.predict(test_x.numpy()).tolist() == predicted.tolist()


def test_distance_tie_keeps_lower_training_index():
    # Query 0: index 0 at distance 0, then indices 1 and 2 tie at distance 1 for the second slot.
    query = torch.tensor([[0.0]])
    train_x = torch.tensor([[0.0], [-1.0], [1.0]])
    # Index 1 (label 0) is kept: votes {0: 1, 1: 1} -> vote tie -> label 0.
    assert knn_predict(train_x, torch.tensor([1, 0, 1]), query, k=2).tolist() == [0]
    # Swap the tied points' labels: index 1 (label 1) is kept -> two votes for label 1.
    assert knn_predict(train_x, torch.tensor([1, 1, 0]), query, k=2).tolist() == [1]
    # Many exact duplicates: only the first k of them count.
    dupes = torch.zeros(6, 1)
    assert knn_predict(dupes, torch.tensor([2, 2, 2, 0, 0, 0]), query, k=3).tolist() == [2]
    assert knn_predict(dupes, torch.tensor([0, 2, 2, 2, 0, 0]), query, k=3).tolist() == [2]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_chunk_size_does_not_change_predictions(metric):
    train_x, train_y, test_x, _ = random_problem(4, 5, n_test=257)
    reference = knn_predict(train_x, train_y, test_x, k=10, metric=metric, chunk_size=10_000)
    for chunk_size in (1, 7, 64, 256):
        assert torch.equal(knn_predict(train_x, train_y, test_x, k=10, metric=metric, chunk_size=chunk_size), reference)


def test_knn_rejects_bad_arguments():
    train_x, train_y, test_x, test_y = random_problem(0, 2, n_train=5)
    with pytest.raises(ConfigError, match="k=10 with 5"):
        knn_accuracy(train_x, train_y, test_x, test_y, k=10)
    with pytest.raises(ConfigError, match="metric"):
        knn_accuracy(train_x, train_y, test_x, test_y, k=3, metric="manhattan")


def test_stratified_split_proportions():
    counts = {0: 100, 1: 25, 2: 15, 3: 2, 4: 1}
    labels = torch.cat([torch.full((n,), c) for c, n in counts.items()])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    train_idx, test_idx = stratified_split(labels, test_fraction=0.1, seed=0)
    assert torch.equal(torch.sort(torch.cat([train_idx, test_idx])).values, torch.arange(len(labels)))
    test_counts = {c: int((labels[test_idx] == c).sum()) for c in counts}
    # round(0.1 * n) with halves rounded up, at least 1 for classes of 2+, none for a singleton.
    assert test_counts == {0: 10, 1: 3, 2: 2, 3: 1, 4: 0}
    assert torch.equal(train_idx, torch.sort(train_idx).values)


def test_stratified_split_keeps_a_train_example_per_class():
    labels = torch.tensor([0, 0, 1, 1, 1])
    train_idx, test_idx = stratified_split(labels, test_fraction=0.9)
    assert sorted(labels[train_idx].tolist()) == [0, 1]
    assert len(test_idx) == 3


def test_stratified_split_is_deterministic_per_seed():
    labels = torch.randint(4, (500,), generator=torch.Generator().manual_seed(1))
    first = stratified_split(labels, seed=7)
    again = stratified_split(labels, seed=7)
    other = stratified_split(labels, seed=8)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def test_stratified_split_rejects_bad_fraction():
    with pytest.raises(ConfigError, match="test_fraction"):
        stratified_split(torch.tensor([0, 0, 1, 1]), test_fraction=1.0)


def test_layer_knn_accuracy_matches_per_layer_sklearn():
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(4, (400,), generator=g)
    noise_levels = torch.tensor([0.1, 1.0, 10.0])  # layer 0 easy, layer 2 near chance
    centres = torch.randn(4, 20, generator=g, dtype=torch.float64)
    embeddings = centres[labels] + noise_levels[:, None, None] * torch.randn(3, 400, 20, generator=g, dtype=torch.float64)
    accuracies = layer_knn_accuracy(embeddings, labels, k=10, test_fraction=0.25, seed=3)
    assert accuracies.shape == (3,) and accuracies.dtype == torch.float64
    train_idx, test_idx = stratified_split(labels, test_fraction=0.25, seed=3)
    for layer, accuracy in zip(embeddings, accuracies):
        predicted = sklearn_predict(layer[train_idx], labels[train_idx], layer[test_idx])
        assert accuracy.item() == pytest.approx((predicted == labels[test_idx]).double().mean().item(), abs=1e-12)
    assert accuracies[0] > 0.95 and accuracies[2] < 0.5


def test_layer_knn_accuracy_errors_for_too_small_sets():
    embeddings = torch.randn(2, 12, 4)
    with pytest.raises(ConfigError, match=r"at least k=11 training examples, the split has 10"):
        layer_knn_accuracy(embeddings, torch.tensor([0] * 6 + [1] * 6), k=11)
    with pytest.raises(ConfigError, match=r"at least 2 examples per class.*\[2\]"):
        layer_knn_accuracy(embeddings, torch.tensor([0] * 6 + [1] * 5 + [2]), k=3)
    with pytest.raises(ConfigError, match=r"labels \(N,\)"):
        layer_knn_accuracy(embeddings, torch.zeros(11, dtype=torch.long), k=3)


def test_linear_probe_separable_data_is_near_perfect():
    g = torch.Generator().manual_seed(0)
    centres = 6.0 * torch.randn(5, 16, generator=g)
    train_y, test_y = torch.randint(5, (400,), generator=g), torch.randint(5, (200,), generator=g)
    train_x = centres[train_y] + torch.randn(400, 16, generator=g)
    test_x = centres[test_y] + torch.randn(200, 16, generator=g)
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y) >= 0.99


def test_linear_probe_random_labels_is_near_chance():
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(600, 16, generator=g), torch.randn(2000, 16, generator=g)
    train_y, test_y = torch.randint(4, (600,), generator=g), torch.randint(4, (2000,), generator=g)
    assert linear_probe_accuracy(train_x, train_y, test_x, test_y) == pytest.approx(0.25, abs=0.05)


def test_linear_probe_is_deterministic_under_inference_mode_and_counts_unseen_labels_wrong():
    g = torch.Generator().manual_seed(1)
    centres = 6.0 * torch.randn(2, 8, generator=g)
    train_y = torch.randint(2, (100,), generator=g)
    train_x = centres[train_y] + torch.randn(100, 8, generator=g)
    test_x = torch.cat([centres, centres[:1]])
    test_y = torch.tensor([0, 1, 9])  # label 9 never appears in training
    accuracy = linear_probe_accuracy(train_x, train_y, test_x, test_y)
    assert accuracy == pytest.approx(2 / 3)
    with torch.inference_mode():  # as in a Lightning validation hook; must give the same fit
        assert linear_probe_accuracy(train_x, train_y, test_x, test_y) == accuracy


@pytest.mark.parametrize(("seed", "counts"), [(0, [13, 7, 25]), (1, [50, 50]), (2, [3, 11, 2, 40])])
def test_stratified_folds_partition_every_example_and_balance_each_class(seed, counts):
    labels = torch.cat([torch.full((count,), cls) for cls, count in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    folds = stratified_folds(labels, folds=10, seed=seed)
    assert len(folds) == 10
    assert sorted(torch.cat(folds).tolist()) == list(range(len(labels)))
    per_fold = torch.stack([torch.bincount(labels[fold], minlength=len(counts)) for fold in folds])
    assert (per_fold.max(0).values - per_fold.min(0).values).max() <= 1  # each class spread evenly
    sizes = torch.tensor([len(fold) for fold in folds])
    assert sizes.max() - sizes.min() <= 1
    assert [f.tolist() for f in stratified_folds(labels, 10, seed)] == [f.tolist() for f in folds]


def test_cv_accuracy_equals_sklearn_on_the_same_folds():
    train_x, train_y, test_x, test_y = random_problem(3, 4, n_train=200, n_test=1)
    layers = torch.stack([train_x, train_x * 0.5 + torch.randn_like(train_x)])
    accuracies = layer_knn_cv_accuracy(layers, train_y, k=10, folds=5, seed=7)
    for layer, accuracy in zip(layers, accuracies):
        correct = 0
        for fold in stratified_folds(train_y, 5, 7):
            rest = torch.ones(len(train_y), dtype=torch.bool)
            rest[fold] = False
            correct += (sklearn_predict(layer[rest], train_y[rest], layer[fold]) == train_y[fold]).sum().item()
        assert accuracy.item() == pytest.approx(correct / len(train_y))
    assert accuracies[0] > accuracies[1] > 0


def test_cv_rejects_one_fold():
    with pytest.raises(ConfigError, match="at least 2 folds"):
        stratified_folds(torch.tensor([0, 1, 0, 1]), folds=1)
