"""Resident memory of streaming a 2 GB corpus against a 200 MB one through the DataModule: the
peak, and whether it grows with the documents read.

Each corpus is a generated jsonl file (the packaged articles repeated, each copy numbered so that
every document is distinct) under a temporary folder, removed afterwards. The smaller corpus is
streamed for a full pass plus an epoch rollover (its training documents and two more shuffle
windows: the stream reopens the file and starts epoch 2); the larger one for as many documents.
Each streams in its own process with the DataModule's defaults (batch 32, 1 worker); the resident
memory of that process and its dataloader workers is sampled every 20 ms (the peak) and after
every batch (the timeline). Figures: the peak ratio large / small (target <= 1.2), and each
corpus's RSS slope over the second half of its documents, from a least-squares line of RSS
against documents read, in MB per 100k documents (target about 0: no growth).

    python benchmarks/stream_memory.py                   # 200 MB and 2 GB (writes 2.2 GB under /tmp)
    python benchmarks/stream_memory.py --sizes-mb 20,200 # a quick run
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import PeakRss, bbc_texts, emit, tree_rss  # noqa: E402
from lightning_app.data.datamodule import ContrastiveDataModule  # noqa: E402
from lightning_app.data.pairs import held_out  # noqa: E402

DEFAULTS = {name: p.default for name, p in inspect.signature(ContrastiveDataModule).parameters.items()}


def write_corpus(path: str, size_bytes: int) -> tuple[int, int]:
    """Numbered copies of the packaged articles until the file reaches ``size_bytes``; returns the
    documents written and how many of them the training stream reads (the rest are held out)."""
    texts, written, count, train = bbc_texts(), 0, 0, 0
    with open(path, "w") as out:
        while written < size_bytes:
            text = f"Copy {count // len(texts)}. " + texts[count % len(texts)]
            line = json.dumps({"text": text}) + "\n"
            out.write(line)
            written += len(line)
            count += 1
            train += not held_out(text, DEFAULTS["val_fraction"])
    return count, train


def slope_mb_per_100k(series: list[tuple[int, int]]) -> float:
    """Least-squares slope of RSS against documents read over the second half of the documents."""
    half = series[-1][0] / 2
    docs, rss = np.array([(d, r) for d, r in series if d >= half], dtype=float).T
    return float(np.polyfit(docs, rss, 1)[0] * 100_000 / 1e6)


def stream(path: str, documents: int, batch_size: int, workers: int) -> None:
    """Child: stream until ``documents`` training documents are read (pairs + documents without a
    pair); print the peak RSS of this process tree and the (documents, RSS) timeline."""
    import psutil

    process, series, read = psutil.Process(), [], 0
    with PeakRss() as peak:
        dm = ContrastiveDataModule(source=path, batch_size=batch_size, num_workers=workers)
        dm.trainer = SimpleNamespace(global_rank=0, world_size=1, max_steps=10**6, accumulate_grad_batches=1)
        dm.setup("fit")
        loader = iter(dm.train_dataloader())
        start = time.perf_counter()
        while read < documents:
            batch = next(loader)
            read += batch_size + int(batch["docs_skipped"])
            series.append((read, tree_rss(process)))
        seconds = time.perf_counter() - start
    print(json.dumps({"peak_rss": peak.peak, "series": series, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", default="200,2000", help="the two corpus sizes, small first")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--workers", type=int, default=DEFAULTS["num_workers"])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--documents", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        stream(args.child, args.documents, args.batch_size, args.workers)
        return
    sizes = [int(size) for size in args.sizes_mb.split(",")]
    folder = tempfile.mkdtemp(prefix="stream-memory-")
    results, documents = {}, None
    print(f"batch {args.batch_size}, {args.workers} worker(s), shuffle window {DEFAULTS['shuffle_buffer']} documents, "
          f"load average {open('/proc/loadavg').read().split()[0]}", flush=True)
    try:
        for size in sizes:
            path = os.path.join(folder, f"corpus-{size}mb.jsonl")
            written, train = write_corpus(path, size * 10**6)
            if documents is None:  # a full pass of the smaller corpus, then two windows of its epoch 2
                documents = train + 2 * DEFAULTS["shuffle_buffer"]
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", path, "--documents",
                                  str(documents), "--batch-size", str(args.batch_size), "--workers", str(args.workers)],
                                 check=True, capture_output=True, text=True).stdout
            os.remove(path)
            child = json.loads(out.strip().splitlines()[-1])
            series = child["series"]
            results[size] = {"documents_in_file": written, "training_documents_in_file": train,
                             "documents_read": series[-1][0], "peak_mib": round(child["peak_rss"] / 2**20),
                             "start_mib": round(series[0][1] / 2**20), "end_mib": round(series[-1][1] / 2**20),
                             "slope_mb_per_100k_docs": round(slope_mb_per_100k(series), 1),
                             "docs_per_s": round(series[-1][0] / child["seconds"])}
            r = results[size]
            print(f"{size} MB corpus ({written} documents, {train} for training): read {r['documents_read']} in "
                  f"{child['seconds']:.0f} s; RSS {r['start_mib']} MiB after the first batch, {r['end_mib']} MiB "
                  f"at the end, peak {r['peak_mib']} MiB; slope over the second half "
                  f"{r['slope_mb_per_100k_docs']} MB per 100k documents "
                  f"(load average {open('/proc/loadavg').read().split()[0]})", flush=True)
    finally:
        shutil.rmtree(folder)
    small, large = sizes
    emit("stream_peak_rss_large_vs_small", ratio=round(results[large]["peak_mib"] / results[small]["peak_mib"], 3),
         baseline=f"the {small} MB corpus, same documents read", small_mb=small, large_mb=large,
         documents_read=documents, batch_size=args.batch_size, workers=args.workers,
         max_slope_mb_per_100k_docs=max(r["slope_mb_per_100k_docs"] for r in results.values()),
         corpora={str(size): r for size, r in results.items()})


if __name__ == "__main__":
    main()
