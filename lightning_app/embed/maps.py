"""2D maps of embeddings: openTSNE (PCA initialisation, its defaults for large data) or UMAP, drawn
as a PNG and an offline HTML page, with kNN accuracy of the labels in 2D and in the full space.

The map's kNN accuracy next to the full space's says how much of the class structure the 2D layout
keeps (González-Márquez et al. 2025 report both).
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_app.embed.shards import shard_files
from lightning_app.errors import ConfigError

KNN_K = 10
MAX_COLOURS = 20  # classes beyond the 19 largest share one grey "other"
SNIPPET = 200  # characters of text shown on hover


def require_umap():
    try:
        import umap
    except ImportError:
        raise ConfigError("map: umap needs umap-learn: pip install 'lightning-app-embeddings[umap]'") from None
    return umap


def read_embeddings(output: str | Path) -> tuple[np.ndarray, list | None, np.ndarray]:
    """(rows, labels or None, (N, D) float32 embeddings) of every shard, in row order."""
    table = pa.concat_tables([pq.read_table(f) for f in shard_files(output)])
    column = table["embedding"].combine_chunks()
    embeddings = column.values.to_numpy(zero_copy_only=False).reshape(len(table), column.type.list_size)
    labels = table["label"].to_pylist() if "label" in table.column_names else None
    return table["row"].to_numpy(), labels, embeddings.astype(np.float32, copy=False)


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


def knn_accuracy(points: np.ndarray, labels: list, k: int = KNN_K, seed: int = 42, test_fraction: float = 0.1) -> float:
    """kNN accuracy (Euclidean) of a seeded 10% test split (stratified when every class allows it)
    predicted from the other 90%."""
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier
    labels = np.asarray([str(v) for v in labels])
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 and len(counts) <= test_fraction * len(labels) else None
    x_train, x_test, y_train, y_test = train_test_split(points, labels, test_size=test_fraction,
                                                        random_state=seed, stratify=stratify)
    return float(KNeighborsClassifier(n_neighbors=min(k, len(y_train))).fit(x_train, y_train).score(x_test, y_test))


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


def map_png(path: str | Path, xy: np.ndarray, codes: np.ndarray, classes: list[str], colors: list[str],
            title: str) -> Path:
    """Points coloured by class with a legend; point size and opacity shrink with the count so a
    million points still show density (the scatter is rasterised)."""
    n = len(xy)
    size, alpha = float(np.clip(20000 / max(n, 1), 0.05, 10)), float(np.clip(5000 / max(n, 1), 0.15, 0.8))
    figure = Figure(figsize=(7, 7), dpi=110)
    axes = figure.add_subplot()
    for code, (name, color) in enumerate(zip(classes, colors)):
        mask = codes == code if len(codes) else slice(None)
        axes.scatter(xy[mask, 0], xy[mask, 1], s=size, c=color, alpha=alpha, linewidths=0, label=name,
                     rasterized=True)
    axes.set_xticks([]), axes.set_yticks([])
    axes.set_aspect("equal", adjustable="datalim")
    axes.set_title(title, fontsize=10)
    if len(classes) > 1:
        axes.legend(loc="best", fontsize=8, markerscale=max(1.0, 4 / max(size, 1e-3) ** 0.5), frameon=True)
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(str(path))
    return Path(path)


def snippets(corpus_args: dict, rows: np.ndarray, max_documents: int | None) -> list[str]:
    """The opening ``SNIPPET`` characters of the given corpus rows, streamed (nothing else kept)."""
    from lightning_app.data.sources import open_corpus
    wanted = {int(r): i for i, r in enumerate(rows)}
    texts = [""] * len(rows)
    stream = itertools.islice(open_corpus(**corpus_args), max_documents)
    for row, doc in enumerate(stream):
        if row in wanted:
            text = " ".join((doc["text"] or "")[:SNIPPET * 2].split())
            texts[wanted[row]] = text[:SNIPPET] + ("…" if len(text) > SNIPPET else "")
    return texts


def draw_map(output: str | Path, method: str, corpus_args: dict, max_documents: int | None, seed: int,
             html_points: int, threads: int = 1) -> dict:
    """map.parquet, map.png and map.html in ``output``; returns what meta.json records of the map."""
    from lightning_app.embed.html import write_html
    out = Path(output)
    rows, labels, embeddings = read_embeddings(out)
    start = time.monotonic()
    xy = layout(embeddings, method, seed, threads)
    seconds = time.monotonic() - start
    columns = {"row": pa.array(rows, pa.int64()), "x": pa.array(xy[:, 0]), "y": pa.array(xy[:, 1])}
    if labels is not None:
        columns["label"] = pa.array(labels, pa.string())
    pq.write_table(pa.table(columns), out / "map.parquet")
    record = {"method": method, "seconds": round(seconds, 1), "threads": threads, "points": len(rows), "knn_k": KNN_K}
    name = "t-SNE" if method == "tsne" else "UMAP"
    title = f"{corpus_args['source']}: {name} of {len(rows):,} embeddings"
    if labels is not None:
        record["knn_acc_2d"] = round(knn_accuracy(xy, labels, seed=seed), 4)
        record["knn_acc_full"] = round(knn_accuracy(embeddings, labels, seed=seed), 4)
        title += f"\n{KNN_K}-NN accuracy: {record['knn_acc_2d']:.3f} in 2D, {record['knn_acc_full']:.3f} in full dimension"
        print(f"{KNN_K}-NN accuracy of the labels: {record['knn_acc_2d']:.3f} on the map, "
              f"{record['knn_acc_full']:.3f} in the full {embeddings.shape[1]}-dimensional space")
    codes, classes, colors = palette(labels)
    codes = codes if labels is not None else np.zeros(len(rows), dtype=int)
    map_png(out / "map.png", xy, codes, classes, colors, title)
    files = ["map.parquet", "map.png"]
    if html_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), min(html_points, len(rows)), replace=False))
        note = (f"{len(pick):,} of {len(rows):,} points" if len(pick) < len(rows) else f"{len(rows):,} points")
        note += "; hover a point for its label and opening text"
        write_html(out / "map.html", xy[pick], rows[pick], codes[pick], classes, colors,
                   snippets(corpus_args, rows[pick], max_documents), title.replace("\n", " · "), note)
        files.append("map.html")
        record["html_points"] = int(len(pick))
    print(f"{name} map of {len(rows)} points in {seconds:.1f} s: " + ", ".join(str(out / f) for f in files))
    return {**record, "files": files}
