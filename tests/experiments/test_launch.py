"""The grid's launchers: ``--parallel 2`` runs cells side by side with the same results as one at a
time and leaves no orphan when killed; ``--launcher slurm`` runs every cell once as a task of a job
array (here a fake SLURM, tests/experiments/fake_slurm.py), requeued and resumed exactly after
SIGUSR1, never submitted twice; bad launcher options are one line."""

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightning_app.cli import main
from lightning_app.errors import ConfigError
from lightning_app.experiments.grid import Hardware
from lightning_app.experiments.launch import slot_environments
from lightning_app.experiments.logs import read_scalars
from lightning_app.packaged import packaged_path
from tests.experiments.holds import REQUEUE_SIGNAL, held_recipe, python_path, recipes_option
from tests.helpers import LAUNCH_ENV, Launched, fork_cells, launches

CELLS = ("dropout/seed1", "crops/seed1")
FAKE = Path(__file__).with_name("fake_slurm.py")


def grid_args(model, corpus, output, *extra) -> list[str]:
    """Two cells of 8 steps (probes and checkpoints at steps 4 and 8) on 300 BBC articles."""
    return ["reproduce", f"--source={corpus}", "--text_field=body", "--label_field=topic", "--name=bbc",
            f"--model={model}", "--settings=[untrained, dropout, crops]", "--seeds=[1]", "--budget.steps=8",
            "--budget.batch_size=8", "--budget.lr=1e-3", "--budget.max_length=32", "--probe.every=4",
            "--probe.documents=null", "--probe.max_length=32", "--probe.cv_folds=2",
            "--hardware.accelerator=cpu", "--hardware.num_workers=0", f"--output={output}", *extra]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "bbc.jsonl"
    paths = sorted(packaged_path("packaged:bbcnews").glob("*/*.txt"))[::7][:300]
    path.write_text("".join(json.dumps({"body": p.read_bytes().decode("latin-1"), "topic": p.parent.name}) + "\n"
                            for p in paths))
    return path


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, tiny_model, corpus) -> Path:
    """The reference: the two cells one after the other, as ``lightning reproduce`` always did, with
    as many math threads as each of 2 parallel cells gets."""
    output = tmp_path_factory.mktemp("sequential") / "results"
    with pytest.MonkeyPatch.context() as patch:
        half_the_threads(patch)
        fork_cells(patch)
        main(grid_args(tiny_model, corpus, output))
    return output


def half_the_threads(monkeypatch) -> None:
    """The math threads of one of 2 cells at once (float sums, so results, depend on the thread count)."""
    for name, value in slot_environments(2, Hardware(accelerator="cpu"))[0].items():
        monkeypatch.setenv(name, value)


def assert_same_results(output: Path, reference: Path) -> None:
    """Every probe, drift and loss value of every cell, and the report's tables, as in ``reference``."""
    for cell in CELLS:
        ours, theirs = read_scalars(output / cell / "tensorboard"), read_scalars(reference / cell / "tensorboard")
        assert {tag for tag in ours if tag.startswith(("probe/", "drift", "train/loss"))} == \
            {tag for tag in theirs if tag.startswith(("probe/", "drift", "train/loss"))}
        assert list(ours["train/loss"]) == list(range(8))
        for tag, series in theirs.items():
            if tag.startswith(("probe/", "drift", "train/loss", "val/")):
                assert ours[tag] == series, (cell, tag)
    tables = []
    for folder in (output, reference):
        rows = list(csv.DictReader((folder / "results.csv").open()))
        tables.append(([{key: value for key, value in row.items() if key != "minutes"} for row in rows],
                       (folder / "layers.csv").read_text()))
    assert tables[0] == tables[1]
    assert [row["setting"] for row in tables[0][0]] == ["untrained", "dropout", "crops"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_cells_at_once_overlap_and_match_the_sequential_run(tmp_path, tiny_model, corpus, sequential, capsys,
                                                               monkeypatch):
    # Each cell waits at the start of its step 1 until the other has reached its own: both finish only
    # if they ran at the same time (one after the other, the first would wait in vain and fail).
    output, first, second = tmp_path / "results", tmp_path / "dropout-at-step-1", tmp_path / "crops-at-step-1"
    recipes = {"dropout": held_recipe(tmp_path, "configs/dropout.yaml", step=1, marker=str(first),
                                      release=str(second), seconds=120),
               "crops": held_recipe(tmp_path, "configs/crop.yaml", step=1, marker=str(second),
                                    release=str(first), seconds=120)}
    monkeypatch.setenv("PYTHONPATH", python_path())
    fork_cells(monkeypatch)
    main(grid_args(tiny_model, corpus, output, "--parallel=2", recipes_option(**recipes)))
    assert first.exists() and second.exists()
    assert_same_results(output, sequential)
    for cell in CELLS:
        assert launches(output / cell) == 1 and (output / cell / "done.json").exists()
    assert "[2/2] crops/seed1: lightning fit" in capsys.readouterr().out
    assert (output / "report.md").exists()


def fit_processes(output: Path) -> list[int]:
    """Pids of the running ``lightning fit`` processes of cells in ``output``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"fit" in command and any(str(output).encode() in word for word in command):
                pids.append(int(entry.name))
    return pids


def gone(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not [pid for pid in pids if Path(f"/proc/{pid}").exists() and
                (Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z")]:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_stopping_the_runner_stops_its_cells(tmp_path, tiny_model, corpus, signum):
    """Only the runner is signalled (not its process group), once both cells have started: its cells
    still end with it. Each cell would wait at the start of its step 1 until killed, so neither can
    finish first however long the runner's stop takes."""
    output, held = tmp_path / "results", (tmp_path / "dropout-at-step-1", tmp_path / "crops-at-step-1")
    recipes = recipes_option(dropout=held_recipe(tmp_path, "configs/dropout.yaml", step=1, marker=str(held[0]),
                                                 seconds=120),
                             crops=held_recipe(tmp_path, "configs/crop.yaml", step=1, marker=str(held[1]),
                                               seconds=120))
    # `python -m lightning_app reproduce` as a process (forked from the fork server: tests.helpers.Launched)
    runner = Launched(grid_args(tiny_model, corpus, output, "--parallel=2", recipes),
                      env={**os.environ, **LAUNCH_ENV, "PYTHONPATH": python_path()})
    try:
        deadline = time.monotonic() + 120
        while len(fit_processes(output)) < 2:
            assert runner.poll() is None and time.monotonic() < deadline, "the two cells never started"
            time.sleep(0.05)
        cells = fit_processes(output)
        runner.send_signal(signum)
        runner.wait(timeout=60)
        # SIGTERM: the runner stopped its cells and exited itself (128 + 15)
        assert runner.returncode == (143 if signum == signal.SIGTERM else -signal.SIGKILL)
        assert gone(cells, 15), f"lightning fit outlived its runner ({signal.Signals(signum).name})"
        for cell in CELLS:  # stopped, not finished
            assert not (output / cell / "export" / "config.json").exists()
    finally:
        for pid in fit_processes(output):
            os.kill(pid, signal.SIGKILL)
        if runner.poll() is None:
            runner.send_signal(signal.SIGKILL)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch, squeue, scontrol, scancel and srun on PATH, all tests/experiments/fake_slurm.py; on the
    way out every task still running is killed."""
    state, bin_dir = tmp_path / "slurm-state", tmp_path / "bin"
    state.mkdir()
    bin_dir.mkdir()
    for name in ("sbatch", "squeue", "scontrol", "scancel", "srun"):
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n".replace(
            f"{FAKE} ", f"{FAKE} {name} "))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(state))
    yield state
    for pids in (state / "supervisors", *(state / "steps").glob("*")):
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)


def queue(state: Path) -> dict[str, str]:
    return {entry.name: entry.read_text() for entry in (state / "queue").iterdir()}


def calls(state: Path, command: str) -> list[str]:
    """The fake SLURM commands run so far, e.g. every ``sbatch ...``."""
    log = state / "calls.log"
    return [line for line in log.read_text().splitlines() if line.startswith(command + " ")] if log.exists() else []


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_slurm_array_runs_every_cell_once_requeues_and_resumes_exactly(tmp_path, tiny_model, corpus, sequential,
                                                                       fake_slurm, monkeypatch, capsys):
    half_the_threads(monkeypatch)  # the 2 tasks run side by side here
    # The first cell is held at the start of its step 1 until ``go`` exists (the command is rerun while
    # both tasks run), the second at the start of its step 5, after its step-4 checkpoint, until it has
    # received SIGUSR1: the requeue comes at the end of step 5 however fast or loaded the machine is.
    go, first_held, second_held = tmp_path / "go", tmp_path / "dropout-at-step-1", tmp_path / "crops-at-step-5"
    recipes = recipes_option(
        dropout=held_recipe(tmp_path, "configs/dropout.yaml", step=1, marker=str(first_held), release=str(go)),
        crops=held_recipe(tmp_path, "configs/crop.yaml", step=5, marker=str(second_held), release=REQUEUE_SIGNAL))
    monkeypatch.setenv("PYTHONPATH", python_path())
    output = tmp_path / "results"
    args = grid_args(tiny_model, corpus, output, "--launcher=slurm", "--slurm.partition=cpu",
                     "--slurm.gpus_per_cell=0", "--slurm.time=00:30:00", "--slurm.sbatch_options=[--qos=short]",
                     recipes)
    main(args)  # submits and returns
    printed = capsys.readouterr().out
    assert "submitted SLURM array job 100: 2 cell(s)" in printed and "--report_only true" in printed
    assert set(queue(fake_slurm)) == {"100_0", "100_1"}
    script = (output / "slurm" / "array-1.sbatch").read_text()
    for option in ("--array=0-1", "--signal=SIGUSR1@90", "--requeue", "--partition=cpu", "--time=00:30:00",
                   "--qos=short", "--cpus-per-task=8"):
        assert f"#SBATCH {option}\n" in script
    assert "--gres" not in script
    tasks = json.loads((output / "slurm" / "array-1.json").read_text())["cells"]
    assert [f"{task['setting']}/seed{task['seed']}" for task in tasks] == list(CELLS)

    second = output / CELLS[1]
    deadline = time.monotonic() + 300
    while not (first_held.exists() and second_held.exists()):
        assert len(queue(fake_slurm)) == 2, f"a task ended before its hold: {queue(fake_slurm)}"
        assert time.monotonic() < deadline, "the cells never reached their holds"
        time.sleep(0.05)
    main(args)  # rerun while the tasks run: nothing new is submitted
    assert "nothing to submit: 2 cell(s) pending or running" in capsys.readouterr().out
    assert len(calls(fake_slurm, "sbatch")) == 1
    go.touch()
    subprocess.run(["scancel", "--signal=USR1", "100_1"], check=True)  # the task's runner passes it on
    while queue(fake_slurm):
        assert time.monotonic() < deadline, f"tasks still queued: {queue(fake_slurm)}"
        time.sleep(0.5)

    assert "scontrol requeue 100_1" in calls(fake_slurm, "scontrol")
    assert sorted((fake_slurm / "runs.log").read_text().split()) == ["100_0", "100_1", "100_1"]
    assert launches(output / CELLS[0]) == 1
    fit_log = (second / "fit.log").read_text().splitlines()
    resumed = [line for line in fit_log if line.startswith("$ ")]
    assert len(resumed) == 2 and "--ckpt_path" not in resumed[0]
    # The requeue saved hpc_ckpt_1.ckpt and, as the run stopped, last.ckpt of the same step: the newest resumes.
    assert any(resumed[1].endswith(f"--config {output / 'slurm' / 'slurm.yaml'} --ckpt_path {path}")
               for path in (second / "hpc_ckpt_1.ckpt", second / "checkpoints" / "last.ckpt"))
    assert not list(second.glob("hpc_ckpt_*.ckpt")) and not (second / "checkpoints").exists()  # removed when done
    # The requeue came at the end of step 5: validations logged at 3 and 7 (after steps 4 and 8), none
    # out of turn as the run stopped.
    assert sorted(read_scalars(second / "tensorboard")["val/loss"]) == [3, 7]

    main([*args, "--report_only=true"])
    report = (output / "report.md").read_text()
    assert "| dropout |" in report and "| crops |" in report and "incomplete" not in report
    assert_same_results(output, sequential)  # the requeued cell ends as the uninterrupted run
    main(args)  # every cell done: nothing to submit
    assert len(calls(fake_slurm, "sbatch")) == 1


@pytest.mark.slow
def test_report_only_launches_nothing_and_reports_the_finished_cells(tmp_path, tiny_model, corpus, sequential,
                                                                     capsys):
    output = tmp_path / "results"
    shutil.copytree(sequential / CELLS[0], output / CELLS[0])  # a finished cell, moved here with its paths
    config = output / CELLS[0] / "config.yaml"
    config.write_text(config.read_text().replace(str(sequential), str(output)))
    main(grid_args(tiny_model, corpus, output, "--report_only=true"))
    assert not (output / CELLS[1]).exists()
    report = (output / "report.md").read_text()
    assert "**incomplete**: 1 of 2 cells finished; still to come: crops/seed1" in report
    assert "| dropout |" in report and "| crops |" not in report


@pytest.mark.parametrize(("option", "message"), [
    ("--launcher=kubernetes", "launcher: expected one of local, slurm, got 'kubernetes'"),
    ("--parallel=0", "parallel: expected >= 1 cells at once, got 0"),
    ("--parallel=64", "parallel: expected at most"),
    ("--slurm.partion=gpu", "unrecognized arguments: --slurm.partion=gpu"),
    ("--slurm={partion: gpu}", "Group 'slurm' does not accept option 'partion'"),
])
def test_bad_launcher_options(tmp_path, tiny_model, capsys, option, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", f"--model={tiny_model}", f"--output={tmp_path / 'out'}", "--hardware.accelerator=cpu",
              option])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("option", "message"), [
    ("--slurm.partition=gpux", "slurm.partition: no partition 'gpux' on this cluster (Partition gpux not found)"),
    ("--hardware.devices=2", "hardware.devices: the slurm launcher runs each cell as one process on one device"),
    ("--slurm.sbatch_options=[qos=long]", "slurm.sbatch_options: expected sbatch options such as --qos=long"),
])
def test_bad_slurm_options(tmp_path, tiny_model, fake_slurm, capsys, option, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", f"--model={tiny_model}", f"--output={tmp_path / 'out'}", "--launcher=slurm", option])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not calls(fake_slurm, "sbatch")


def test_slurm_launcher_needs_sbatch(tmp_path, tiny_model, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit):
        main(["reproduce", f"--model={tiny_model}", f"--output={tmp_path / 'out'}", "--launcher=slurm"])
    assert "error: launcher: 'slurm' needs `sbatch` on PATH" in capsys.readouterr().err


def test_cells_get_their_own_gpus_or_share_of_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    cpu = slot_environments(4, Hardware(accelerator="cpu"))
    assert cpu == [{"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}] * 4
    assert slot_environments(1, Hardware(accelerator="cpu")) == [{}]  # one cell: the environment as it is
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    gpu = slot_environments(2, Hardware(accelerator="gpu", devices=2))
    assert [env["CUDA_VISIBLE_DEVICES"] for env in gpu] == ["4,5", "6,7"] and gpu[0]["OMP_NUM_THREADS"] == "4"
    with pytest.raises(ConfigError, match="3 cells at once with 2 GPU"):
        slot_environments(3, Hardware(accelerator="gpu", devices=2))
    with pytest.raises(ConfigError, match="expected a number of GPUs per cell, got 'auto'"):
        slot_environments(2, Hardware(accelerator="gpu", devices="auto"))
