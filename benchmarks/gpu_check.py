"""The pieces of ``gpu_check.sh``: build the random model, run one step under a time limit while
sampling its peak memory, and gather every step's figures and the targets into one JSON file.

    python benchmarks/gpu_check.py prepare --out gpu_check.json --work DIR [--smoke]
    python benchmarks/gpu_check.py step --work DIR --name NAME --limit SECONDS -- COMMAND ...
    python benchmarks/gpu_check.py report --work DIR --out gpu_check.json [--quiet]
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
EPOCH_DOCUMENTS = 24_000  # the paper-sized corpus of the epoch target (abstracts)
EPOCH_BATCH = 64  # pairs per step of the epoch target (the paper's batch)
TARGETS = {
    "mfu_bf16": {"target": ">= 0.40", "threshold": 0.40,
                 "what": "model FLOPs utilisation of the training step (train_throughput.py, bf16), the better of "
                         "eager and compiled"},
    "epoch_24k_batch64_s": {"target": "< 30", "threshold": 30.0,
                            "what": f"seconds of training steps for one epoch of {EPOCH_DOCUMENTS:,} documents at "
                                    f"{EPOCH_BATCH} pairs per step, from the fit's steady-state step time"},
}
CORPUS_SHARDS = 8  # jsonl files of the fit's corpus, so that the recipe's 4 dataloader workers share them
STEPS = ("fit", "train_throughput", "train_throughput_compile", "cached_memory")
TIMED_OUT = (124, 137)  # timeout's status after TERM / after KILL


def fail(option: str, expected: str) -> None:
    print(f"error: {option}: {expected}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------- prepare


def prepare(out: str, work: Path, smoke: bool, model_config: str) -> None:
    """Check the input, then build the random model under ``work/model``, write the training corpus
    under ``work/data`` and note the setting."""
    target = Path(out)
    if target.is_dir():
        fail("--out", f"expected a file name, got the folder {out}")
    if not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
        fail("--out", f"expected a file in an existing, writable folder, got {out}")
    import torch

    if not smoke and not torch.cuda.is_available():
        fail("--smoke", "the full check needs a CUDA device and none is visible; pass --smoke for the small CPU run")
    from transformers import AutoConfig, AutoModel

    from lightning_app.packaged import load_tokenizer

    folder = work / "model"
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(model_config)).save_pretrained(folder)
    load_tokenizer("packaged:minilm").save_pretrained(folder)
    sys.path.insert(0, str(HERE.parent))
    from benchmarks.common import write_jsonl_shards

    write_jsonl_shards(str(work / "data"), CORPUS_SHARDS)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "mode": "smoke (CPU, tiny model, fp32)" if smoke else "full (one GPU, MPNet-base-sized random model, bf16)",
        "smoke": smoke,
        "device": torch.cuda.get_device_name() if not smoke else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "model_config": os.path.relpath(model_config, HERE.parent),
        "corpus": f"packaged BBC News as {CORPUS_SHARDS} jsonl files (data.source, as data/*.jsonl in the recipe)",
        "load_average_start": os.getloadavg()[0],
    }
    (work / "meta.json").write_text(json.dumps(meta))


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# ---------------------------------------------------------------- step


class PeakMemory:
    """The largest memory in use while a step runs, sampled every half second: on CUDA the device's
    used memory (``nvidia-smi``: every process on it, CUDA contexts included), on CPU the resident
    memory of the step's process tree."""

    def __init__(self, process: psutil.Process, device: str) -> None:
        self.process, self.device, self.peak, self.source = process, device, None, None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _read(self) -> int | None:
        if self.device == "cuda":
            gpu = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                      "-i", gpu], capture_output=True, text=True, timeout=10).stdout
                self.source = "nvidia-smi memory.used (whole device, CUDA contexts included)"
                return int(out.split()[0]) * 2**20
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return None
        total = 0
        self.source = "resident memory of the step's process tree"
        try:
            for p in [self.process, *self.process.children(recursive=True)]:
                total += p.memory_info().rss
        except psutil.Error:
            pass
        return total or None

    def _sample(self) -> None:
        while True:
            value = self._read()
            if value is not None:
                self.peak = max(self.peak or 0, value)
            if self._done.wait(0.5):
                return


def run_step(work: Path, name: str, limit: int, device: str, command: list[str]) -> int:
    """Run ``command`` under ``timeout`` with its output in ``work/NAME.log``; write ``work/NAME.json``."""
    log = work / f"{name}.log"
    print(f"[gpu_check] {name} (limit {limit} s): {' '.join(command)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with log.open("w") as f:
        process = subprocess.Popen(["timeout", "-k", "15", str(limit), *command], stdout=f,
                                   stderr=subprocess.STDOUT)
        with PeakMemory(psutil.Process(process.pid), device) as memory:
            returncode = process.wait()
    wall = time.perf_counter() - start
    status = "ok" if returncode == 0 else "timeout" if returncode in TIMED_OUT else "failed"
    record = {"status": status, "returncode": returncode, "wall_s": round(wall, 1), "limit_s": limit,
              "command": command, "peak_memory_mib": memory.peak and round(memory.peak / 2**20),
              "peak_memory_source": memory.source}
    (work / f"{name}.json").write_text(json.dumps(record))
    print(f"[gpu_check] {name}: {status} in {wall:.0f} s", file=sys.stderr, flush=True)
    if status != "ok":
        print("".join(_tail(log, 20)), file=sys.stderr, flush=True)
    return 0  # a failed step is recorded; the check goes on


def _tail(path: Path, lines: int) -> list[str]:
    text = path.read_text(errors="replace") if path.exists() else ""
    return [line + "\n" for line in text.replace("\r", "\n").splitlines() if line.strip()][-lines:]


# ---------------------------------------------------------------- report


def last_json(log: Path) -> dict | None:
    """The last line of the log that is a JSON object (the benchmarks end with one)."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def find_number(obj, keys: tuple[str, ...]) -> int | float | None:
    """The first number stored under one of ``keys`` anywhere in a nested JSON object."""
    if isinstance(obj, dict):
        for key in keys:
            if isinstance(obj.get(key), (int, float)) and not isinstance(obj.get(key), bool):
                return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for value in obj:
            found = find_number(value, keys)
            if found is not None:
                return found
    return None


def throughput_figures(log: Path, compiled: bool = False) -> dict:
    """samples/s, tokens/s and MFU of our step from ``train_throughput.py``: its JSON last line
    first, else the line it prints for CUDA (``ours: S samples/s, T tokens/s, F TFLOP/s, MFU M%``).
    ``compiled``: samples/s and MFU of its compiled system (``--compile``)."""
    result = last_json(log)
    if compiled:
        return {"samples_per_s": find_number(result, ("samples_per_s_compiled",)),
                "mfu": find_number(result, ("mfu_compiled",)),
                "vs_eager": find_number(result, ("ratio_compiled_vs_eager",)), "json": result}
    text = log.read_text(errors="replace")
    printed = re.findall(r"ours: ([\d.]+) samples/s, ([\d.]+) tokens/s, ([\d.]+) TFLOP/s(?:, MFU ([\d.]+)%)?", text)
    samples = find_number(result, ("samples_per_s", "ours"))
    tokens = find_number(result, ("tokens_per_s",))
    tflops = find_number(result, ("tflops", "tflop_per_s"))
    mfu = find_number(result, ("mfu",))
    if mfu is not None and mfu > 1:  # given in percent
        mfu /= 100
    if printed:
        s, t, f, m = printed[-1]
        samples = samples if samples is not None else float(s)
        tokens = tokens if tokens is not None else float(t)
        tflops = tflops if tflops is not None else float(f)
        mfu = mfu if mfu is not None else (float(m) / 100 if m else None)
    return {"samples_per_s": samples, "tokens_per_s": tokens, "tflop_per_s": tflops, "mfu": mfu,
            "vs_sentence_transformers": find_number(result, ("ratio",)), "json": result}


def fit_figures(work: Path) -> dict:
    """Step time, steps/s and samples/s of the fit from its TensorBoard events (PairThroughput's
    ``train/time`` and ``train/batches``, which leave validation out), and the epoch they imply.

    The steady-state step time is the median over logged intervals of time / steps, the interval
    up to the first logged step (model start-up, MTEB and the step-0 probe) left out."""
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(glob.glob(str(work / "runs" / "**" / "events.out.tfevents.*"), recursive=True))
    if not events:
        return {"error": "no TensorBoard event file"}
    accumulator = EventAccumulator(events[-1], size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    series = lambda tag: {e.step: e.value for e in accumulator.Scalars(tag)} if tag in tags else {}  # noqa: E731
    elapsed, batches = series("train/time"), series("train/batches")
    points = sorted(set(elapsed) & set(batches))
    intervals = [(elapsed[b] - elapsed[a]) / (batches[b] - batches[a]) for a, b in zip(points, points[1:])
                 if batches[b] > batches[a]]
    config = yaml.safe_load(Path(events[-1]).with_name("config.yaml").read_text())
    batch = config["data"]["batch_size"]
    figures = {"steps": int(batches[points[-1]]) if points else 0, "batch_size": batch,
               "logged_intervals": len(intervals),
               "train_time_s": round(elapsed[points[-1]], 2) if points else None}
    if intervals:
        step = statistics.median(intervals)
        figures |= {"step_time_s": round(step, 4), "step_time_range_s": [round(min(intervals), 4),
                                                                         round(max(intervals), 4)],
                    "steps_per_s": round(1 / step, 3), "samples_per_s": round(batch / step, 2),
                    "epoch_steps": math.ceil(EPOCH_DOCUMENTS / batch),
                    "epoch_s": round(math.ceil(EPOCH_DOCUMENTS / batch) * step, 1)}
    for tag, name in [("train/device/samples_per_sec", "throughput_monitor_samples_per_s"),
                      ("train/device/items_per_sec", "throughput_monitor_tokens_per_s")]:
        if series(tag):
            figures[name] = round(statistics.median(series(tag).values()), 2)
    if series("train/device/mfu"):
        figures["throughput_monitor_mfu"] = round(statistics.median(series("train/device/mfu").values()), 4)
    last = lambda tag: round(list(series(tag).values())[-1], 4) if series(tag) else None  # noqa: E731
    figures |= {"mteb_mean": last("mteb/mean"), "mteb_evaluations": len(series("mteb/mean")),
                "probe_knn_acc": last("probe/bbcnews/knn_acc"), "probe_evaluations": len(series("probe/bbcnews/knn_acc")),
                "train_loss": last("train/loss")}
    return figures


def report(work: Path, out: str) -> dict:
    """Every step's record and figures, the targets and whether each is met, written to ``out``."""
    meta = json.loads((work / "meta.json").read_text())
    steps = {}
    for name in STEPS:
        record_file, log = work / f"{name}.json", work / f"{name}.log"
        if not record_file.exists():
            steps[name] = {"status": "not run"}
            continue
        step = json.loads(record_file.read_text())
        try:
            if name == "fit":
                step["figures"] = fit_figures(work)
            elif name.startswith("train_throughput"):
                step["figures"] = throughput_figures(log, compiled=name.endswith("_compile"))
            else:
                result = last_json(log)
                step["figures"] = {k: find_number(result, (k,)) for k in ("plain_pairs", "cached_pairs", "plain_mib",
                                                                          "cached_mib", "ratio")} | {"json": result}
        except Exception as error:  # figures of a failed or cut-short step may be missing
            step["figures"] = {"error": f"{type(error).__name__}: {error}"}
        if step["status"] != "ok":
            step["log_tail"] = _tail(log, 40)
        steps[name] = step
    mfus = {name: steps[name].get("figures", {}).get("mfu") for name in ("train_throughput", "train_throughput_compile")}
    measured = {k: v for k, v in mfus.items() if v is not None}
    best = max(measured, key=measured.get) if measured else None
    fit = steps["fit"].get("figures", {})
    epoch = fit.get("epoch_s") if fit.get("batch_size") == EPOCH_BATCH or meta["smoke"] else None
    targets = {"mfu_bf16": {**TARGETS["mfu_bf16"], "value": measured.get(best), "from": best},
               "epoch_24k_batch64_s": {**TARGETS["epoch_24k_batch64_s"], "value": epoch, "from": "fit"}}
    targets["mfu_bf16"]["met"] = None if best is None else measured[best] >= TARGETS["mfu_bf16"]["threshold"]
    targets["epoch_24k_batch64_s"]["met"] = None if epoch is None else epoch < TARGETS["epoch_24k_batch64_s"]["threshold"]
    for target in targets.values():
        del target["threshold"]
        if meta["smoke"]:
            target["met"] = None
            target["note"] = "smoke run: the targets apply to the full check on one GPU"
    result = {**meta, "load_average_end": os.getloadavg()[0], "steps": steps, "targets": targets,
              "all_steps_ok": all(s["status"] == "ok" for s in steps.values())}
    partial = Path(f"{out}.partial")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(out)
    return result


def summary(result: dict) -> str:
    lines = [f"gpu check {result['date']} commit {result['commit']} on {result['device']}, torch {result['torch']}"]
    for name, step in result["steps"].items():
        figures = {k: v for k, v in step.get("figures", {}).items() if k not in ("json",) and v is not None}
        lines.append(f"  {name:26s} {step['status']:8s} {step.get('wall_s', '-')} s, peak memory "
                     f"{step.get('peak_memory_mib')} MiB; {figures}")
    for name, target in result["targets"].items():
        lines.append(f"  target {name} {target['target']}: {target['value']} (met: {target['met']})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="check the input, build the random model, note the setting")
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--model-config", required=True)
    s = commands.add_parser("step", help="run one step under a time limit, sampling its peak memory")
    s.add_argument("--work", required=True, type=Path)
    s.add_argument("--name", required=True, choices=STEPS)
    s.add_argument("--limit", required=True, type=int, help="seconds")
    s.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    r = commands.add_parser("report", help="gather the steps' figures and the targets into one JSON file")
    r.add_argument("--work", required=True, type=Path)
    r.add_argument("--out", required=True)
    r.add_argument("--quiet", action="store_true", help="write the file only, without the summary")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out, args.work, args.smoke, args.model_config)
    elif args.command == "step":
        raise SystemExit(run_step(args.work, args.name, args.limit, args.device,
                                  args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd))
    else:
        result = report(args.work, args.out)
        if not args.quiet:
            print(summary(result))
            print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
