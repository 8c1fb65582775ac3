"""Helpers shared by test modules (plain functions, two callbacks, and ``Launched``: ``python -m
lightning_app`` as a process without its imports); fixtures are in conftest.py.

A test module imports from here or from the package, never from another test module.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from lightning_app.cli.preemption import LastIsNewest, StepBoundaryRequeue

ROOT = Path(__file__).resolve().parents[1]


def save_tiny_model(folder, tokenizer, kind: str = "bert", dropout: float = 0.1, seed: int = 0,
                    positions: int = 520) -> str:
    """A random 2-layer encoder of the given family (``positions``: its position table), saved with the
    packaged tokenizer."""
    from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel, RobertaConfig, RobertaModel

    config_class, model_class = {"bert": (BertConfig, BertModel), "roberta": (RobertaConfig, RobertaModel),
                                 "mpnet": (MPNetConfig, MPNetModel)}[kind]
    config = config_class(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=positions, hidden_dropout_prob=dropout,
                          attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one TensorBoard scalar tag in a run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


TIMING = ("train/time", "validate/time")  # wall-clock seconds; so are the rates (*/device/*, *_per_sec)


def logged(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard folder but the timings, per tag as sorted (step, value) pairs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: sorted((e.step, e.value) for e in events.Scalars(tag)) for tag in events.Tags()["scalars"]
            if tag not in TIMING and "/device/" not in tag and not tag.endswith("_per_sec")}


def assert_same_log(ours: Path, theirs: Path) -> None:
    """Every tag, every step, once, with the uninterrupted run's values."""
    mine, reference = logged(ours), logged(theirs)
    assert sorted(mine) == sorted(reference)
    largest = 0.0
    for tag, points in reference.items():
        assert [step for step, _ in mine[tag]] == [step for step, _ in points], tag
        values = [value for _, value in points]
        assert [value for _, value in mine[tag]] == pytest.approx(values, rel=1e-5, abs=1e-6), tag
        largest = max([largest, *(abs(a - b) for (_, a), b in zip(mine[tag], values))])
    print(f"the log: {len(reference)} tags, {sum(map(len, reference.values()))} points, as uninterrupted "
          f"(largest value difference {largest:.3g})")


def make_datamodule(source, tokenizer_path="packaged:minilm", rank=0, world=1, **kwargs):
    """A ContrastiveDataModule set up for fit as rank ``rank`` of ``world`` (whole-document dropout
    views, batch 4, no workers unless given)."""
    from lightning_app.data.datamodule import ContrastiveDataModule
    from lightning_app.data.views import Dropout

    kwargs = {"view": Dropout(whole_document=True), "batch_size": 4, "num_workers": 0, "val_fraction": 0.2,
              **kwargs}
    dm = ContrastiveDataModule(source=source, tokenizer=tokenizer_path, **kwargs)
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, max_steps=10, accumulate_grad_batches=1)
    dm.setup("fit")
    return dm


def launches(cell: Path) -> int:
    """How many times a grid cell's ``lightning fit`` was started (one line per launch in fit.log)."""
    return sum(line.startswith("$ ") for line in (cell / "fit.log").read_text().splitlines())


class GradientsTo(L.Callback):
    """Saves rank 0's averaged gradients of the first step (DDP has all-reduced them by then)."""

    def __init__(self, path):
        self.path = path

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_rank == 0:
            grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            torch.save(grads, self.path)


class HoldAt(L.Callback):
    """Holds the run at ``point`` of training step ``step`` (1-based): ``mid_step`` (the step's batch
    handed out, before its forward pass), ``step_end`` (its last hooks, before its checkpoint and the
    logging of its losses), ``before_validation`` (the step trained and logged, its validation not
    begun) or ``in_validation`` (after the validation's first batch). It writes ``marker`` there and
    waits (up to a minute) until the run has received ``wait_for`` (``SIGTERM`` or ``SIGUSR1``, both
    held until a step's end) or, for ``SIGKILL``, until the test kills it."""

    HOOKS = {"mid_step": "on_train_batch_start", "step_end": "on_train_batch_end",
             "before_validation": "on_validation_start", "in_validation": "on_validation_batch_end"}

    def __init__(self, point: str, step: int, marker: str, wait_for: str) -> None:
        self.hook, self.step, self.marker, self.wait_for = self.HOOKS[point], step, Path(marker), wait_for

    def _hold(self, trainer, hook: str) -> None:
        step = trainer.global_step + (hook == "on_train_batch_start")
        if hook != self.hook or step != self.step or trainer.sanity_checking or self.marker.exists():
            return
        self.marker.write_text(str(step))
        holder = LastIsNewest if self.wait_for == "SIGTERM" else StepBoundaryRequeue
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.wait_for != "SIGKILL" and any(isinstance(c, holder) and c.received for c in trainer.callbacks):
                return
            time.sleep(0.01)
        raise RuntimeError(f"HoldAt: no {self.wait_for} within 60 s at {hook} of step {step}")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._hold(trainer, "on_train_batch_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._hold(trainer, "on_train_batch_end")

    def on_validation_start(self, trainer, pl_module) -> None:
        self._hold(trainer, "on_validation_start")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._hold(trainer, "on_validation_batch_end")


def held_at(point: str, step: int, marker: Path, wait_for: str) -> str:
    """The ``--trainer.callbacks+=`` option of a ``HoldAt``."""
    return ('--trainer.callbacks+={"class_path": "tests.helpers.HoldAt", "init_args": '
            f'{{"point": "{point}", "step": {step}, "marker": "{marker}", "wait_for": "{wait_for}"}}}}')


# ``python -m lightning_app`` as a process, without its 8 s of imports: the processes are forked from
# multiprocessing's fork server, started once per test session with the package imported (and no
# torch work done, so no thread pool is copied into a child).
PRELOAD = ["tests.helpers", "lightning_app.cli", "lightning_app.cli.fit", "transformers.models.bert.modeling_bert",
           "torch.utils.tensorboard", "tensorboard.backend.event_processing.event_accumulator"]
LAUNCH_ENV = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _as_lightning_main(args: list[str], env: dict[str, str], cwd: str, out: str, err: str, script: str | None) -> None:
    """In the forked child: what ``python -m lightning_app ARGS`` (or ``python SCRIPT ARGS``) does, in
    a session of its own (a kill of its group reaches its dataloader workers), with its own
    environment, folder and output files (one file for both: appended to); the exit handlers run as
    at the interpreter's exit, then the process ends."""
    os.setsid()
    for fd, path in ((1, out), (2, err)):
        if fd == 2 and err == out:
            os.dup2(1, 2)
            continue
        file = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if err == out else os.O_TRUNC), 0o644)
        os.dup2(file, fd)
        os.close(file)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(env)
    if env.get("OMP_NUM_THREADS"):  # read when torch starts: the fork server's torch had none
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    os.chdir(cwd)
    sys.argv = [script or str(ROOT / "lightning_app" / "__main__.py"), *args]
    multiprocessing.current_process().name = "MainProcess"
    multiprocessing.set_start_method(None, force=True)  # the interpreter's default (fork), as in a new one
    try:
        if script is None:
            runpy.run_module("lightning_app", run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, str(Path(script).parent))  # as for ``python SCRIPT``
            runpy.run_path(script, run_name="__main__")
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()


_LOGS: list[tempfile.TemporaryDirectory] = []
_STARTED: list[Launched] = []


@atexit.register  # before multiprocessing's own exit handler, which would wait for them
def _kill_the_left_running() -> None:
    for process in _STARTED:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def _logs() -> tempfile.TemporaryDirectory:
    """The folder of the launched processes' output files, removed when the test session ends."""
    if not _LOGS:
        _LOGS.append(tempfile.TemporaryDirectory(prefix="launched-"))
    return _LOGS[0]


class Launched:
    """``python -m lightning_app ARGS`` (``python SCRIPT ARGS`` with ``script``) started as a process
    forked from the fork server, with ``subprocess.Popen``'s ``pid``, ``poll``, ``wait``,
    ``send_signal`` and ``returncode``; its stdout and stderr go to files (``output()``). Exit codes
    are the interpreter's: 0, ``SystemExit``'s code, 1 after an uncaught exception (its traceback on
    stderr), ``-signum`` when killed. One still running when the test session ends (a failed test
    left it) is killed with its group then. With ``log``, stdout and stderr are appended to that file."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, script: str | Path | None = None,
                 log: str | Path | None = None) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        if log is None:
            folder = tempfile.mkdtemp(dir=_logs().name)
            self.out, self.err = Path(folder) / "stdout", Path(folder) / "stderr"
        else:
            self.out = self.err = Path(log)
        environment = {**os.environ, **LAUNCH_ENV} if env is None else env
        self._process = context.Process(target=_as_lightning_main, daemon=False,
                                        args=(list(args), dict(environment), os.getcwd(), str(self.out), str(self.err),
                                              None if script is None else str(script)))
        # The fork server starts with the first process: without this test's thread counts, if any
        # (torch reads them once, at its import there).
        threads = {name: os.environ.pop(name) for name in THREAD_VARIABLES if name in os.environ}
        try:
            self._process.start()
        finally:
            os.environ.update(threads)
        self.pid = self._process.pid
        _STARTED.append(self)

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(["python", "-m", "lightning_app"], timeout)
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def finish(self, timeout: float) -> int:
        """``wait``; a process still running after ``timeout`` is killed with its group, and the wait fails."""
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            raise

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) so far (with ``log``: its whole text twice)."""
        return (self.out.read_text(errors="replace") if self.out.exists() else "",
                self.err.read_text(errors="replace") if self.err.exists() else "")


def run_lightning(args: list[str], env: dict[str, str] | None = None, timeout: float = 400,
                  script: str | Path | None = None) -> tuple[str, str]:
    """``python -m lightning_app ARGS`` (or ``python SCRIPT ARGS``) as a process (``Launched``) to its
    end; it must exit 0. Its (stdout, stderr)."""
    process = Launched(args, env, script)
    code = process.finish(timeout)
    out, err = process.output()
    assert code == 0, f"exit {code}\n" + out[-2000:] + err[-3000:]
    return out, err


def fork_cells(monkeypatch) -> None:
    """The grid's cells, ``python -m lightning_app fit ...`` processes, forked as ``Launched`` (their
    output appended to the cell's ``fit.log``) instead of started as new interpreters: only
    ``experiments.children.start`` is replaced, the rest of the grid runs as it does. Tests of what
    a stopped runner does to its cells (a process group, the parent's death) keep the real start."""
    from lightning_app.experiments import children

    def start(command: list[str], env: dict, stdout, stderr) -> Launched:
        assert command[:3] == [sys.executable, "-m", "lightning_app"] and stderr == subprocess.STDOUT, command
        return Launched(command[3:], env=env, log=stdout.name)
    monkeypatch.setattr(children, "start", start)
