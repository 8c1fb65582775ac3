"""The training and embedding benchmarks on a tiny model: their JSON lines and their checks."""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import pytest

from tests.helpers import LAUNCH_ENV, run_lightning

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


ENV = {**os.environ, **LAUNCH_ENV, "TOKENIZERS_PARALLELISM": "false"}


def run_benchmark(script: Path, *args: str) -> str:
    """``python SCRIPT ARGS`` as a process (forked from the fork server, tests.helpers.Launched) that
    must exit 0; its stdout."""
    return run_lightning(list(args), env=ENV, timeout=300, script=script)[0]


@pytest.mark.slow
def test_train_throughput_ends_with_the_figures_of_identical_batches(tiny_model):
    stdout = run_benchmark(SCRIPT, "--model", tiny_model, "--views", "crops", "--steps", "1", "--repeats", "1",
                           "--warmup", "1", "--batch-size", "8", "--mm-size", "256")
    figures = json.loads(stdout.strip().splitlines()[-1])
    assert figures["ratio"] > 0 and figures["ratio_same_batches"] > 0
    assert 0 < figures["real_token_share_no_cut"] <= figures["real_token_share"] <= 1
    assert 0 < figures["peak_share"] <= 1
    crops = figures["views"]["crops"]
    assert set(crops["pairs_per_s"]) == {"ours", "sentence-transformers", "sentence-transformers, same batches",
                                         "ours, no padding cut"}
    assert all(0 < s["min"] <= s["median"] <= s["max"] for s in crops["pairs_per_s"].values())
    assert crops["peak_gflops"]["median"] > 0
    # the trainer fed our batches got our rows in every step, the default one the same pairs
    assert "sentence-transformers, same batches: same pairs; 2 of 2 steps with our exact rows" in stdout
    assert "sentence-transformers: same pairs;" in stdout
    assert stdout.count("load average at start") == 1 and "load average at end" in stdout


def test_train_throughput_refuses_an_unknown_view(monkeypatch, capsys):
    """The script's own argument check, run in this process (it stops before any work)."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--views", "crops,tokens"])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the checkout first
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert done.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: --views: expected names among crops, dropout, got tokens"


EMBED_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "embed_throughput.py"


@pytest.mark.slow
def test_embed_throughput_ends_with_the_equal_and_default_ratios(tiny_model):
    stdout = run_benchmark(EMBED_SCRIPT, "--model", tiny_model, "--documents", "40", "--max-length", "32",
                           "--batch-size", "16", "--repeats", "1", "--skip", "rss,map")
    figures = json.loads(stdout.strip().splitlines()[-1])
    machine = figures["hardware"]
    assert machine["auto_precision"] == ("bf16-mixed" if machine["bf16_native"] else "32-true")
    assert figures["ratio_equal"] > 0 and figures["ratio_default"] > 0
    assert figures["min_cosine_ours_vs_encode_32"] > 0.9999  # the same float32 forward
    arms = {"ours_32", "encode_32"} | ({"ours_bf16", "encode_bf16"} if machine["bf16_native"] else set())
    assert set(figures["docs_per_s"]) == arms and (figures["ratio_equal_bf16"] is not None) == machine["bf16_native"]
    assert len(figures["load_averages"]) == len(figures["ratio_equal_per_repeat"]) == 1
    assert "repeat 0: docs/s ours_32" in stdout
