"""``lightning embed`` against ``SentenceTransformer.encode``, its peak memory on a 2 GB corpus
against a 200 MB one, and the time of ``--map tsne`` on the 2,225 BBC articles.

1. Throughput: the same texts (the first ``--documents`` BBC articles in a fixed order), the
   packaged MiniLM, the same max length, batch size and torch threads, in this process, repeated
   ``--repeats`` times alternately: documents/s of the whole ``lightning embed`` command (model
   load, weight hash, streaming, Parquet) and of loading + ``SentenceTransformer.encode``, after
   one untimed warm-up of each (imports, first-call allocations). Also timed: ``lightning embed
   --precision bf16-mixed`` (bf16 autocast on the CPU; not the default), with the smallest cosine
   similarity of its embeddings to the float32 ones.
2. Peak RSS: ``lightning embed`` of a generated 2 GB jsonl and a 200 MB one (numbered copies of
   the articles), each in its own process, both capped at ``--rss-documents`` rows (embedding
   2 GB on a 2-core CPU would take about a day): the cap measures the embedding path's own
   memory on a large file (the source streams it: nothing is read ahead into memory).
3. Map: ``lightning embed --map tsne`` of the 2,225 articles; openTSNE's time from meta.json.

    python benchmarks/embed_throughput.py            # last line: JSON, ratio = embed / encode docs/s
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import PeakRss, bbc_texts, emit  # noqa: E402
from benchmarks.stream_memory import write_corpus  # noqa: E402

MODEL = "packaged:minilm"


def embed(corpus: str, output: str, *extra: str) -> None:
    from lightning_app.cli import main
    main(["embed", f"--model={MODEL}", f"--corpus={corpus}", f"--output={output}", "--accelerator=cpu",
          "--devices=1", *extra])


def child_rss(corpus: str, output: str, documents: int, max_length: int, batch_size: int) -> None:
    """Child: embed the first ``documents`` rows and print the peak resident memory."""
    with PeakRss() as peak:
        embed(corpus, output, f"--max_documents={documents}", f"--max_length={max_length}",
              f"--batch_size={batch_size}")
    print(json.dumps({"peak_rss": peak.peak}))


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-documents", type=int, default=256)
    parser.add_argument("--sizes-mb", default="200,2000")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: throughput,rss,map")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_rss(*args.child, args.rss_documents, args.max_length, args.batch_size)
    import torch
    from sentence_transformers import SentenceTransformer

    from lightning_app.packaged import resolve_model
    skip = set(filter(None, args.skip.split(",")))
    folder = tempfile.mkdtemp(prefix="embed-bench-")
    figures = {"threads": torch.get_num_threads(), "documents": args.documents, "max_length": args.max_length,
               "batch_size": args.batch_size}
    try:
        texts = bbc_texts()[:args.documents]
        corpus = os.path.join(folder, "texts.jsonl")
        with open(corpus, "w") as out:
            out.writelines(json.dumps({"text": t}) + "\n" for t in texts)
        short = os.path.join(folder, "warmup.jsonl")
        with open(short, "w") as out:
            out.writelines(json.dumps({"text": t}) + "\n" for t in texts[:args.batch_size])
        rates = {"embed": [], "encode": [], "embed_bf16": []}
        settings = (f"--max_length={args.max_length}", f"--batch_size={args.batch_size}")

        def run_embed(path: str, output: str, *extra: str) -> float:
            start = time.perf_counter()
            embed(path, output, *settings, *extra)
            return time.perf_counter() - start

        def run_encode(chosen: list[str]) -> float:
            start = time.perf_counter()
            model = SentenceTransformer(resolve_model(MODEL), device="cpu")
            model.max_seq_length = args.max_length
            model.encode(chosen, batch_size=args.batch_size)
            return time.perf_counter() - start

        if "throughput" not in skip:
            run_embed(short, os.path.join(folder, "warmup"))
            run_encode(texts[:args.batch_size])
        for repeat in range(args.repeats if "throughput" not in skip else 0):
            rates["embed"].append(len(texts) / run_embed(corpus, os.path.join(folder, f"out{repeat}")))
            rates["encode"].append(len(texts) / run_encode(texts))
            rates["embed_bf16"].append(len(texts) / run_embed(corpus, os.path.join(folder, f"bf16_{repeat}"),
                                                              "--precision=bf16-mixed"))
            print(f"repeat {repeat}: lightning embed {rates['embed'][-1]:.2f} docs/s, SentenceTransformer.encode "
                  f"{rates['encode'][-1]:.2f} docs/s, lightning embed bf16 {rates['embed_bf16'][-1]:.2f} docs/s "
                  f"(load average {os.getloadavg()[0]:.2f})", flush=True)
        if rates["embed"]:
            import pandas as pd
            full = np.stack(pd.read_parquet(os.path.join(folder, "out0", "embeddings"))["embedding"].to_numpy())
            half = np.stack(pd.read_parquet(os.path.join(folder, "bf16_0", "embeddings"))["embedding"].to_numpy())
            cosine = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
            print(f"lightning embed: {spread(rates['embed'])} docs/s; encode: {spread(rates['encode'])} docs/s; "
                  f"embed bf16: {spread(rates['embed_bf16'])} docs/s (smallest cosine to float32 {cosine.min():.6f})")
            median = {k: statistics.median(v) for k, v in rates.items()}
            figures.update(embed_docs_per_s=round(median["embed"], 2), encode_docs_per_s=round(median["encode"], 2),
                           ratio=round(median["embed"] / median["encode"], 3),
                           embed_bf16_docs_per_s=round(median["embed_bf16"], 2),
                           ratio_bf16=round(median["embed_bf16"] / median["encode"], 3),
                           bf16_min_cosine=round(float(cosine.min()), 6))

        if "rss" not in skip:
            peaks = {}
            for size in map(int, args.sizes_mb.split(",")):
                path = os.path.join(folder, f"corpus-{size}mb.jsonl")
                count = write_corpus(path, size * 10**6)
                done = subprocess.run([sys.executable, __file__, "--child", path, os.path.join(folder, f"rss{size}"),
                                       "--rss-documents", str(args.rss_documents), "--max-length",
                                       str(args.max_length), "--batch-size", str(args.batch_size)],
                                      check=True, capture_output=True, text=True)
                peaks[size] = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss"]
                os.remove(path)
                print(f"{size} MB corpus ({count} documents, first {args.rss_documents} embedded): peak RSS "
                      f"{peaks[size] / 2**20:.0f} MiB (load average {os.getloadavg()[0]:.2f})", flush=True)
            small, large = sorted(peaks)
            figures.update(rss_small_mib=round(peaks[small] / 2**20), rss_large_mib=round(peaks[large] / 2**20),
                           rss_ratio=round(peaks[large] / peaks[small], 3))

        if "map" not in skip:
            out = os.path.join(folder, "bbc")
            start = time.perf_counter()
            embed("packaged:bbcnews", out, "--label_field=label", f"--max_length={args.max_length}",
                  f"--batch_size={args.batch_size}", "--map=tsne")
            meta = json.load(open(os.path.join(out, "meta.json")))["map"]
            print(f"--map tsne of {meta['points']} articles: t-SNE {meta['seconds']} s, whole command "
                  f"{time.perf_counter() - start:.0f} s, 10-NN {meta['knn_acc_2d']} in 2D, {meta['knn_acc_full']} "
                  f"in full (load average {os.getloadavg()[0]:.2f})", flush=True)
            figures.update(tsne_seconds=meta["seconds"], tsne_points=meta["points"])
    finally:
        shutil.rmtree(folder)
    emit("embed_docs_per_s_vs_sentence_transformers_encode", **figures)


if __name__ == "__main__":
    main()
