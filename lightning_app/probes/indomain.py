"""Label-free signals of embedding quality on held-out documents of the user's own corpus.

Each held-out document gives two views (e.g. two sentence crops of it). The signals ask whether
view 1 finds its own view 2 among all the others (retrieval), whether the embeddings spread over
many directions (effective rank, uniformity), how close the pairs sit (alignment), and whether a
document's nearest neighbours agree with an independent lexical view of the same texts (TF-IDF).
Everything runs in torch on the embeddings' device, similarity matrices ``chunk_size`` rows at a
time, so memory is ``O(chunk_size * N)``.
"""

import torch
import torch.nn.functional as F
from sklearn.feature_extraction.text import TfidfVectorizer

from lightning_app.errors import ConfigError
from lightning_app.probes.geometry import alignment, uniformity
from lightning_app.probes.knn import K


def _check_views(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ConfigError(
            f"probe.indomain: expected two (N, H) views of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if len(a) < 2:
        raise ConfigError(f"probe.indomain: retrieval needs at least 2 held-out documents, got {len(a)}")


def _check_k(k: int, n: int) -> None:
    if not 1 <= k < n:
        raise ConfigError(f"probe.indomain: neighbours need 1 <= k < N (documents), got k={k} with N={n}")


def _check_neighbours(lexical_neighbours: torch.Tensor, n: int, k: int) -> None:
    _check_k(k, n)
    if lexical_neighbours.dim() != 2 or len(lexical_neighbours) != n or lexical_neighbours.shape[1] < k:
        raise ConfigError(
            f"probe.indomain: expected lexical neighbours ({n}, >= {k}) from tfidf_neighbours, "
            f"got {tuple(lexical_neighbours.shape)}"
        )


@torch.no_grad()
def retrieval(a: torch.Tensor, b: torch.Tensor, chunk_size: int = 1024) -> tuple[float, float]:
    """Each ``a_i`` of (N, H) queries every row of ``b`` by cosine similarity: returns the top-1 accuracy
    and the mean reciprocal rank of its partner ``b_i``, ranked ``1 + #{j != i : cos(a_i, b_j) >= cos(a_i, b_i)}``.

    Ties count against the partner, so collapsed embeddings score ``1 / N``, never 1.
    """
    _check_views(a, b)
    a, b = F.normalize(a.float(), dim=1), F.normalize(b.float(), dim=1)
    hits, reciprocal_ranks = 0, 0.0
    for start in range(0, len(a), chunk_size):
        sim = a[start:start + chunk_size] @ b.T
        rows = torch.arange(len(sim), device=sim.device)
        rank = (sim >= sim[rows, start + rows][:, None]).sum(1)
        hits += (rank == 1).sum().item()
        reciprocal_ranks += rank.double().reciprocal().sum().item()
    return hits / len(a), reciprocal_ranks / len(a)


@torch.no_grad()
def effective_rank(x: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum(s) + eps`` over the
    singular values ``s`` of ``x`` (N, H); between 1 (one direction) and ``min(N, H)`` (all equally used).

    ``s`` are the square roots of the eigenvalues of the smaller Gram matrix (``x x^T`` or ``x^T x``): the
    same values, where LAPACK's SVD of a wide matrix took seconds on a busy 2-core CPU."""
    if x.dim() != 2 or len(x) < 2:
        raise ConfigError(f"probe.indomain: effective rank needs an (N, H) matrix with N >= 2, got {tuple(x.shape)}")
    x = x.double()
    s = torch.linalg.eigvalsh(x @ x.T if len(x) <= x.shape[1] else x.T @ x).clamp_min(0).sqrt()
    p = s / s.sum() + eps
    return torch.exp(-(p * p.log()).sum()).item()


def _nearest(sim: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of each row's ``k`` largest entries, ties going to the lower column index."""
    kth = sim.topk(k, dim=1).values[:, -1:]
    above = sim > kth
    at_kth = sim == kth
    return above | (at_kth & (at_kth.cumsum(1, dtype=torch.int32) <= k - above.sum(1, keepdim=True)))


def _without_self(sim: torch.Tensor, start: int) -> torch.Tensor:
    """``sim`` (rows ``start..`` against all N) with each row's similarity to itself set to -inf."""
    rows = torch.arange(len(sim), device=sim.device)
    sim[rows, start + rows] = float("-inf")
    return sim


def tfidf_neighbours(texts: list[str], k: int, chunk_size: int = 1024) -> torch.Tensor:
    """Each text's ``k`` nearest other texts, nearest first (N, k), by cosine similarity of sublinear TF-IDF
    vectors (``TfidfVectorizer(sublinear_tf=True)`` fitted on ``texts``); ties go to the lower index."""
    _check_k(k, len(texts))
    try:
        tfidf = TfidfVectorizer(sublinear_tf=True).fit_transform(texts)  # rows L2-normalised: dot = cosine
    except ValueError as error:  # e.g. "empty vocabulary; perhaps the documents only contain stop words"
        raise ConfigError(f"probe.indomain: TF-IDF of the held-out texts failed: {error}") from None
    parts = []
    for start in range(0, len(texts), chunk_size):
        sim = _without_self(torch.from_numpy((tfidf[start:start + chunk_size] @ tfidf.T).toarray()), start)
        chosen = _nearest(sim, k).nonzero()[:, 1].view(len(sim), k)  # ascending index within a row
        order = sim.gather(1, chosen).argsort(dim=1, descending=True, stable=True)
        parts.append(chosen.gather(1, order))
    return torch.cat(parts)


@torch.no_grad()
def neighbour_overlap(embeddings: torch.Tensor, lexical_neighbours: torch.Tensor, k: int = K,
                      chunk_size: int = 1024) -> float:
    """Mean ``|kNN_emb(i) & kNN_lex(i)| / k``: each document's ``k`` nearest others by cosine similarity of
    ``embeddings`` (N, H) against the first ``k`` of its ``lexical_neighbours`` (``tfidf_neighbours``).

    1 is full agreement; random embeddings give about ``k / (N - 1)``.
    """
    if embeddings.dim() != 2:
        raise ConfigError(f"probe.indomain: expected (N, H) embeddings, got {tuple(embeddings.shape)}")
    _check_neighbours(lexical_neighbours, len(embeddings), k)
    lexical = lexical_neighbours[:, :k].to(embeddings.device)
    x = F.normalize(embeddings.float(), dim=1)
    shared = 0
    for start in range(0, len(x), chunk_size):
        chosen = _nearest(_without_self(x[start:start + chunk_size] @ x.T, start), k)
        shared += chosen.gather(1, lexical[start:start + len(chosen)]).sum().item()
    return shared / (len(x) * k)


def indomain_signals(view1: torch.Tensor, view2: torch.Tensor, lexical_neighbours: torch.Tensor, k: int = K,
                     chunk_size: int = 1024) -> dict[str, float]:
    """Every signal of every layer of (L, N, H) embeddings of two views of N held-out documents, keyed
    ``<signal>/layer_NN``: retrieval of view 2 from view 1, alignment of the pairs (Wang & Isola 2020),
    and view 1's effective rank, uniformity and overlap with the lexical neighbours."""
    if view1.dim() != 3 or len(view1) == 0 or view1.shape != view2.shape:
        raise ConfigError(
            f"probe.indomain: expected two (L, N, H) views of equal shape, "
            f"got {tuple(view1.shape)} and {tuple(view2.shape)}"
        )
    _check_views(view1[0], view2[0])
    _check_neighbours(lexical_neighbours, view1.shape[1], k)
    width = max(2, len(str(len(view1) - 1)))
    signals = {}
    for layer, (a, b) in enumerate(zip(view1, view2)):
        top1, mrr = retrieval(a, b, chunk_size)
        values = {
            "retrieval_top1": top1,
            "retrieval_mrr": mrr,
            "effective_rank": effective_rank(a),
            "alignment": alignment(a, b),
            "uniformity": uniformity(a),
            "lexical_overlap": neighbour_overlap(a, lexical_neighbours, k, chunk_size),
        }
        signals.update({f"{name}/layer_{layer:0{width}d}": value for name, value in values.items()})
    return signals
