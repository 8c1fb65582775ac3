"""Drawing helpers shared by the probes' t-SNE figures and ``lightning embed``'s maps: a 2D layout
of embeddings and a colour per class."""

from __future__ import annotations

import os

import numpy as np

from lightning_app.errors import ConfigError

MAX_COLOURS = 20  # classes beyond the 19 largest share one grey "other"


def require_umap():
    try:
        import umap
    except ImportError:
        raise ConfigError("map: umap needs umap-learn: pip install 'lightning-app-embeddings[umap]'") from None
    return umap


def layout(embeddings: np.ndarray, method: str = "tsne", seed: int = 42, threads: int = 1) -> np.ndarray:
    """(N, 2) coordinates: openTSNE with PCA initialisation, or UMAP; seeded. ``threads`` -1 uses
    every core (worth it for large maps on an idle machine; on a busy one a single thread is faster)."""
    threads = (os.cpu_count() or 1) if threads == -1 else threads
    if method == "umap":
        return np.asarray(require_umap().UMAP(random_state=seed, n_jobs=threads).fit_transform(embeddings),
                          dtype=np.float32)
    from openTSNE import TSNE
    return np.asarray(TSNE(initialization="pca", random_state=seed, n_jobs=threads).fit(embeddings),
                      dtype=np.float32)


def palette(labels: list | None) -> tuple[np.ndarray, list[str], list[str]]:
    """(code per point, class names, hex colour per class): the largest classes first, a grey
    ``other`` beyond ``MAX_COLOURS``; one class ``all`` without labels."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex
    if labels is None:
        return np.zeros(0, dtype=int), ["all"], ["#1f77b4"]
    names, inverse, counts = np.unique(np.asarray(["" if v is None else str(v) for v in labels]),
                                       return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    keep = order[:MAX_COLOURS - 1] if len(names) > MAX_COLOURS else order
    rank = np.full(len(names), len(keep))
    rank[keep] = np.arange(len(keep))
    classes = [str(names[i]) for i in keep] + (["other"] if len(keep) < len(names) else [])
    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    colors = [to_hex(cmap(i)) for i in range(len(keep))] + (["#aaaaaa"] if len(keep) < len(names) else [])
    return rank[inverse], classes, colors
