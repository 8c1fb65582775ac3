"""Cost of probing every layer against probing the last layer alone, on the packaged MiniLM and BBC.

Both probes embed the same documents in the same process and score kNN accuracy the same way; the
all-layer probe takes every hidden state from the one forward pass (``output_hidden_states``).
Prints the median seconds of each and, as its last line, one JSON object:
``{"metric": "probe_all_layers_vs_last", "ratio": ...}``.

    python benchmarks/probe_cost.py --documents 400 --max_length 128 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from lightning_app.model.encoder import Encoder
from lightning_app.packaged import load_tokenizer
from lightning_app.probes.corpus import ProbeCorpus, load_probe_corpus
from lightning_app.probes.embed import embed_layers
from lightning_app.probes.knn import layer_knn_accuracy


def probe_seconds(encoder: Encoder, token_ids, labels, pad_id: int, batch_size: int, last_only: bool) -> float:
    start = time.perf_counter()
    layers = embed_layers(encoder, token_ids, pad_id, batch_size, last_only=last_only)
    layer_knn_accuracy(layers, labels.to(layers.device), k=10, test_fraction=0.1, seed=42)
    if layers.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=400, help="BBC documents probed (seeded sample)")
    parser.add_argument("--max_length", type=int, default=128, help="tokens per document")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each probe (median reported)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = Encoder("packaged:minilm").to(device).eval()
    tokenizer = load_tokenizer("packaged:minilm")
    corpus = load_probe_corpus(ProbeCorpus(max_documents=args.documents), k=10, test_fraction=0.1, seed=42)
    token_ids = tokenizer(corpus.texts, truncation=True, max_length=args.max_length, verbose=False)["input_ids"]
    run = lambda last_only: probe_seconds(encoder, token_ids, corpus.labels, tokenizer.pad_token_id,  # noqa: E731
                                          args.batch_size, last_only)
    run(True)  # warm-up: allocator, kernels, caches
    times = {"all": [], "last": []}
    for _ in range(args.repeats):  # interleaved, so load on a shared machine hits both alike
        times["last"].append(run(True))
        times["all"].append(run(False))
    all_layers, last_layer = statistics.median(times["all"]), statistics.median(times["last"])
    print(f"device {device}, {len(token_ids)} documents, max_length {args.max_length}, "
          f"{encoder.num_layers + 1} hidden states")
    print(f"all layers: {all_layers:.2f} s, last layer: {last_layer:.2f} s (median of {args.repeats}; runs "
          f"{[round(t, 2) for t in times['all']]} and {[round(t, 2) for t in times['last']]})")
    print(json.dumps({"metric": "probe_all_layers_vs_last", "ratio": round(all_layers / last_layer, 3),
                      "all_layers_s": round(all_layers, 3), "last_layer_s": round(last_layer, 3),
                      "all_layers_runs_s": [round(t, 3) for t in times["all"]],
                      "last_layer_runs_s": [round(t, 3) for t in times["last"]],
                      "documents": len(token_ids), "max_length": args.max_length, "device": device}))


if __name__ == "__main__":
    main()
