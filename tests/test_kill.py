"""Faults the way they happen: ``lightning fit`` as a process, SIGKILLed at a random moment or in the
middle of a checkpoint write, stopped by SIGTERM, SLURM's requeue signal or SIGKILL at each point of a
step, and a SLURM requeue of a 2-process DDP run; each resumed run must end with the weights and the
TensorBoard log of the uninterrupted run, and ``last.ckpt`` must hold the newest state."""

from __future__ import annotations

import io
import os
import random
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
from lightning import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from safetensors.torch import load_file

from lightning_app.model.load import read_checkpoint
from lightning_app.cli.preemption import AtomicCheckpointIO, LastIsNewest
from tests.helpers import LAUNCH_ENV, ROOT, Launched, assert_same_log, held_at, run_lightning, scalars

# Every test runs `python -m lightning_app` processes: forked from the fork server that has imported
# the package (tests.helpers.Launched), each a process of its own that the test signals or kills.
pytestmark = pytest.mark.slow

STEPS = 24  # not a multiple of the checkpoints' every_n_train_steps (10)
# The probe at test size: 100 BBC documents at the runs' 48 tokens (configs/crop.yaml: 500 at 128,
# most of a tiny run's time).
PROBE = ["--probe.corpora=[{max_documents: 100}]", "--probe.max_length=48"]


class StallingCheckpointIO(AtomicCheckpointIO):
    """The atomic checkpoint writer, stalled half-way through writing the checkpoint of step
    ``stall_at_step`` (after writing ``marker``), so a test can SIGKILL the process mid-write."""

    def __init__(self, stall_at_step: int, marker: str) -> None:
        super().__init__()
        self.stall_at_step = stall_at_step
        self.marker = marker

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if checkpoint.get("global_step") != self.stall_at_step:
            return super().save_checkpoint(checkpoint, path, storage_options)
        whole_save = torch.save

        def half_then_stall(obj, file, *args, **kwargs):
            buffer = io.BytesIO()
            whole_save(obj, buffer, *args, **kwargs)
            file.write(buffer.getvalue()[:buffer.tell() // 2])
            file.flush()
            Path(self.marker).write_text(str(path))
            time.sleep(600)

        torch.save = half_then_stall
        try:
            super().save_checkpoint(checkpoint, path, storage_options)
        finally:
            torch.save = whole_save


class MarkStep(Callback):
    """Writes ``marker`` at the end of training step ``step``: the moment a test sends its signal.
    With ``hold_for_sigterm`` that step's end waits (up to a minute) until the run has received the
    SIGTERM, so the signal lands in that step however fast the steps run. With ``hold_for_kill`` the
    marker is written once the step is over, its checkpoint included (at the start of the next
    step), and the run waits there (up to a minute) for the test's SIGKILL, so the kill lands after
    that step and before any later checkpoint."""

    def __init__(self, step: int, marker: str, hold_for_sigterm: bool = False, hold_for_kill: bool = False) -> None:
        self.step = step
        self.marker = marker
        self.hold_for_sigterm = hold_for_sigterm
        self.hold_for_kill = hold_for_kill

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step or self.hold_for_kill:
            return
        Path(self.marker).write_text(str(self.step))
        if self.hold_for_sigterm:
            keeper = next(callback for callback in trainer.callbacks if isinstance(callback, LastIsNewest))
            deadline = time.monotonic() + 60
            while not keeper.received and time.monotonic() < deadline:
                time.sleep(0.01)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self.step or not self.hold_for_kill:
            return
        Path(self.marker).write_text(str(self.step))
        time.sleep(60)  # the test's SIGKILL ends the run here
        raise RuntimeError(f"MarkStep: not killed within 60 s after step {self.step}")


class HoldBeforeStepLog(TensorBoardLogger):
    """The TensorBoard logger, held (after writing ``marker``) as Lightning is about to log the losses
    of training step ``hold_step`` (1-based): the step's checkpoint and ``last.ckpt`` are written, its
    losses not yet. A test SIGKILLs the run there."""

    def __init__(self, *args, hold_step: int = 0, marker: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hold_step, self.marker = hold_step, Path(marker)

    def log_metrics(self, metrics, step=None) -> None:
        if step == self.hold_step - 1 and "train/loss" in metrics and not self.marker.exists():
            self.marker.write_text(str(self.hold_step))
            time.sleep(60)  # the test's SIGKILL ends the run here
            raise RuntimeError(f"HoldBeforeStepLog: not killed within 60 s at step {self.hold_step}")
        super().log_metrics(metrics, step)


def mark(step: int, marker: Path, hold_for_sigterm: bool = False, hold_for_kill: bool = False) -> str:
    return ('--trainer.callbacks+={"class_path": "tests.test_kill.MarkStep", '
            f'"init_args": {{"step": {step}, "marker": "{marker}", "hold_for_sigterm": {str(hold_for_sigterm).lower()}, '
            f'"hold_for_kill": {str(hold_for_kill).lower()}}}}}')


def hold_at(point: str, step: int, marker: Path, wait_for: str) -> str | list[str]:
    if point == "before_step_log":
        return ["--trainer.logger.class_path=tests.test_kill.HoldBeforeStepLog",
                f"--trainer.logger.init_args.hold_step={step}", f"--trainer.logger.init_args.marker={marker}"]
    if point == "checkpoint_write":
        return ('--trainer.plugins={"class_path": "tests.test_kill.StallingCheckpointIO", '
                f'"init_args": {{"stall_at_step": {step}, "marker": "{marker}"}}}}')
    return held_at(point, step, marker, wait_for)


def fit_command(run_dir: Path, model: str, *extra: str, config: str = "crop.yaml") -> list[str]:
    """The arguments of ``python -m lightning_app`` (``Launched`` runs them as a process)."""
    return ["fit", "--config", str(ROOT / "configs" / config),
            f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}",
            "--trainer.logger.init_args.version=0", f"--model.model={model}", "--model.lr=1e-3",
            f"--trainer.max_steps={STEPS}", "--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false",
            "--data.batch_size=8", "--data.max_length=48", "--data.shuffle_buffer=200", "--data.num_workers=2",
            *PROBE, *extra]


ENV = {**os.environ, **LAUNCH_ENV}


def run(command: list[str], timeout: int = 400, env: dict | None = None) -> None:
    run_lightning(command, env=env or ENV, timeout=timeout)


def start(command: list[str], env: dict | None = None) -> Launched:
    """A process in its own session, so a kill of its group reaches its dataloader workers too."""
    return Launched(command, env=env or ENV)


def wait_for(path: Path, process: Launched, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.05)


def kill_group(process: Launched) -> None:
    assert process.poll() is None, "the run had already ended: nothing was killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def exported(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "crop" / "version_0" / "export" / "model.safetensors")


def assert_last_is_final(checkpoints: Path) -> None:
    """``last.ckpt`` links to the checkpoint of the final step, and no ``last-v1.ckpt`` was written."""
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == STEPS
    assert os.readlink(checkpoints / "last.ckpt") == f"step{STEPS:06d}.ckpt"
    assert sorted(p.name for p in checkpoints.glob("last*")) == ["last.ckpt"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run(fit_command(run_dir, tiny_model))
    return run_dir


@pytest.mark.timeout(600)
def test_the_end_of_fit_checkpoints_the_final_state(uninterrupted):
    checkpoints = uninterrupted / "crop" / "version_0" / "checkpoints"
    assert_last_is_final(checkpoints)
    state = {k.removeprefix("encoder.backbone."): v for k, v in read_checkpoint(checkpoints / "last.ckpt")["state_dict"].items()}
    assert largest_difference(exported(uninterrupted), state) == 0.0


@pytest.mark.timeout(900)
def test_a_run_sigkilled_at_a_random_moment_resumes_to_the_uninterrupted_weights(uninterrupted, tmp_path, tiny_model):
    command = fit_command(tmp_path, tiny_model)
    checkpoints = tmp_path / "crop" / "version_0" / "checkpoints"
    seed = int(os.environ.get("KILL_STEP_SEED", random.randrange(2**32)))
    step = random.Random(seed).randint(11, STEPS - 1)  # after the step-10 checkpoint, before the end
    print(f"SIGKILL after step {step} (KILL_STEP_SEED={seed} repeats it)")
    process = start([*command, mark(step, tmp_path / "reached", hold_for_kill=True)])
    wait_for(tmp_path / "reached", process)  # the run waits there for the kill
    kill_group(process)
    killed_at = read_checkpoint(checkpoints / "last.ckpt")["global_step"]
    print(f"SIGKILLed after step {step}, last.ckpt at step {killed_at}")
    assert killed_at == 10 * (step // 10)

    run([*command, f"--ckpt_path={checkpoints / 'last.ckpt'}"])
    difference = largest_difference(exported(uninterrupted), exported(tmp_path))
    print(f"max weight difference after a SIGKILL and resume (num_workers 2): {difference:.3g}")
    assert difference <= 1e-6
    assert_last_is_final(checkpoints)
    assert [step for step, _ in scalars(tmp_path / "crop" / "version_0", "train/loss")] == list(range(STEPS))
    assert_same_log(tmp_path / "crop" / "version_0", uninterrupted / "crop" / "version_0")


@pytest.mark.timeout(900)
def test_a_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint(uninterrupted, tmp_path, tiny_model):
    marker = tmp_path / "stalled"
    stalling = ('--trainer.plugins={"class_path": "tests.test_kill.StallingCheckpointIO", '
                f'"init_args": {{"stall_at_step": 20, "marker": "{marker}"}}}}')
    command = fit_command(tmp_path, tiny_model)
    checkpoints = tmp_path / "crop" / "version_0" / "checkpoints"
    process = start([*command, stalling])
    wait_for(marker, process)
    kill_group(process)
    assert marker.read_text() == str(checkpoints / "step000020.ckpt")
    assert not (checkpoints / "step000020.ckpt").exists()
    assert [p.name for p in checkpoints.glob(".step000020.ckpt.*.partial")], "the kill came after the write"
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 10  # the previous checkpoint loads

    run([*command, f"--ckpt_path={checkpoints / 'last.ckpt'}"])
    difference = largest_difference(exported(uninterrupted), exported(tmp_path))
    print(f"max weight difference after a SIGKILL mid-write and resume: {difference:.3g}")
    assert difference <= 1e-6
    assert_last_is_final(checkpoints)
    assert_same_log(tmp_path / "crop" / "version_0", uninterrupted / "crop" / "version_0")


@pytest.mark.timeout(600)
def test_sigterm_checkpoints_the_step_it_arrived_in_and_the_resume_is_exact(uninterrupted, tmp_path, tiny_model):
    command = fit_command(tmp_path, tiny_model)
    checkpoints = tmp_path / "crop" / "version_0" / "checkpoints"
    process = start([*command, mark(13, tmp_path / "reached", hold_for_sigterm=True)])
    wait_for(tmp_path / "reached", process)
    process.send_signal(signal.SIGTERM)  # during step 13's last hooks
    process.wait(timeout=300)
    stopped_at = read_checkpoint(checkpoints / "last.ckpt")["global_step"]
    assert stopped_at == 13 and os.readlink(checkpoints / "last.ckpt") == "step000013.ckpt"
    assert not (checkpoints / "step000010.ckpt").exists()  # save_top_k 1: replaced by the newer one

    run([*command, f"--ckpt_path={checkpoints / 'last.ckpt'}"])
    assert largest_difference(exported(uninterrupted), exported(tmp_path)) <= 1e-6
    assert_last_is_final(checkpoints)
    assert_same_log(tmp_path / "crop" / "version_0", uninterrupted / "crop" / "version_0")


def slurm_job(bin_dir: Path) -> dict:
    """A 1-task SLURM job whose ``scontrol`` (a fake one in ``bin_dir``) records its calls."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {bin_dir / "scontrol.calls"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    return {**ENV, "SLURM_JOB_ID": "4343", "SLURM_JOB_NAME": "embed-finetune", "SLURM_NTASKS": "1",
            "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
            "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


POINTS = ("mid_step", "step_end", "before_validation", "in_validation")
STOPS = [(how, point) for how in ("SIGTERM", "SIGUSR1", "SIGKILL") for point in POINTS] + \
    [("SIGKILL", "checkpoint_write"), ("SIGKILL", "before_step_log")]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("how, point", STOPS)
def test_a_run_stopped_at_any_point_of_a_step_resumes_to_the_uninterrupted_log_and_weights(
        how, point, uninterrupted, tmp_path, tiny_model):
    """Stopped in a validation step (10 or 20; a SIGKILL in step 20, after the step-10 checkpoint) and
    resumed: SIGTERM and SIGKILL from ``last.ckpt``, SIGUSR1 (SLURM's requeue) as the requeued job."""
    seed = int(os.environ.get("STOP_STEP_SEED", random.randrange(2**32)))
    step = 20 if how == "SIGKILL" else random.Random(seed).choice([10, 20])
    print(f"{how} at {point} of step {step} (STOP_STEP_SEED={seed} repeats it)")
    requeue = how == "SIGUSR1"
    env = slurm_job(tmp_path / "bin") if requeue else ENV
    command = fit_command(tmp_path, tiny_model, *(["--config", str(ROOT / "configs/slurm.yaml")] if requeue else []))
    marker = tmp_path / "reached"
    hold = hold_at(point, step, marker, how)
    process = start([*command, *([hold] if isinstance(hold, str) else hold)], env=env)
    wait_for(marker, process)
    if how == "SIGKILL":
        kill_group(process)
    else:
        process.send_signal(getattr(signal, how))
        process.wait(timeout=300)
    checkpoints = tmp_path / "crop" / "version_0" / "checkpoints"
    stopped_at = read_checkpoint(checkpoints / "last.ckpt")["global_step"]
    print(f"stopped; last.ckpt at step {stopped_at}")
    if requeue:
        assert process.returncode == 0
        assert (tmp_path / "bin" / "scontrol.calls").read_text().split() == ["requeue", "4343"]
        run(command, env=env)  # the requeued job: the same command, resumed from hpc_ckpt_1.ckpt
    else:
        run([*command, f"--ckpt_path={checkpoints / 'last.ckpt'}"])
    assert_same_log(tmp_path / "crop" / "version_0", uninterrupted / "crop" / "version_0")
    assert largest_difference(exported(uninterrupted), exported(tmp_path)) <= 1e-6
    assert_last_is_final(checkpoints)


@pytest.mark.timeout(900)
def test_a_run_killed_in_its_last_validation_resumes_to_the_uninterrupted_log(tmp_path, tiny_model):
    """The last step (20) is a validation step: no training step follows the resume to run that
    validation, so the resumed run runs it before it ends."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run(fit_command(whole, tiny_model, "--trainer.max_steps=20"))
    command = fit_command(killed, tiny_model, "--trainer.max_steps=20")
    process = start([*command, hold_at("in_validation", 20, tmp_path / "reached", "SIGKILL")])
    wait_for(tmp_path / "reached", process)
    kill_group(process)
    checkpoints = killed / "crop" / "version_0" / "checkpoints"
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 20  # written before the validation
    run([*command, f"--ckpt_path={checkpoints / 'last.ckpt'}"])
    assert_same_log(killed / "crop" / "version_0", whole / "crop" / "version_0")
    assert largest_difference(exported(whole), exported(killed)) <= 1e-6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_ranks(command: list[str], bin_dir: Path) -> list[Launched]:
    """Both tasks of a 2-task SLURM job step on one node, as ``srun`` would start them."""
    port = free_port()
    job = {"SLURM_JOB_ID": "4343", "SLURM_JOB_NAME": "embed-finetune", "SLURM_NTASKS": "2",
           "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
           "SLURM_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return [start(command, env={**ENV, **job, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)})
            for rank in (0, 1)]


def finish(ranks: list[Launched], seconds: int = 600) -> None:
    for process in ranks:
        process.wait(timeout=seconds)
    assert [process.returncode for process in ranks] == [0, 0]


@pytest.mark.timeout(1800)
def test_a_slurm_requeue_of_a_2_process_ddp_run_ends_with_the_uninterrupted_weights(tmp_path, tiny_model):
    """SIGUSR1 reaches rank 1 only: both ranks stop after the same step (rank 0 saves
    ``hpc_ckpt_1.ckpt`` and requeues through the fake ``scontrol``); the requeued job resumes from it
    by itself and ends with the weights of the same job never signalled."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)

    def command(run_dir: Path, *extra: str) -> list[str]:
        return [*fit_command(run_dir, tiny_model, "--config", str(ROOT / "configs/slurm.yaml"),
                             "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2",
                             "--trainer.max_steps=16", "--data.num_workers=0",
                             "--trainer.logger.init_args.version=slurm-4343"), *extra]

    finish(slurm_ranks(command(tmp_path / "whole"), bin_dir))
    assert not calls.exists()

    run_dir = tmp_path / "requeued"
    ranks = slurm_ranks(command(run_dir, mark(12, tmp_path / "reached")), bin_dir)
    wait_for(tmp_path / "reached", ranks[0])
    ranks[1].send_signal(signal.SIGUSR1)
    finish(ranks)
    saved = read_checkpoint(run_dir / "hpc_ckpt_1.ckpt")["global_step"]
    print(f"SIGUSR1 to rank 1 after step 12: both ranks stopped after step {saved}")
    assert 12 <= saved < 16
    assert calls.read_text().split() == ["requeue", "4343"]
    log_dir = run_dir / "crop" / "slurm-4343"
    assert read_checkpoint(log_dir / "checkpoints" / "last.ckpt")["global_step"] == saved

    finish(slurm_ranks(command(run_dir), bin_dir))  # the requeued job: the same command
    whole = load_file(tmp_path / "whole" / "crop" / "slurm-4343" / "export" / "model.safetensors")
    requeued = load_file(log_dir / "export" / "model.safetensors")
    difference = largest_difference(whole, requeued)
    print(f"max weight difference after a requeue of a 2-process DDP run: {difference:.3g}")
    assert difference <= 1e-6
    assert read_checkpoint(log_dir / "checkpoints" / "last.ckpt")["global_step"] == 16
    assert [step for step, _ in scalars(log_dir, "train/loss")] == list(range(16))
    assert_same_log(log_dir, tmp_path / "whole" / "crop" / "slurm-4343")
