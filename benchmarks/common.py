"""Shared pieces of the benchmarks: the packaged corpus as pairs, and the JSON last line."""

from __future__ import annotations

import json
import os
import random
import threading
import time

import psutil

from lightning_app.data.sources import bbc_news
from lightning_app.data.views import View


def bbc_texts() -> list[str]:
    """Every article of the packaged BBC News corpus, in a fixed order."""
    return bbc_news()[0]


def text_pairs(view: View, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` view pairs as texts (the views' ``tokenize`` returns the text unchanged), drawn
    from a seeded shuffle of the corpus, so every system in a benchmark trains on the same pairs."""
    texts = bbc_texts()
    random.Random(seed).shuffle(texts)
    pairs = []
    for i, text in enumerate(texts):
        pair = view.pair(text, lambda t: [t], random.Random(seed * 100_003 + i))
        if pair is not None:
            pairs.append((pair[0][0], pair[1][0]))
        if len(pairs) == count:
            return pairs
    raise ValueError(f"the corpus gives only {len(pairs)} pairs, {count} asked for")


def write_jsonl_shards(folder: str, files: int, repeat: int = 1) -> str:
    """The corpus ``repeat`` times over ``files`` jsonl files; returns their glob."""
    os.makedirs(folder, exist_ok=True)
    texts = bbc_texts() * repeat
    outs = [open(os.path.join(folder, f"part{i:03d}.jsonl"), "w") for i in range(files)]
    for i, text in enumerate(texts):
        outs[i % files].write(json.dumps({"text": text}) + "\n")
    for out in outs:
        out.close()
    return os.path.join(folder, "*.jsonl")


def emit(metric: str, **figures) -> None:
    """The benchmark's last line: one JSON object."""
    print(json.dumps({"metric": metric, **figures}), flush=True)


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and all its children (e.g. dataloader workers)."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class PeakRss:
    """The largest resident memory of this process tree while the block runs, sampled every 20 ms."""

    def __enter__(self) -> "PeakRss":
        self.process, self.peak, self._done = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, tree_rss(self.process))
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self.peak = max(self.peak, tree_rss(self.process))
        self._done.set()
        self._thread.join()
