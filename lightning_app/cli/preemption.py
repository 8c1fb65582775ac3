"""Surviving preemption: atomic checkpoints, SLURM requeue and SIGTERM at a step boundary, ``last.ckpt``
on the newest state.

Together with the stateful data stream (``data/datamodule.py``), the per-step seed
(``model/module.py``) and the continued log (``cli/continuation.py``), a run stopped at any point and
resumed from its last checkpoint ends with the weights and the log of the uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_app.model.teardown import destroy_process_group_at_exit


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a local checkpoint to a temporary file in the target's folder, flushes it to disk
    and renames it over the target: a kill during a save leaves the previous file whole.

    (Lightning's own save writes to the system temp folder and moves the file, which is a copy,
    interruptible half-way, when that folder is on another file system than the runs.)
    Remote paths (``s3://``, ...) keep Lightning's save.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        handle, partial = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=folder)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)


class HeldSignal(Callback):
    """A signal held until the end of the training step during which it came: ``hold`` puts a
    handler that only remembers it, ``arrived`` tells at a step's end whether any rank got it (one
    boolean all-reduce, so the ranks act on the same step), ``release`` puts the previous handler back."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.lightning_handler = None
        self.received = False

    def hold(self, signum: int) -> None:
        self.signum, self.lightning_handler = signum, signal.getsignal(signum)
        signal.signal(signum, self._remember)

    def _remember(self, signum: int, frame) -> None:
        self.received = True

    def arrived(self, trainer: Trainer) -> bool:
        return self.signum is not None and trainer.strategy.reduce_boolean_decision(self.received, all=False)

    def release(self):
        """Put the held signal's previous handler back; returns that handler (None if none was held)."""
        handler, self.lightning_handler = self.lightning_handler, None
        if self.signum is not None and handler is not None:
            signal.signal(self.signum, handler)
        self.signum = None
        return handler


class StepBoundaryRequeue(HeldSignal):
    """Runs Lightning's SLURM auto-requeue (``SLURMEnvironment(auto_requeue=True)``: save
    ``hpc_ckpt_N.ckpt`` in ``trainer.default_root_dir``, ``scontrol requeue`` the job) at the end
    of the training step during which the requeue signal came, then stops the run.

    Lightning's own handler saves the moment the signal lands, possibly mid-step, when the data
    stream has already handed out the step's batch: resuming from there would skip it. All
    ranks agree on the step (one boolean all-reduce per step), so they save together. The run then
    ends as at ``max_steps`` (``trainer.should_stop`` would first validate once more, out of turn,
    within the grace time before the job's end).
    """

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The environment Lightning's signal connector reads when it installs its handler.
        environment = trainer._accelerator_connector.cluster_environment
        if (isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal
                and callable(signal.getsignal(environment.requeue_signal))):
            self.hold(environment.requeue_signal)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if not self.arrived(trainer):
            return
        self.lightning_handler(self.signum, None)
        self.received = False
        trainer.fit_loop.epoch_loop.max_steps = trainer.global_step

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.release()


class LastIsNewest(HeldSignal):
    """Keeps ``last.ckpt`` on the newest state of the run, for every ``ModelCheckpoint`` that saves
    every N steps with ``save_last`` (and no monitor):

    - at the end of training, and at the end of the training step during which SIGTERM arrived,
      the state is saved (``step<N>.ckpt`` and ``last.ckpt``) when the step is not a multiple of N;
      then Lightning's own SIGTERM handling stops the run;
    - a resumed run writing into the same folder points its ``last.ckpt`` at its own newest state
      (Lightning would write ``last-v1.ckpt`` beside the interrupted run's ``last.ckpt``).

    The saves run where ModelCheckpoint's step saves run (the end of a training step), so a run
    resumed from any of them ends with the uninterrupted run's weights. A SIGTERM is held until the
    end of a training step (like SLURM's SIGUSR1 in ``StepBoundaryRequeue``); under DDP the ranks
    agree on the step with one boolean all-reduce per step.

    Every ``lightning fit`` has this callback, so its ``setup`` also has each process of a distributed
    run destroy its process group at a clean exit (``model/teardown.py``): a gloo group (DDP on CPU)
    left to Python's shutdown can abort the process after the run succeeded.
    """

    @staticmethod
    def _periodic(trainer: Trainer) -> list[ModelCheckpoint]:
        return [cb for cb in trainer.checkpoint_callbacks
                if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.monitor is None]

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        destroy_process_group_at_exit(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path is not None:
            for callback in self._periodic(trainer):
                last = callback.format_checkpoint_name(callback._monitor_candidates(trainer),
                                                       callback.CHECKPOINT_NAME_LAST)
                if os.path.lexists(last) and callback.last_model_path != last:
                    callback.last_model_path = last  # replaced by the next save, not versioned beside it
        if threading.current_thread() is threading.main_thread():
            self.hold(signal.SIGTERM)

    def _save(self, trainer: Trainer) -> None:
        for callback in self._periodic(trainer):
            if callback._should_skip_saving_checkpoint(trainer):
                continue  # already saved at this step (or fast_dev_run)
            candidates = callback._monitor_candidates(trainer)
            callback._save_topk_checkpoint(trainer, candidates)
            callback._save_last_checkpoint(trainer, candidates)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            # The final step, saved before ModelCheckpoint's own end-of-training save, which writes
            # last.ckpt as a file of its own when this process saved nothing yet (a late resume).
            self._save(trainer)
        if not self.arrived(trainer):
            return
        self._save(trainer)
        handler = self.release()
        if callable(handler):
            handler(signal.SIGTERM, None)  # Lightning's: it stops the run after this step's hooks
        else:
            trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer)
        self.release()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.release()
