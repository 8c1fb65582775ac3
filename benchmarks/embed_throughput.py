"""``lightning embed`` against ``SentenceTransformer.encode``, its peak memory on a 2 GB corpus
against a 200 MB one, and the time of ``--map tsne`` on the 2,225 BBC articles.

1. Throughput on equal terms: the same texts (all BBC articles by default, in a fixed order), the
   same model, max length, batch size, torch threads and precision, in this process, ``--repeats``
   rounds in which every arm runs once, after one untimed warm-up of each. Documents/s of the whole
   ``lightning embed`` command (model load, weight hash, streaming, Parquet) and of loading +
   ``SentenceTransformer.encode``. Arms: float32 on both (``--precision 32``; encode's default),
   and, where the CPU multiplies bf16 natively, bf16 on both (``--precision bf16-mixed``; encode
   under ``torch.autocast("cpu", bfloat16)``). ``ratio_equal`` = ours / encode in float32,
   ``ratio_equal_bf16`` in bf16, ``ratio_default`` = ours at ``--precision auto`` (the arm auto
   resolves to on this hardware) / encode's default float32: each the median over repeats of the
   ratio within a repeat (paired, so a load that changes between repeats cancels), with the
   ratio of the arms' medians beside it.
2. Peak RSS: ``lightning embed`` of a generated 2 GB jsonl and a 200 MB one (numbered copies of
   the articles), each in its own process, both capped at ``--rss-documents`` rows: the cap
   measures the embedding path's own memory on a large file (the source streams it).
3. Map: ``lightning embed --map tsne`` of the 2,225 articles; openTSNE's time from meta.json.

Every repeat is printed with /proc/loadavg; the last line is JSON.

    python benchmarks/embed_throughput.py
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


def embed(model: str, corpus: str, output: str, *extra: str) -> None:
    from lightning_app.cli import main
    main(["embed", f"--model={model}", f"--source={corpus}", f"--output={output}", "--accelerator=cpu",
          "--devices=1", *extra])


def load_average() -> str:
    """/proc/loadavg's 1, 5 and 15 minute averages."""
    return " ".join(open("/proc/loadavg").read().split()[:3])


def hardware() -> dict:
    """The CPU's name and bf16 flags, whether it multiplies bf16 natively, what auto resolves to, torch's threads."""
    import torch

    from lightning_app.model.precision import BF16_CPU_FLAGS, cpu_flags, native_bf16, resolve_precision
    names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    return {"cpu": names[0] if names else "unknown", "cores": os.cpu_count(),
            "bf16_flags": sorted(BF16_CPU_FLAGS & cpu_flags()), "bf16_native": native_bf16("cpu"),
            "auto_precision": resolve_precision("auto", "cpu"), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def encoder_run(model: str, texts: list[str], args, bf16: bool) -> tuple[float, np.ndarray]:
    """Seconds to load the model and ``SentenceTransformer.encode`` the texts, and the embeddings."""
    import torch
    from sentence_transformers import SentenceTransformer

    from lightning_app.packaged import resolve_model
    start = time.perf_counter()
    encoder = SentenceTransformer(resolve_model(model), device="cpu")
    encoder.max_seq_length = args.max_length
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        embeddings = encoder.encode(texts, batch_size=args.batch_size)
    return time.perf_counter() - start, embeddings


def embed_run(model: str, corpus: str, output: str, args, precision: str) -> tuple[float, np.ndarray]:
    """Seconds of the whole ``lightning embed`` command, and its embeddings."""
    from lightning_app.embed.maps import read_embeddings
    start = time.perf_counter()
    embed(model, corpus, output, f"--max_length={args.max_length}", f"--batch_size={args.batch_size}",
          f"--precision={precision}")
    seconds = time.perf_counter() - start
    embeddings = read_embeddings(output)[2]
    shutil.rmtree(output)
    return seconds, embeddings


def write_texts(path: str, texts: list[str]) -> str:
    with open(path, "w") as out:
        out.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    return path


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min()), 6)


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "repeats": [round(v, 2) for v in values]}


def arms(native: bool) -> dict:
    """Arm name -> (``embed`` or ``encode``, precision); the bf16 pair only where bf16 is native."""
    chosen = {"ours_32": ("embed", "32"), "encode_32": ("encode", "32")}
    if native:
        chosen.update(ours_bf16=("embed", "bf16-mixed"), encode_bf16=("encode", "bf16-mixed"))
    return chosen


def throughput(args, folder: str, native: bool, auto: str) -> dict:
    """Documents/s of every arm over interleaved repeats, the three ratios and the embeddings' agreement."""
    texts = bbc_texts()[:args.documents]
    corpus = write_texts(os.path.join(folder, "texts.jsonl"), texts)
    warmup = write_texts(os.path.join(folder, "warmup.jsonl"), texts[:args.batch_size])
    chosen = arms(native)

    def run(arm: str, path: str, some: list[str]) -> tuple[float, np.ndarray]:
        kind, precision = chosen[arm]
        if kind == "encode":
            return encoder_run(args.model, some, args, precision == "bf16-mixed")
        return embed_run(args.model, path, os.path.join(folder, arm), args, precision)

    for arm in chosen:
        run(arm, warmup, texts[:args.batch_size])
    rates, kept, loads = {arm: [] for arm in chosen}, {}, []
    for repeat in range(args.repeats):
        for arm in chosen:
            seconds, kept[arm] = run(arm, corpus, texts)
            rates[arm].append(len(texts) / seconds)
        loads.append(load_average())
        shown = ", ".join(f"{arm} {rates[arm][-1]:.2f}" for arm in chosen)
        print(f"repeat {repeat}: docs/s {shown}; ratio float32 {rates['ours_32'][-1] / rates['encode_32'][-1]:.3f}"
              + (f", bf16 {rates['ours_bf16'][-1] / rates['encode_bf16'][-1]:.3f}" if native else "")
              + f" (load average {loads[-1]})", flush=True)
    ours_auto = "ours_bf16" if auto == "bf16-mixed" else "ours_32"
    pairs = {"ratio_equal": ("ours_32", "encode_32"), "ratio_default": (ours_auto, "encode_32")}
    if native:
        pairs["ratio_equal_bf16"] = ("ours_bf16", "encode_bf16")
    figures = {"docs_per_s": {arm: spread(values) for arm, values in rates.items()}, "ratio_equal_bf16": None,
               "min_cosine_ours_vs_encode_32": min_cosine(kept["ours_32"], kept["encode_32"]), "load_averages": loads}
    for name, (ours, theirs) in pairs.items():
        per_repeat = [a / b for a, b in zip(rates[ours], rates[theirs])]
        figures[name] = round(statistics.median(per_repeat), 3)
        figures[f"{name}_per_repeat"] = [round(r, 3) for r in per_repeat]
        figures[f"{name}_of_medians"] = round(statistics.median(rates[ours]) / statistics.median(rates[theirs]), 3)
    if native:
        figures.update(min_cosine_bf16_vs_32=min_cosine(kept["ours_bf16"], kept["ours_32"]),
                       min_cosine_ours_vs_encode_bf16=min_cosine(kept["ours_bf16"], kept["encode_bf16"]))
    return figures


def child_rss(corpus: str, output: str, args) -> None:
    """Child: embed the first ``--rss-documents`` rows and print the peak resident memory."""
    with PeakRss() as peak:
        embed(args.model, corpus, output, f"--max_documents={args.rss_documents}", f"--max_length={args.max_length}",
              f"--batch_size={args.batch_size}")
    print(json.dumps({"peak_rss": peak.peak}))


def peak_rss(args, folder: str) -> dict:
    """Peak RSS of ``lightning embed`` on the smaller and the larger generated corpus, each in its own process."""
    peaks = {}
    for size in map(int, args.sizes_mb.split(",")):
        path = os.path.join(folder, f"corpus-{size}mb.jsonl")
        count = write_corpus(path, size * 10**6)[0]
        done = subprocess.run([sys.executable, __file__, "--child", path, os.path.join(folder, f"rss{size}"),
                               "--model", args.model, "--rss-documents", str(args.rss_documents), "--max-length",
                               str(args.max_length), "--batch-size", str(args.batch_size)],
                              check=True, capture_output=True, text=True)
        peaks[size] = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss"]
        os.remove(path)
        print(f"{size} MB corpus ({count} documents, first {args.rss_documents} embedded): peak RSS "
              f"{peaks[size] / 2**20:.0f} MiB (load average {load_average()})", flush=True)
    small, large = sorted(peaks)
    return {"rss_small_mib": round(peaks[small] / 2**20), "rss_large_mib": round(peaks[large] / 2**20),
            "rss_ratio": round(peaks[large] / peaks[small], 3)}


def map_time(args, folder: str) -> dict:
    """``lightning embed --map tsne`` of the BBC articles: t-SNE seconds (meta.json) and the whole command's."""
    out = os.path.join(folder, "bbc")
    start = time.perf_counter()
    embed(args.model, "packaged:bbcnews", out, "--label_field=label", f"--max_length={args.max_length}",
          f"--batch_size={args.batch_size}", "--map=tsne", *([f"--max_documents={args.documents}"]))
    whole = time.perf_counter() - start
    meta = json.load(open(os.path.join(out, "meta.json")))
    print(f"--map tsne of {meta['map']['points']} articles: t-SNE {meta['map']['seconds']} s, whole command "
          f"{whole:.0f} s at {meta['precision']}, 10-NN {meta['map']['knn_acc_2d']} in 2D, "
          f"{meta['map']['knn_acc_full']} in full (load average {load_average()})", flush=True)
    return {"tsne_seconds": meta["map"]["seconds"], "tsne_points": meta["map"]["points"],
            "map_command_seconds": round(whole, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="packaged:minilm")
    parser.add_argument("--documents", type=int, default=2225, help="the first this many BBC articles")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rss-documents", type=int, default=256)
    parser.add_argument("--sizes-mb", default="200,2000")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: throughput,rss,map")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_rss(*args.child, args)
    skip = set(filter(None, args.skip.split(",")))
    machine = hardware()
    print(f"hardware: {machine} (load average {load_average()})", flush=True)
    figures = {"hardware": machine, "documents": args.documents, "max_length": args.max_length,
               "batch_size": args.batch_size, "load_average_start": load_average()}
    folder = tempfile.mkdtemp(prefix="embed-bench-")
    try:
        if "throughput" not in skip:
            figures.update(throughput(args, folder, machine["bf16_native"], machine["auto_precision"]))
        if "rss" not in skip:
            figures.update(peak_rss(args, folder))
        if "map" not in skip:
            figures.update(map_time(args, folder))
    finally:
        shutil.rmtree(folder)
    figures["load_average_end"] = load_average()
    emit("embed_docs_per_s_vs_sentence_transformers_encode", **figures)


if __name__ == "__main__":
    main()
