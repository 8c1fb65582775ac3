import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from lightning_app.errors import ConfigError
from lightning_app.probes.interval import knn_cv_correct, labels_for_width, paired_interval, verdict
from lightning_app.probes.knn import layer_knn_cv_accuracy, stratified_folds


def labelled_layers(seed, layers=3, n=120, dim=6, n_classes=4):
    """Continuous (tie-free) embeddings whose labels are weakly tied to the features."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(n_classes, (n,), generator=g)
    centres = torch.randn(n_classes, dim, generator=g, dtype=torch.float64)
    return centres[labels] + 1.2 * torch.randn(layers, n, dim, generator=g, dtype=torch.float64), labels


def paired_draws(probabilities, draws, documents, seed):
    """Per-document outcomes of two checkpoints: each document independently both right, right only
    before, right only after or both wrong, with the given probabilities (correlated correctness)."""
    outcome = np.random.default_rng(seed).choice(4, size=(draws, documents), p=probabilities)
    return (outcome == 0) | (outcome == 1), (outcome == 0) | (outcome == 2)


def coverage(probabilities, draws=1000, documents=500, seed=0):
    """Share of ``draws`` intervals that contain the true change P(after) - P(before)."""
    true_change = probabilities[2] - probabilities[1]
    before, after = paired_draws(probabilities, draws, documents, seed)
    intervals = [paired_interval(b, a) for b, a in zip(before, after)]
    return np.mean([low <= true_change <= high for _, low, high in intervals])


def test_knn_cv_correct_averages_to_the_cross_validated_accuracy():
    embeddings, labels = labelled_layers(0)
    correct = knn_cv_correct(embeddings, labels, k=5, folds=4)
    assert correct.shape == (3, 120) and correct.dtype == torch.bool
    expected = layer_knn_cv_accuracy(embeddings, labels, k=5, folds=4)
    assert torch.allclose(correct.double().mean(1), expected)
    assert torch.equal(knn_cv_correct(embeddings[1], labels, k=5, folds=4), correct[1])


def test_knn_cv_correct_matches_sklearn_document_by_document():
    embeddings, labels = labelled_layers(1, layers=1)
    x, y = embeddings[0].numpy(), labels.numpy()
    expected = np.zeros(len(y), dtype=bool)
    for test_idx in stratified_folds(labels, folds=5, seed=7):
        train = np.setdiff1d(np.arange(len(y)), test_idx.numpy())
        model = KNeighborsClassifier(n_neighbors=10).fit(x[train], y[train])
        expected[test_idx.numpy()] = model.predict(x[test_idx.numpy()]) == y[test_idx.numpy()]
    assert 0.3 < expected.mean() < 1.0
    assert knn_cv_correct(embeddings[0], labels, folds=5, seed=7).numpy().tolist() == expected.tolist()


def test_paired_interval_hand_computed():
    # 10 documents: 2 gained, 1 lost, 7 unchanged.
    before = [0, 0, 1, 1, 1, 1, 1, 0, 1, 1]
    after = [1, 1, 0, 1, 1, 1, 1, 0, 1, 1]
    g, l = 3 / 12, 2 / 12
    half = 1.959963984540054 * np.sqrt((g + l - (g - l) ** 2) / 12)
    assert paired_interval(before, after) == pytest.approx((0.1, g - l - half, g - l + half))
    assert paired_interval(torch.tensor(before).bool(), torch.tensor(after).bool())[0] == pytest.approx(0.1)


def test_paired_interval_is_clipped_to_the_possible_range():
    difference, low, high = paired_interval([0, 0], [1, 1], confidence=0.99)
    assert difference == 1.0 and high == 1.0 and -1.0 <= low < 1.0


def test_interval_covers_the_true_change_at_the_nominal_rate():
    # 500 documents, accuracy 0.80 before and 0.83 after, 11% of documents changing outcome.
    assert 0.93 <= coverage([0.76, 0.04, 0.07, 0.13]) <= 0.97


def test_interval_keeps_its_coverage_when_few_documents_change():
    # The same 0.80 -> 0.83 with every change a gain (about 15 of 500 documents): the plain Wald
    # interval on the paired differences covers about 92% here.
    assert 0.93 <= coverage([0.80, 0.0, 0.03, 0.17]) <= 0.99


def test_labels_for_width_gives_intervals_of_that_width():
    probabilities = [0.76, 0.04, 0.07, 0.13]
    documents = labels_for_width(discordance=0.11, half_width=0.02, difference=0.03)
    assert documents == int(np.ceil(1.959963984540054**2 * (0.11 - 0.03**2) / 0.02**2))
    before, after = paired_draws(probabilities, 200, documents, seed=1)
    half_widths = [(high - low) / 2 for _, low, high in map(paired_interval, before, after)]
    assert np.median(half_widths) == pytest.approx(0.02, rel=0.03)
    assert labels_for_width(0.11, half_width=0.01) == pytest.approx(4 * labels_for_width(0.11, half_width=0.02), abs=3)


@pytest.mark.parametrize(("interval", "expected"), [
    ((0.03, 0.01, 0.05), "better"),
    ((-0.03, -0.05, -0.01), "worse"),
    ((0.01, -0.01, 0.03), "no detectable change"),
    ((0.0, 0.0, 0.02), "no detectable change"),
])
def test_verdict(interval, expected):
    assert verdict(*interval) == expected


def test_verdict_follows_the_interval_of_simulated_probes():
    before, after = paired_draws([0.76, 0.04, 0.07, 0.13], 1, 2000, seed=2)
    assert verdict(*paired_interval(before[0], after[0])) == "better"
    assert verdict(*paired_interval(after[0], before[0])) == "worse"
    assert verdict(*paired_interval(before[0][:100], after[0][:100])) == "no detectable change"


@pytest.mark.parametrize(("call", "message"), [
    (lambda: paired_interval([1, 0, 1], [1, 0]),
     "paired interval: expected two non-empty 0/1 vectors over the same documents, got 3 and 2 values"),
    (lambda: paired_interval([], []),
     "paired interval: expected two non-empty 0/1 vectors over the same documents, got 0 and 0 values"),
    (lambda: paired_interval([1, 0], [0, 1], confidence=95),
     "paired interval: confidence must be in (0, 1), got 95"),
    (lambda: labels_for_width(0.02, difference=0.05),
     "labels for width: expected 0 <= |difference| <= discordance <= 1, got difference=0.05, discordance=0.02"),
    (lambda: labels_for_width(0.1, half_width=0.0), "labels for width: half_width must be positive, got 0.0"),
    (lambda: verdict(0.0, 0.1, -0.1), "verdict: expected an interval with low <= high, got [0.1, -0.1]"),
    (lambda: knn_cv_correct(torch.randn(10, 3), torch.zeros(9, dtype=torch.long)),
     "kNN probe: expected embeddings (N, H) or (L, N, H) and labels (N,), got (10, 3) and (9,)"),
])
def test_bad_input_names_the_problem(call, message):
    with pytest.raises(ConfigError) as raised:
        call()
    assert str(raised.value) == message
