"""Peak resident memory of streaming a 2 GB corpus against a 200 MB one through the DataModule.

Each corpus is a generated jsonl file (the packaged articles repeated, each copy numbered so that
every document is distinct) under a temporary folder, removed afterwards. Each streams the same
number of batches in its own process; the peak is the largest sum of resident memory of that
process and its dataloader workers, sampled every 20 ms.

    python benchmarks/stream_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import PeakRss, bbc_texts, emit, tree_rss  # noqa: E402


def write_corpus(path: str, size_bytes: int) -> int:
    """Numbered copies of the packaged articles until the file reaches ``size_bytes``; returns documents."""
    texts, written, count = bbc_texts(), 0, 0
    with open(path, "w") as out:
        while written < size_bytes:
            line = json.dumps({"text": f"Copy {count // len(texts)}. " + texts[count % len(texts)]}) + "\n"
            out.write(line)
            written += len(line)
            count += 1
    return count


def stream(path: str, batches: int, batch_size: int, workers: int) -> None:
    """Child: stream ``batches`` batches and print the peak resident memory of this process tree."""
    from lightning_app.data.datamodule import ContrastiveDataModule

    with PeakRss() as peak:
        dm = ContrastiveDataModule(source=path, batch_size=batch_size, num_workers=workers)
        dm.trainer = SimpleNamespace(global_rank=0, world_size=1, max_steps=10**6, accumulate_grad_batches=1)
        dm.setup("fit")
        loader = iter(dm.train_dataloader())
        for _ in range(batches):
            next(loader)
        peak.peak = max(peak.peak, tree_rss(peak.process))  # workers are still alive here
    print(json.dumps({"peak_rss": peak.peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sizes-mb", default="200,2000")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        stream(args.child, args.batches, args.batch_size, args.workers)
        return
    folder = tempfile.mkdtemp(prefix="stream-memory-")
    peaks = {}
    try:
        for size in map(int, args.sizes_mb.split(",")):
            path = os.path.join(folder, f"corpus-{size}mb.jsonl")
            documents = write_corpus(path, size * 10**6)
            out = subprocess.run([sys.executable, __file__, "--child", path, "--batches", str(args.batches),
                                  "--batch-size", str(args.batch_size), "--workers", str(args.workers)],
                                 check=True, capture_output=True, text=True).stdout
            peaks[size] = json.loads(out.strip().splitlines()[-1])["peak_rss"]
            os.remove(path)
            print(f"{size} MB corpus ({documents} documents): {args.batches} batches of {args.batch_size} pairs, "
                  f"{args.workers} worker(s), peak RSS {peaks[size] / 2**20:.0f} MiB "
                  f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        shutil.rmtree(folder)
    small, large = sorted(peaks)
    emit("stream_peak_rss_large_vs_small", small_mb=small, large_mb=large,
         small_peak_mib=round(peaks[small] / 2**20), large_peak_mib=round(peaks[large] / 2**20),
         ratio=round(peaks[large] / peaks[small], 3))


if __name__ == "__main__":
    main()
