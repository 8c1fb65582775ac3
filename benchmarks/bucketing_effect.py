"""Does length bucketing change what is learned? Crops trained three ways on the same grid budget:

- ``cut``: the default step: the stream's random batches, padding cut inside the batch
  (``model.tokens_per_chunk``);
- ``plain``: the same random batches, one forward padded to the batch's longest row
  (``model.tokens_per_chunk: null``): the same objective, computed without the cut;
- ``bucketed``: batches grouped by length across 16 batches (``data.length_buckets: 16``), one
  padded forward: other in-batch negatives.

Each arm is a ``lightning reproduce`` grid (settings untrained and crops) whose crops recipe is
``configs/crop.yaml`` plus the arm's keys, written to ``<output>/recipes/`` (``cut`` runs the recipe
itself, so its folder can be completed into the full grid). Finished cells are
kept, so a rerun only completes what is missing. Prints every seed's 10-fold kNN accuracy of the
last layer and the paired difference of each arm from ``cut`` (mean and 95% t interval over
seeds), and ends with one JSON line.

    python benchmarks/bucketing_effect.py --grid docs/results/newsarticles-minilm/reproduce.yaml --output results/bucketing-minilm
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
ARMS = {"cut": {}, "plain": {"model.tokens_per_chunk": None},
        "bucketed": {"data.length_buckets": 16, "model.tokens_per_chunk": None}}


def recipe(folder: Path, arm: str) -> str:
    """The arm's crops recipe: the default recipe itself, or a file of it plus the arm's keys."""
    if not ARMS[arm]:
        return "configs/crop.yaml"  # so that the arm's folder is a plain grid that can be completed
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{arm}.yaml"
    path.write_text(yaml.safe_dump({"config": str(PROJECT / "configs" / "crop.yaml"), **ARMS[arm]}, sort_keys=False))
    return str(path)


def crops_knn(grid: Path) -> dict[int, float]:
    """Seed -> 10-fold kNN accuracy (x100) of the trained crops cells of a finished grid."""
    with open(grid / "cells.csv") as rows:
        return {int(r["seed"]): 100 * float(r["knn_cv"]) for r in csv.DictReader(rows) if r["setting"] == "crops"}


def interval(diffs: list[float]) -> tuple[float, float, float]:
    """Mean and the 95% t interval of paired differences."""
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean, mean - half, mean + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, help="a reproduce config (corpus, model, budget, seeds)")
    parser.add_argument("--output", required=True, help="folder of the arms' grids")
    parser.add_argument("--arms", default=",".join(ARMS), help="arms to run, in order (the first is the reference)")
    parser.add_argument("--seeds", default=None, help="e.g. '[1, 2, 3]' (default: the grid's)")
    args = parser.parse_args()
    output, arms = Path(args.output), args.arms.split(",")
    knn = {}
    for arm in arms:
        command = [sys.executable, "-m", "lightning_app", "reproduce", "--config", args.grid,
                   "--settings", "[untrained, crops]", "--mteb.tasks", "null", "--output", str(output / arm),
                   "--recipes", json.dumps({"crops": recipe(output / "recipes", arm),
                                            "dropout": "configs/dropout.yaml", "token_crops": "configs/token_crop.yaml"})]
        command += ["--seeds", args.seeds] if args.seeds else []
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=PROJECT)
        knn[arm] = crops_knn(output / arm)
    reference = arms[0]
    print(f"\n10-fold kNN accuracy x 100, last layer, crops ({args.grid}); load average {os.getloadavg()[0]:.2f}")
    for arm in arms:
        print(f"  {arm:9s} " + "  ".join(f"seed {s}: {v:.2f}" for s, v in sorted(knn[arm].items())))
    result = {}
    for arm in arms[1:]:
        seeds = sorted(set(knn[arm]) & set(knn[reference]))
        mean, low, high = interval([knn[arm][s] - knn[reference][s] for s in seeds])
        result[arm] = {"mean_diff": round(mean, 2), "ci95": [round(low, 2), round(high, 2)], "seeds": len(seeds)}
        print(f"  {arm} - {reference}: {mean:+.2f} points, 95% interval [{low:+.2f}, {high:+.2f}] over {len(seeds)} seeds")
    emit("knn_cv_difference_vs_" + reference, grid=args.grid, arms=result,
         knn={arm: {str(s): round(v, 2) for s, v in knn[arm].items()} for arm in arms})


if __name__ == "__main__":
    main()
