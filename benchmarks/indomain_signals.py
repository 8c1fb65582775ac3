"""Cost of the label-free in-domain signals, given the embeddings (embedding the texts is not timed).

For N held-out documents, L layers and H dimensions of random embeddings (view 2 = view 1 plus
noise) it times ``indomain_signals`` over all layers, each signal alone over all layers, and the
TF-IDF neighbours of N synthetic texts (computed once per corpus). Prints the median seconds and,
as its last line, one JSON object: ``{"metric": "indomain_signals_seconds", ...}``.

    python benchmarks/indomain_signals.py --documents 256,1000 --layers 7 --dim 384 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from lightning_app.probes.geometry import alignment, uniformity
from lightning_app.probes.indomain import (
    effective_rank,
    indomain_signals,
    neighbour_overlap,
    retrieval,
    tfidf_neighbours,
)


def cpu_name() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")


def load_average() -> str:
    with open("/proc/loadavg") as loadavg:
        return " ".join(loadavg.read().split()[:3])


def synthetic_texts(count: int, seed: int = 0) -> list[str]:
    """``count`` texts of 150-400 words from a Zipf-like 20,000-word vocabulary."""
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(20_000)]
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    return [" ".join(rng.choices(vocabulary, weights, k=rng.randint(150, 400))) for _ in range(count)]


def median_seconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_signals(documents: int, layers: int, dim: int, k: int, repeats: int) -> dict[str, float]:
    """Median seconds of every signal over all layers, of ``indomain_signals`` and of ``tfidf_neighbours``."""
    g = torch.Generator().manual_seed(documents)
    view1 = torch.randn(layers, documents, dim, generator=g)
    view2 = view1 + 0.5 * torch.randn(layers, documents, dim, generator=g)
    texts = synthetic_texts(documents)
    lexical = tfidf_neighbours(texts, k)
    each_layer = {
        "retrieval": lambda a, b: retrieval(a, b),
        "effective_rank": lambda a, b: effective_rank(a),
        "alignment": lambda a, b: alignment(a, b),
        "uniformity": lambda a, b: uniformity(a),
        "lexical_overlap": lambda a, b: neighbour_overlap(a, lexical, k),
    }
    seconds = {name: median_seconds(lambda f=f: [f(a, b) for a, b in zip(view1, view2)], repeats)
               for name, f in each_layer.items()}
    seconds["all_signals"] = median_seconds(lambda: indomain_signals(view1, view2, lexical, k), repeats)
    seconds["tfidf_neighbours_once"] = median_seconds(lambda: tfidf_neighbours(texts, k), repeats)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", default="256,1000", help="comma-separated numbers of held-out documents")
    parser.add_argument("--layers", type=int, default=7, help="hidden states (embeddings + 6 layers for MiniLM)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10, help="neighbours of the lexical overlap")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"CPU: {cpu_name()}; torch threads: {torch.get_num_threads()}; load average at start: {load_average()}")
    results = {}
    for documents in (int(n) for n in args.documents.split(",")):
        seconds = time_signals(documents, args.layers, args.dim, args.k, args.repeats)
        results[str(documents)] = {name: round(value, 4) for name, value in seconds.items()}
        print(f"N={documents}, {args.layers} layers, H={args.dim}: "
              + ", ".join(f"{name} {value:.3f}s" for name, value in seconds.items()))
    print(f"load average at end: {load_average()}")
    print(json.dumps({"metric": "indomain_signals_seconds", "cpu": cpu_name(), "threads": torch.get_num_threads(),
                      "layers": args.layers, "dim": args.dim, "k": args.k, "load_average": load_average(),
                      "seconds": results}))


if __name__ == "__main__":
    main()
