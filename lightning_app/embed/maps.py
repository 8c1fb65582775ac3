"""2D maps of embeddings: openTSNE (PCA initialisation, its defaults for large data) or UMAP, drawn
as a PNG and an offline HTML page, with kNN accuracy of the labels in 2D and in the full space.

The map's kNN accuracy next to the full space's says how much of the class structure the 2D layout
keeps (González-Márquez et al. 2025 report both).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_app.embed.shards import shard_files
from lightning_app.probes.knn import K, split_accuracy
from lightning_app.probes.plots import layout, palette

SNIPPET = 200  # characters of text shown on hover


def read_embeddings(output: str | Path) -> tuple[np.ndarray, list | None, np.ndarray]:
    """(rows, labels or None, (N, D) float32 embeddings) of every shard, in row order."""
    table = pa.concat_tables([pq.read_table(f) for f in shard_files(output)])
    column = table["embedding"].combine_chunks()
    embeddings = column.values.to_numpy(zero_copy_only=False).reshape(len(table), column.type.list_size)
    labels = table["label"].to_pylist() if "label" in table.column_names else None
    return table["row"].to_numpy(), labels, embeddings.astype(np.float32, copy=False)


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
    record = {"method": method, "seconds": round(seconds, 1), "threads": threads, "points": len(rows), "knn_k": K}
    name = "t-SNE" if method == "tsne" else "UMAP"
    title = f"{corpus_args['source']}: {name} of {len(rows):,} embeddings"
    if labels is not None:
        record["knn_acc_2d"] = round(split_accuracy(xy, labels, seed=seed), 4)
        record["knn_acc_full"] = round(split_accuracy(embeddings, labels, seed=seed), 4)
        title += f"\n{K}-NN accuracy: {record['knn_acc_2d']:.3f} in 2D, {record['knn_acc_full']:.3f} in full dimension"
        print(f"{K}-NN accuracy of the labels: {record['knn_acc_2d']:.3f} on the map, "
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
