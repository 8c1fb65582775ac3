"""Pairs/s that the DataModule delivers against pairs/s that training consumes.

The DataModule streams the packaged corpus from several jsonl shards with its workers (views and
tokenization run there, then length bucketing and collation), timed in steady state after the
first batch. Training consumption is our Lightning step on the DataModule's own first batches,
measured in the same process (see train_throughput.py).

    python benchmarks/data_throughput.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit, write_jsonl_shards  # noqa: E402
from benchmarks.train_throughput import time_ours  # noqa: E402
from lightning_app.data.datamodule import ContrastiveDataModule  # noqa: E402
from lightning_app.data.views import SentenceCrops, TokenCrops  # noqa: E402
from lightning_app.packaged import resolve_model  # noqa: E402


def delivered(source: str, view, args) -> tuple[float, list[dict]]:
    """Pairs/s of the training dataloader after its first batch, and its first batches."""
    dm = ContrastiveDataModule(source=source, view=view, batch_size=args.batch_size, num_workers=args.workers,
                               max_length=args.max_length)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1, max_steps=10**6, accumulate_grad_batches=1)
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    first = [next(loader)]
    start = time.perf_counter()
    for _ in range(args.batches):
        first.append(next(loader))
    return args.batches * args.batch_size / (time.perf_counter() - start), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40, help="timed batches of the dataloader")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="data-throughput-")
    print(f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {args.workers} workers, "
          f"load average {os.getloadavg()[0]:.2f}")
    results = {}
    try:
        source = write_jsonl_shards(folder, args.shards, repeat=2)
        for name, view in {"crops": SentenceCrops(), "token_crops": TokenCrops()}.items():
            data, training = [], []
            for _ in range(args.repeats):
                rate, batches = delivered(source, view, args)
                data.append(rate)
                times = time_ours(resolve_model("packaged:minilm"), batches[:1 + args.steps], "cpu", warmup=1)
                training.append(args.batch_size * len(times) / sum(times))
            results[name] = {"data_pairs_per_s": round(statistics.median(data), 1),
                             "train_pairs_per_s": round(statistics.median(training), 2),
                             "ratio": round(statistics.median(data) / statistics.median(training), 1)}
            print(f"{name}: DataModule {results[name]['data_pairs_per_s']} pairs/s, training "
                  f"{results[name]['train_pairs_per_s']} pairs/s, ratio {results[name]['ratio']}x "
                  f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        shutil.rmtree(folder)
    worst = min(results, key=lambda n: results[n]["ratio"])
    emit("data_pairs_per_s_vs_training", ratio=results[worst]["ratio"], view=worst, views=results)


if __name__ == "__main__":
    main()
