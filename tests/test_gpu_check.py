"""benchmarks/gpu_check.sh: its CPU smoke run writes every step's figures into one JSON file, a
failed or cut-short step is recorded and the check goes on, and bad input stops it before any work."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
HELPER = ROOT / "benchmarks" / "gpu_check.py"
ENV = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}


def check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=900)


def commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_run_writes_every_figure(tmp_path):
    done = check("--smoke", "--out", "check.json", cwd=tmp_path)  # a relative --out is the caller's folder's
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((tmp_path / "check.json").read_text())
    assert result["smoke"] is True and result["all_steps_ok"] is True
    assert result["commit"] == commit() and result["torch"] == torch.__version__
    assert result["device"].startswith("cpu")
    assert abs(datetime.datetime.fromisoformat(result["date"]) - datetime.datetime.now(datetime.timezone.utc)) \
        < datetime.timedelta(hours=1)
    steps = result["steps"]
    assert list(steps) == ["fit", "train_throughput", "train_throughput_compile", "cached_memory"]
    for name, step in steps.items():
        assert step["status"] == "ok" and step["returncode"] == 0, (name, step)
        assert 0 < step["wall_s"] < step["limit_s"] + 20
        assert step["peak_memory_mib"] > 100, name  # a Python process holding torch
        assert "error" not in step["figures"], (name, step["figures"])

    fit = steps["fit"]["figures"]
    assert fit["steps"] == 12 and fit["batch_size"] == 8 and fit["logged_intervals"] >= 4
    low, high = fit["step_time_range_s"]
    assert 0 < low <= fit["step_time_s"] <= high
    assert fit["steps_per_s"] == pytest.approx(1 / fit["step_time_s"], rel=0.01)
    assert fit["samples_per_s"] == pytest.approx(8 / fit["step_time_s"], rel=0.01)
    assert fit["epoch_steps"] == 3000 and fit["epoch_s"] == pytest.approx(3000 * fit["step_time_s"], rel=0.01)
    assert fit["throughput_monitor_samples_per_s"] > 0 and fit["throughput_monitor_tokens_per_s"] > 0
    assert fit["mteb_evaluations"] == 2 and -1 <= fit["mteb_mean"] <= 1  # at the start and at step 12 (a Spearman)
    assert fit["probe_evaluations"] == 3 and 0 <= fit["probe_knn_acc"] <= 1  # steps 0, 6 and 12

    eager, compiled = steps["train_throughput"]["figures"], steps["train_throughput_compile"]["figures"]
    assert eager["samples_per_s"] > 0 and eager["vs_sentence_transformers"] > 0
    assert compiled["samples_per_s"] > 0 and compiled["vs_eager"] > 0  # the compiled system, timed beside eager
    assert isinstance(eager["json"], dict) and compiled["json"]["views"]["dropout"]["compiled_difference_dropout_off"]["loss"] >= 0
    assert "--compile" in steps["train_throughput_compile"]["command"]
    assert "--compile" not in steps["train_throughput"]["command"]

    cached = steps["cached_memory"]["figures"]
    assert cached["plain_pairs"] == 4 and cached["cached_pairs"] == 16
    assert cached["plain_mib"] > 0 and cached["cached_mib"] > 0
    assert cached["ratio"] == pytest.approx(cached["cached_mib"] / cached["plain_mib"], abs=0.02)

    targets = result["targets"]
    assert set(targets) == {"mfu_bf16", "epoch_24k_batch64_s"}
    assert targets["epoch_24k_batch64_s"]["value"] == fit["epoch_s"]
    assert all(t["met"] is None and "smoke" in t["note"] for t in targets.values())


def test_failed_and_timed_out_steps_are_recorded_and_the_check_goes_on(tmp_path):
    meta = {"date": "2026-01-01T00:00:00+00:00", "commit": "abc1234", "smoke": False, "device": "NVIDIA H200",
            "torch": "2.13.0", "mode": "full"}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    step = lambda name, limit, code: subprocess.run(  # noqa: E731
        [sys.executable, str(HELPER), "step", "--work", str(tmp_path), "--name", name, "--limit", str(limit),
         "--device", "cpu", "--", sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    for done in [step("fit", 60, "import sys; print('boom in the fit'); sys.exit(3)"),
                 step("train_throughput", 1, "import time; time.sleep(30)"),
                 step("cached_memory", 60, 'print(\'{"plain_pairs": 64, "cached_pairs": 1024, "plain_mib": 900, '
                                           '"cached_mib": 1000, "ratio": 1.111}\')')]:
        assert done.returncode == 0, done.stderr
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(HELPER), "report", "--work", str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    steps = result["steps"]
    assert steps["fit"]["status"] == "failed" and steps["fit"]["returncode"] == 3
    assert any("boom in the fit" in line for line in steps["fit"]["log_tail"])
    assert steps["train_throughput"]["status"] == "timeout" and steps["train_throughput"]["wall_s"] < 20
    assert steps["train_throughput_compile"] == {"status": "not run"}
    assert steps["cached_memory"]["status"] == "ok"
    assert steps["cached_memory"]["figures"]["cached_mib"] == 1000 and "log_tail" not in steps["cached_memory"]
    assert result["all_steps_ok"] is False
    assert result["targets"]["mfu_bf16"]["met"] is None and result["targets"]["epoch_24k_batch64_s"]["met"] is None


def test_mfu_and_epoch_targets_are_judged_from_the_figures(tmp_path):
    log = tmp_path / "train_throughput.log"
    log.write_text("  ours: 1234.5 samples/s, 98765 tokens/s, 420.0 TFLOP/s, MFU 42.5% of 989 TFLOP/s bf16\n"
                   '{"metric": "train_samples_per_s_vs_sentence_transformers", "ours": 1234.5, "ratio": 1.5, '
                   '"extra": {"nested": 1}}\n')
    from benchmarks import gpu_check

    figures = gpu_check.throughput_figures(log)
    assert figures["samples_per_s"] == 1234.5 and figures["tokens_per_s"] == 98765
    assert figures["mfu"] == pytest.approx(0.425) and figures["vs_sentence_transformers"] == 1.5


@pytest.mark.parametrize("args, message", [
    (["--fast"], "error: --fast: expected --smoke, --out FILE or --help"),
    (["--smoke", "--out"], "error: --out: expected a file name after it"),
    (["--smoke", "--out", "missing/check.json"], "error: --out: expected a file in an existing, writable folder, "
                                                 "got {tmp}/missing/check.json"),
    (["--smoke", "--out", "."], "error: --out: expected a file name, got the folder {tmp}/."),
])
def test_bad_input_stops_before_any_work(tmp_path, args, message):
    (tmp_path / "keep.txt").write_text("kept")
    done = check(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [message.format(tmp=tmp_path)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where no CUDA device is visible")
def test_the_full_check_needs_a_gpu(tmp_path):
    done = check("--out", "check.json", cwd=tmp_path)
    assert done.returncode == 2 and not (tmp_path / "check.json").exists()
    assert done.stderr.strip().splitlines() == [
        "error: --smoke: the full check needs a CUDA device and none is visible; pass --smoke for the small CPU run"]
