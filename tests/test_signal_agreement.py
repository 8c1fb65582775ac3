"""benchmarks/signal_agreement.py on three fake grids: Spearman per corpus and pooled, and the
leave-one-corpus-out threshold rules, against figures worked out by hand."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_app.experiments.report import SIGNAL_HEADERS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "signal_agreement.py"
S1, S2 = "sentence_crops/retrieval_top1", "dropout/alignment"  # S2 is minus S1: the rule turns round
# corpus -> (kNN change, low, high, S1 change) per cell; None: not logged
GRIDS = {
    "a": [(0.05, 0.01, 0.09, 0.30), (0.03, 0.005, 0.06, 0.20), (-0.04, -0.08, -0.01, -0.10),
          (0.00, -0.02, 0.02, 0.05)],  # the last covers 0: not counted
    "b": [(0.02, 0.001, 0.04, 0.10), (-0.02, -0.04, -0.001, 0.00), (-0.05, -0.09, -0.01, 0.15)],
    "c": [(0.03, 0.01, 0.05, 0.40), (-0.04, -0.06, -0.02, -0.20), (0.01, 0.002, 0.02, None)],
}


def write_grid(folder: Path, corpus: str) -> str:
    folder.mkdir()
    with open(folder / "signals.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SIGNAL_HEADERS, restval="")
        writer.writeheader()
        for seed, (change, low, high, signal) in enumerate(GRIDS[corpus]):
            writer.writerow({"setting": "crops", "seed": seed, "corpus": corpus, "knn_cv_change": change,
                             "change_low": low, "change_high": high, S1: "" if signal is None else signal,
                             S2: "" if signal is None else -signal})
    return str(folder)


def run(*grids: str) -> tuple[str, dict]:
    done = subprocess.run([sys.executable, str(SCRIPT), *grids], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(done.stdout.strip().splitlines()[-1])


def test_spearman_and_leave_one_corpus_out_match_the_hand_figures(tmp_path):
    printed, figures = run(*(write_grid(tmp_path / corpus, corpus) for corpus in GRIDS))
    assert figures["corpora"] == {"a": 4, "b": 3, "c": 3}
    first, second = figures["signals"][S1], figures["signals"][S2]
    assert first["spearman"]["a"] == {"rho": pytest.approx(1.0), "n": 4}  # the same order
    assert first["spearman"]["b"] == {"rho": pytest.approx(-0.5), "n": 3}  # 1 - 6 * 6 / (3 * 8)
    assert first["spearman"]["c"] == {"rho": None, "n": 2}  # too few
    # pooled: Pearson of the ranks (ties share the mean rank)
    ranks_signal = [8, 7, 2, 4, 5, 3, 6, 9, 1]
    ranks_change = [9, 7.5, 2.5, 5, 6, 4, 1, 7.5, 2.5]
    pooled = statistics.correlation(ranks_signal, ranks_change)
    assert first["pooled"] == {"rho": pytest.approx(pooled), "n": 9}
    assert second["pooled"]["rho"] == pytest.approx(-pooled) and second["spearman"]["a"]["rho"] == pytest.approx(-1)
    # Leave a out: fitted on b and c (5 counted), "gain when S1 > 0.05" gets 4 right (0.275 ties; the lower wins);
    # on a's 3 counted cells it is right 3 times. Leave b out: 0.05 separates a and c; b: 2 of 3. Leave c out: 2 of 2.
    folds = first["loco"]["folds"]
    found = {corpus: (f["threshold"], f["direction"], f["right"], f["n"], f["fitted_on"]) for corpus, f in folds.items()}
    assert found == {"a": (pytest.approx(0.05), 1, 3, 3, 5), "b": (pytest.approx(0.05), 1, 2, 3, 5),
                     "c": (pytest.approx(0.05), 1, 2, 2, 6)}
    assert first["loco"]["agreement"] == pytest.approx(7 / 8) and first["loco"]["n"] == 8
    # Minus the signal: "gain when S2 < t"; the ties now go to the lowest of the mirrored thresholds.
    folds = second["loco"]["folds"]
    found = {corpus: (f["threshold"], f["direction"], f["right"]) for corpus, f in folds.items()}
    assert found == {"a": (pytest.approx(-0.275), -1, 2), "b": (pytest.approx(-0.05), -1, 2),
                     "c": (pytest.approx(-0.175), -1, 2)}
    assert second["loco"]["agreement"] == pytest.approx(6 / 8)
    empty = figures["signals"]["token_crops/uniformity"]  # never logged
    assert empty["pooled"] == {"rho": None, "n": 0} and empty["loco"]["agreement"] is None
    assert "  leave b out: 0.67 of 3 counted (gain when change > 0.05; fitted on 5)" in printed
    # The criterion for a label-free verdict: 8 counted cells (4 gains, 4 losses) at 7/8 fall short twice.
    assert first["support"] == {"supports": False, "gains": 4, "losses": 4, "trivial": pytest.approx(0.5),
                                "why_not": ["8 counted cells (< 20)", "agreement 0.88 (< 0.9)"]}
    rule = first["rule_all"]  # on all 8: "gain when S1 > 0.05" is right 7 times (0.15 in b is the miss)
    assert (rule["threshold"], rule["direction"], rule["right"], rule["n"]) == (pytest.approx(0.05), 1, 7, 8)
    assert "  supports a label-free verdict: no: 8 counted cells (< 20); agreement 0.88 (< 0.9)" in printed
    # Gain detection: every cell, a detected gain (low > 0) against the rest. Leave a out: "gain when S1 > 0.05"
    # (4 of b and c's 5) gets a's 4 right; leave b out: 0.125 separates a and c, right on 1 of b's 3; leave c out:
    # 0.075 (6 of a and b's 7) gets c's 2 right.
    folds = first["detection"]["folds"]
    found = {corpus: (f["threshold"], f["right"], f["n"]) for corpus, f in folds.items()}
    assert found == {"a": (pytest.approx(0.05), 4, 4), "b": (pytest.approx(0.125), 1, 3), "c": (pytest.approx(0.075), 2, 2)}
    assert first["detection"]["agreement"] == pytest.approx(7 / 9)
    assert first["detection"]["majority"] == 5  # 4 detected gains of 9: always "no gain" is right 5 times
    assert "  gain detection, corpus left out: 0.78 of 9 cells (always the commoner verdict: 5 right)" in printed


def test_one_corpus_gives_the_figures_within_it(tmp_path):
    printed, figures = run(write_grid(tmp_path / "a", "a"))
    assert "leave-one-corpus-out is not possible" in printed
    within = figures["signals"][S1]["within"]
    assert (within["threshold"], within["direction"], within["right"], within["n"]) == (pytest.approx(0.05), 1, 3, 3)
    assert "loco" not in figures["signals"][S1]


def test_a_folder_without_signals_is_named(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: GRID_DIR: no signals.csv in {tmp_path}; expected a "
                                                "`lightning reproduce` output folder"]


def test_the_markdown_table_has_a_row_per_signal_with_the_printed_figures(tmp_path):
    grids = [write_grid(tmp_path / corpus, corpus) for corpus in GRIDS]
    printed, figures = run(*grids, "--markdown")
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert table[0] == ("| signal (last layer, change step 0 -> end) | Spearman a | Spearman b | Spearman c | "
                        "Spearman pooled | sign agreement, corpus left out | gain detection, corpus left out (always the commoner) | "
                        "supports a verdict |")
    pooled = figures["signals"][S1]["pooled"]["rho"]
    assert f"| {S1} | +1.00 (4) | -0.50 (3) | - (2) | {pooled:+.2f} (9) | 7 of 8 | 7 of 9 (5) | no |" in table
    assert len(table) == 2 + len(figures["signals"])


def test_the_summarys_study_is_what_the_script_finds_in_the_published_grids():
    """``verdict.STUDY``, which the end-of-fit summary quotes, against the grids in docs/results/signals/."""
    sys.path.insert(0, str(SCRIPT.parents[1]))
    from benchmarks.signal_agreement import figures, read_grids

    from lightning_app.probes.verdict import STUDY, Rule

    grids = sorted(str(path.parent) for path in (SCRIPT.parents[1] / "docs" / "results" / "signals").glob("*/signals.csv"))
    assert len(grids) >= 3
    by_corpus, columns = read_grids(grids)
    cells = [cell for corpus in by_corpus.values() for cell in corpus]
    found = {column: figures(by_corpus, column) for column in columns}
    supported = tuple(Rule(column, f["rule_all"]["threshold"], f["rule_all"]["direction"], f["loco"]["right"],
                           f["loco"]["n"]) for column, f in found.items() if f["support"]["supports"])
    rho = {column: f["pooled"]["rho"] for column, f in found.items() if f["pooled"]["rho"] is not None}
    closest = max(rho, key=rho.get)
    assert STUDY.corpora == tuple(by_corpus) and STUDY.runs == len(cells)
    assert STUDY.gains == sum(cell["change_low"] > 0 for cell in cells)
    assert STUDY.losses == sum(cell["change_high"] < 0 for cell in cells)
    assert STUDY.supported == supported
    assert (STUDY.closest, STUDY.closest_rho) == (closest, pytest.approx(rho[closest], abs=0.005))
