"""Peak memory of one training step: a plain batch against a GradCache batch 16 times larger.

Each configuration runs one Lightning step in its own process; the figure is the peak resident
memory during the step above the memory held before it (model, optimizer, data), i.e. what the
step's activations need. On CUDA it is ``torch.cuda.max_memory_allocated`` instead.

    python benchmarks/cached_memory.py                      # plain 64 vs cached 1024 (chunks of 128 rows)
    python benchmarks/cached_memory.py --device cuda --model DIR   # on a GPU, another model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import lightning as L
import psutil
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import PeakRss, emit, text_pairs  # noqa: E402
from lightning_app.data.collate import PairCollator  # noqa: E402
from lightning_app.data.views import SentenceCrops  # noqa: E402
from lightning_app.packaged import load_tokenizer  # noqa: E402
from lightning_app.model.module import ContrastiveModule  # noqa: E402


def step_memory(pairs: int, chunk: int | None, max_length: int, device: str, model: str) -> int:
    """Bytes that one training step of ``pairs`` pairs needs beyond what is held before it."""
    tokenizer = load_tokenizer(model)
    tokenize = lambda t: tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
    rows = [{"a": tokenize(a), "b": tokenize(b), "skipped": 0} for a, b in text_pairs(SentenceCrops(), pairs)]
    batch = PairCollator(tokenizer, max_length)(rows)
    module = ContrastiveModule(model, cache_chunk_size=chunk)
    trainer = L.Trainer(accelerator=device, devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    if device == "cuda":
        trainer.fit(module, DataLoader([batch], batch_size=None))
        return torch.cuda.max_memory_allocated()
    before = psutil.Process().memory_info().rss
    with PeakRss() as peak:
        trainer.fit(module, DataLoader([batch], batch_size=None))
    return peak.peak - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain", type=int, default=64, help="pairs of the plain batch")
    parser.add_argument("--cached", type=int, default=1024, help="pairs of the cached batch")
    parser.add_argument("--chunk", type=int, default=128, help="rows (views) per GradCache chunk")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="packaged:minilm", help="model folder, hub id or packaged:minilm")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        pairs, chunk = json.loads(args.child)
        print(json.dumps({"bytes": step_memory(pairs, chunk, args.max_length, args.device, args.model)}))
        return
    figures = {}
    for name, pairs, chunk in [("plain", args.plain, None), ("cached", args.cached, args.chunk)]:
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps([pairs, chunk]), "--max-length",
                              str(args.max_length), "--device", args.device, "--model", args.model],
                             check=True, capture_output=True, text=True).stdout
        figures[name] = json.loads(out.strip().splitlines()[-1])["bytes"] / 2**20
        print(f"{name}: {pairs} pairs{f', chunks of {chunk} rows' if chunk else ''}: step needs "
              f"{figures[name]:.0f} MiB (load average {os.getloadavg()[0]:.2f})", flush=True)
    emit("cached_step_memory_vs_plain", plain_pairs=args.plain, cached_pairs=args.cached,
         plain_mib=round(figures["plain"]), cached_mib=round(figures["cached"]),
         ratio=round(figures["cached"] / figures["plain"], 3))


if __name__ == "__main__":
    main()
