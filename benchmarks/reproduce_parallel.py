"""Wall time of a reduced reproduction grid with ``--parallel N`` against the same grid one cell at a
time (the baseline), each run in a fresh output folder, alternating so that load on a shared machine
hits both alike. On a CPU both use every core, so no speed-up is expected; on a node with N GPUs the
cells run side by side.

    python benchmarks/reproduce_parallel.py                    # quick.yaml, crops + dropout, seed 1, 6 steps, probes at the end
    python benchmarks/reproduce_parallel.py --repeats 3 -- --budget.steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REDUCED = ["--config", os.path.join(ROOT, "configs/reproduce/quick.yaml"), "--settings", "[crops, dropout]",
           "--seeds", "[1]", "--budget.steps", "6", "--probe.every", "6"]


def grid_seconds(output: str, extra: list[str]) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "lightning_app", "reproduce", *REDUCED, "--output", output, *extra],
                   check=True, stdout=subprocess.DEVNULL, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (median and range reported)")
    parser.add_argument("extra", nargs="*", help="further `lightning reproduce` options, after --")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"sequential": [], "parallel": []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for name, extra in (("sequential", []), ("parallel", ["--parallel", str(args.parallel)])):
                seconds = grid_seconds(os.path.join(folder, f"{name}{repeat}"), [*extra, *args.extra])
                times[name].append(seconds)
                print(f"{name}: {seconds:.1f} s (load average {' '.join(f'{v:.2f}' for v in os.getloadavg())})",
                      flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name}: median {medians[name]:.1f} s, range {min(values):.1f}-{max(values):.1f} s over {len(values)}")
    print(json.dumps({"metric": "reproduce_parallel_vs_sequential", "baseline": "sequential",
                      "ratio": round(medians["parallel"] / medians["sequential"], 3), "parallel": args.parallel,
                      "sequential_s": round(medians["sequential"], 1), "parallel_s": round(medians["parallel"], 1),
                      "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
