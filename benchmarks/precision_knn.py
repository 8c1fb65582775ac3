"""What ``--precision auto`` costs a user: 10-fold kNN accuracy (k=10) of bf16 against float32
embeddings from ``lightning embed``, per model and corpus, with the smallest cosine between the two.

Each model embeds each corpus twice, with ``--precision 32`` and with ``--precision bf16-mixed``
(what auto picks where bf16 is native), at the same max length and batch size; the accuracy is
``layer_knn_cv_accuracy`` over the labels (every document predicted once from the other 9 folds).

    python benchmarks/precision_knn.py --models packaged:minilm,runs/crop/version_0/export
    # last line: JSON; every (model, corpus) within 0.2 points is "within": true
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit  # noqa: E402

POINTS = 0.2  # the largest accuracy difference, in points (x 100), that costs a user nothing


def embed(model: str, corpus: str, output: str, precision: str, args) -> float:
    """``lightning embed`` of the corpus with its labels; seconds taken."""
    from lightning_app.cli import main
    start = time.perf_counter()
    main(["embed", f"--model={model}", f"--source={corpus}", f"--output={output}", "--label_field=label",
          f"--max_length={args.max_length}", f"--batch_size={args.batch_size}", "--accelerator=cpu", "--devices=1",
          f"--precision={precision}", *([f"--max_documents={args.documents}"] if args.documents else [])])
    return time.perf_counter() - start


def knn_accuracy(embeddings: np.ndarray, labels: list) -> float:
    """10-fold cross-validated 10-NN accuracy of the labels."""
    from lightning_app.probes.knn import layer_knn_cv_accuracy
    codes = torch.as_tensor(np.unique(np.asarray(labels), return_inverse=True)[1])
    return float(layer_knn_cv_accuracy(torch.tensor(embeddings)[None], codes)[0])


def compare(model: str, corpus: str, folder: str, args) -> dict:
    """Float32 and bf16 embeddings of one corpus by one model: accuracies, difference, cosines, seconds."""
    from lightning_app.embed.maps import read_embeddings
    found, seconds = {}, {}
    for precision in ("32", "bf16-mixed"):
        output = os.path.join(folder, precision)
        seconds[precision] = round(embed(model, corpus, output, precision, args), 1)
        _, labels, found[precision] = read_embeddings(output)
        shutil.rmtree(output)
    full, half = found["32"], found["bf16-mixed"]
    cosine = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    accuracy = {p: round(knn_accuracy(x, labels), 4) for p, x in found.items()}
    difference = round(100 * (accuracy["bf16-mixed"] - accuracy["32"]), 2)
    return {"model": model, "corpus": corpus, "documents": len(labels), "knn_float32": accuracy["32"],
            "knn_bf16": accuracy["bf16-mixed"], "difference_points": difference, "within": abs(difference) <= POINTS,
            "min_cosine": round(float(cosine.min()), 6), "mean_cosine": round(float(cosine.mean()), 6),
            "seconds": seconds, "load_average": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="packaged:minilm", help="comma-separated models to compare")
    parser.add_argument("--corpora", default="packaged:bbcnews,packaged:newsarticles")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--documents", type=int, default=None, help="embed only the first this many of each corpus")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="precision-knn-")
    rows = []
    try:
        for model in args.models.split(","):
            for corpus in args.corpora.split(","):
                rows.append(compare(model, corpus, folder, args))
                row = rows[-1]
                print(f"{model} on {corpus} ({row['documents']} documents): 10-NN float32 {row['knn_float32']:.4f}, "
                      f"bf16 {row['knn_bf16']:.4f} ({row['difference_points']:+.2f} points), min cosine "
                      f"{row['min_cosine']:.6f}, seconds {row['seconds']} (load average {row['load_average']})",
                      flush=True)
    finally:
        shutil.rmtree(folder)
    emit("knn_bf16_vs_float32", threads=torch.get_num_threads(), max_length=args.max_length,
         batch_size=args.batch_size, within_all=all(r["within"] for r in rows), rows=rows)


if __name__ == "__main__":
    main()
