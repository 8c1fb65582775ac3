import math
import random

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from lightning_app.errors import ConfigError
from lightning_app.probes.indomain import (
    effective_rank,
    indomain_signals,
    neighbour_overlap,
    retrieval,
    tfidf_neighbours,
)


def views(seed, n=60, dim=12, layers=None, noise=0.8):
    """View 2 is view 1 plus noise, so partners are near but not always nearest."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, dim) if layers is None else (layers, n, dim)
    a = torch.randn(shape, generator=g)
    return a, a + noise * torch.randn(shape, generator=g)


def brute_force_retrieval(a, b):
    """Rank of b_i among all b_j for query a_i, ties pessimistic, in float64 numpy."""
    a, b = a.double().numpy(), b.double().numpy()
    sim = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    ranks = np.array([(row >= row[i]).sum() for i, row in enumerate(sim)])
    return (ranks == 1).mean(), (1.0 / ranks).mean()


def brute_force_neighbours(x, k):
    """Each row's k most cosine-similar other rows as Python sets (ties to the lower index)."""
    x = x.double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    return [set(sorted((j for j in range(len(x)) if j != i), key=lambda j: (-sim[i, j], j))[:k]) for i in range(len(x))]


def random_texts(seed, n=40):
    """Texts drawn from three topic vocabularies plus shared words, so TF-IDF neighbours follow topics."""
    rng = random.Random(seed)
    topics = [[f"{t}word{i}" for i in range(15)] for t in "abc"]
    shared = [f"common{i}" for i in range(10)]
    return [" ".join(rng.choices(topics[i % 3], k=rng.randint(5, 20)) + rng.choices(shared, k=5)) for i in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_matches_a_brute_force_ranking(seed):
    a, b = views(seed)
    top1, mrr = retrieval(a, b, chunk_size=7)  # chunks that do not divide N
    expected_top1, expected_mrr = brute_force_retrieval(a, b)
    assert 0.0 < top1 < 1.0  # the noise makes some partners miss, so the check is not trivial
    assert top1 == pytest.approx(expected_top1, abs=1e-5)
    assert mrr == pytest.approx(expected_mrr, abs=1e-5)


def test_retrieval_known_answer_with_pessimistic_ties():
    # Orthonormal rows; b swaps the rows of two pairs, so those four queries find another document's
    # view at similarity 1 and their own partner tied with every other row at 0: rank N.
    n = 8
    a = 3.0 * torch.eye(n)
    b = torch.eye(n)[[1, 0, 3, 2, 4, 5, 6, 7]]
    top1, mrr = retrieval(a, b)
    assert top1 == pytest.approx(4 / n)
    assert mrr == pytest.approx((4 * 1.0 + 4 * (1 / n)) / n)
    assert retrieval(a, a + 0.01 * torch.ones(n, n)) == pytest.approx((1.0, 1.0))


def test_retrieval_of_collapsed_embeddings_is_the_worst_rank():
    a = torch.ones(10, 4, dtype=torch.float64)
    assert retrieval(a, a) == pytest.approx((0.0, 1 / 10))


@pytest.mark.parametrize("shape", [(50, 16), (10, 30), (200, 5)])
def test_effective_rank_equals_the_numpy_formula(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))) * torch.linspace(0.1, 3.0, shape[1])
    s = np.linalg.svd(x.double().numpy(), compute_uv=False)
    p = s / s.sum() + 1e-7
    assert effective_rank(x) == pytest.approx(math.exp(-(p * np.log(p)).sum()), abs=1e-5)


def test_effective_rank_of_known_spectra():
    assert effective_rank(torch.eye(16)) == pytest.approx(16.0, rel=1e-4)  # all directions equally used
    rank_one = torch.randn(30, 1, generator=torch.Generator().manual_seed(0)) @ torch.randn(1, 8)
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-4)


def test_tfidf_neighbours_match_brute_force_on_the_same_vectors():
    texts = random_texts(0)
    neighbours = tfidf_neighbours(texts, k=5, chunk_size=9)
    tfidf = torch.from_numpy(TfidfVectorizer(sublinear_tf=True).fit_transform(texts).toarray())
    assert neighbours.shape == (40, 5) and neighbours.dtype == torch.int64
    assert [set(row) for row in neighbours.tolist()] == brute_force_neighbours(tfidf, 5)
    sim = tfidf @ tfidf.T
    nearest_first = sim.gather(1, neighbours)
    assert (nearest_first[:, :-1] >= nearest_first[:, 1:] - 1e-12).all()  # nearest first
    assert all(i not in row for i, row in enumerate(neighbours.tolist()))
    assert (torch.arange(40)[:, None] % 3 == neighbours % 3).float().mean() > 0.9  # same topic


def test_tfidf_neighbours_break_ties_to_the_lower_index():
    texts = ["apple pie", "zebra crossing", "apple pie", "quantum field", "apple pie"]
    assert tfidf_neighbours(texts, k=2).tolist()[0] == [2, 4]  # identical texts, then the lower index
    assert tfidf_neighbours(texts, k=2).tolist()[1] == [0, 2]  # nothing shared: all tie at 0


@pytest.mark.parametrize("seed", [0, 1])
def test_neighbour_overlap_equals_a_brute_force_set_count(seed):
    texts = random_texts(seed)
    lexical = tfidf_neighbours(texts, k=8)
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(40, 6, generator=g) + 2.0 * torch.eye(3)[torch.arange(40) % 3].repeat(1, 2)
    for k in (1, 3, 8):  # the first k lexical neighbours are the k nearest
        emb_sets = brute_force_neighbours(embeddings, k)
        expected = sum(len(emb_sets[i] & set(row[:k])) for i, row in enumerate(lexical.tolist())) / (40 * k)
        assert neighbour_overlap(embeddings, lexical, k=k, chunk_size=7) == pytest.approx(expected, abs=1e-12)
    assert 0.2 < neighbour_overlap(embeddings, lexical, k=8) < 1.0


def test_neighbour_overlap_is_one_for_the_tfidf_vectors_themselves():
    texts = random_texts(3)
    tfidf = torch.from_numpy(TfidfVectorizer(sublinear_tf=True).fit_transform(texts).toarray())
    assert neighbour_overlap(tfidf, tfidf_neighbours(texts, k=4), k=4) == pytest.approx(1.0)


def test_all_layer_signals_agree_with_per_layer_calls_and_the_formulas():
    view1, view2 = views(4, n=40, dim=10, layers=3)
    lexical = tfidf_neighbours(random_texts(4), k=5)
    signals = indomain_signals(view1, view2, lexical, k=5, chunk_size=16)
    names = ["retrieval_top1", "retrieval_mrr", "effective_rank", "alignment", "uniformity", "lexical_overlap"]
    assert set(signals) == {f"{name}/layer_{layer:02d}" for name in names for layer in range(3)}
    assert all(isinstance(value, float) for value in signals.values())
    for layer in range(3):
        a, b = view1[layer], view2[layer]
        top1, mrr = retrieval(a, b)
        assert signals[f"retrieval_top1/layer_{layer:02d}"] == pytest.approx(top1)
        assert signals[f"retrieval_mrr/layer_{layer:02d}"] == pytest.approx(mrr)
        assert signals[f"effective_rank/layer_{layer:02d}"] == pytest.approx(effective_rank(a))
        assert signals[f"lexical_overlap/layer_{layer:02d}"] == pytest.approx(neighbour_overlap(a, lexical, k=5))
        na, nb = (a / a.norm(dim=1, keepdim=True)).double(), (b / b.norm(dim=1, keepdim=True)).double()
        assert signals[f"alignment/layer_{layer:02d}"] == pytest.approx(((na - nb) ** 2).sum(1).mean().item(), rel=1e-5)
        pairs = [((na[i] - na[j]) ** 2).sum().item() for i in range(40) for j in range(i + 1, 40)]
        expected_uniformity = math.log(np.mean(np.exp(-2.0 * np.array(pairs))))
        assert signals[f"uniformity/layer_{layer:02d}"] == pytest.approx(expected_uniformity, rel=1e-5)


def test_layer_keys_widen_past_99_layers():
    view1, view2 = views(5, n=6, dim=4, layers=101)
    signals = indomain_signals(view1, view2, tfidf_neighbours(random_texts(5, n=6), k=2), k=2)
    assert "retrieval_top1/layer_000" in signals and "retrieval_top1/layer_100" in signals


@pytest.mark.parametrize(("call", "message"), [
    (lambda: retrieval(torch.randn(1, 4), torch.randn(1, 4)),
     "probe.indomain: retrieval needs at least 2 held-out documents, got 1"),
    (lambda: retrieval(torch.randn(5, 4), torch.randn(6, 4)),
     "probe.indomain: expected two (N, H) views of equal shape, got (5, 4) and (6, 4)"),
    (lambda: effective_rank(torch.randn(4)),
     "probe.indomain: effective rank needs an (N, H) matrix with N >= 2, got (4,)"),
    (lambda: tfidf_neighbours(["a b", "c d", "e f"], k=3),
     "probe.indomain: neighbours need 1 <= k < N (documents), got k=3 with N=3"),
    (lambda: neighbour_overlap(torch.randn(5, 4), torch.zeros(5, 2, dtype=torch.long), k=3),
     "probe.indomain: expected lexical neighbours (5, >= 3) from tfidf_neighbours, got (5, 2)"),
    (lambda: neighbour_overlap(torch.randn(5, 4), torch.zeros(6, 3, dtype=torch.long), k=3),
     "probe.indomain: expected lexical neighbours (5, >= 3) from tfidf_neighbours, got (6, 3)"),
    (lambda: indomain_signals(torch.randn(2, 5, 4), torch.randn(3, 5, 4), torch.zeros(5, 2, dtype=torch.long), k=2),
     "probe.indomain: expected two (L, N, H) views of equal shape, got (2, 5, 4) and (3, 5, 4)"),
    (lambda: indomain_signals(torch.randn(2, 1, 4), torch.randn(2, 1, 4), torch.zeros(1, 1, dtype=torch.long), k=1),
     "probe.indomain: retrieval needs at least 2 held-out documents, got 1"),
    (lambda: indomain_signals(torch.randn(2, 5, 4), torch.randn(2, 5, 4), torch.zeros(5, 5, dtype=torch.long), k=5),
     "probe.indomain: neighbours need 1 <= k < N (documents), got k=5 with N=5"),
])
def test_bad_input_names_the_problem(call, message):
    with pytest.raises(ConfigError) as raised:
        call()
    assert str(raised.value) == message


def test_texts_without_words_are_a_config_error():
    with pytest.raises(ConfigError, match="probe.indomain: TF-IDF of the held-out texts failed: empty vocabulary"):
        tfidf_neighbours(["!", "?", "a"], k=1)
