"""A resumed run continues the stopped one exactly: its TensorBoard log is cut back to the point at
which its checkpoint was taken, and the work of that step still to do (its validation) is done again.

Checkpoints are written at the end of a training step, before the step's losses are logged and before
its validation, or at the end of a validation. What the stopped run did after its checkpoint is done
again by the resumed run, so it is removed from the log: ``ContinueLogs`` journals, for every
checkpoint, the size of each event file at the point where the resumed run takes over, and the resumed
run truncates the files to it (removing files begun later). ``ValidateTheCheckpointStep`` has the
resumed run validate the checkpoint's step when the checkpoint was taken before that validation.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.loops.evaluation_loop import RestartStage as EvaluationStage
from lightning.pytorch.loops.training_epoch_loop import RestartStage as TrainingStage

JOURNAL = "resume_points.jsonl"  # in the TensorBoard folder, beside the event files
EVENT_FILES = "events.out.tfevents.*"


def event_file_sizes(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in sorted(folder.glob(EVENT_FILES))}


def journal_point(folder: Path, marks: list[str]) -> None:
    """Append the event files' sizes now as the resume point of the checkpoints ``marks``."""
    with open(folder / JOURNAL, "a") as journal:
        journal.write(json.dumps({"marks": marks, "files": event_file_sizes(folder)}) + "\n")
        journal.flush()
        os.fsync(journal.fileno())


def journal_points(folder: Path) -> list[dict]:
    """The journal's points, oldest first (a last line cut short by a kill left out)."""
    points = []
    for line in (folder / JOURNAL).read_text().splitlines() if (folder / JOURNAL).exists() else []:
        try:
            points.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return points


def cut_back(folder: Path, mark: str, keep: str) -> bool:
    """Cut the event files back to the resume point of checkpoint ``mark`` (file ``keep``, the resumed
    run's own, aside) and drop the later journal points. Without such a point (the stopped run never
    reached it) the files stay whole and this returns False: ``ContinueLogs`` then cuts them back to
    a step-end checkpoint's own sizes, if it carries them."""
    points = journal_points(folder)
    found = next((i for i, point in enumerate(points) if mark in point["marks"]), None)
    if found is None:
        return False
    truncate(folder, points[found]["files"], keep)
    (folder / JOURNAL).write_text("".join(json.dumps(point) + "\n" for point in points[:found + 1]))
    return True


def truncate(folder: Path, sizes: dict[str, int], keep: str) -> None:
    """Cut each event file (``keep`` aside) back to its size in ``sizes``; remove the files begun later."""
    for event_file in folder.glob(EVENT_FILES):
        if event_file.name == keep:
            continue
        if event_file.name not in sizes:
            event_file.unlink()
        elif event_file.stat().st_size > sizes[event_file.name]:
            os.truncate(event_file, sizes[event_file.name])


def step_log(trainer: Trainer) -> dict | None:
    """What Lightning logs once a training step's end hooks are over (``update_train_step_metrics``):
    that step's ``self.log`` values and the epoch, at their step; None where it logs nothing."""
    connector = trainer._logger_connector
    if trainer.fit_loop._should_accumulate() and trainer.lightning_module.automatic_optimization:
        return None
    if not (connector.should_update_logs or trainer.fast_dev_run):
        return None
    metrics = {name: float(value) for name, value in connector.metrics["log"].items()}
    step = metrics.pop("step", None)
    if step is None:
        metrics.setdefault("epoch", trainer.current_epoch)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
    return {"step": int(step), "metrics": metrics}


def tensorboards(trainer: Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


class ContinueLogs(Callback):
    """Keeps the TensorBoard log of a stopped and resumed run identical to that of the run never
    stopped: every point once, none missing, whatever the moment of the stop.

    Each checkpoint carries a mark. At the point where a run resumed from it takes over (the next
    validation or training step after the save, or the end of training), rank 0 flushes its event
    files and journals their sizes for the marks saved since. A resumed run cuts the event files back
    to its checkpoint's point before it logs anything. It must come first among the callbacks (the learning-rate monitor logs at
    the start of a step). A checkpoint without a mark (an older one) falls back to a restart marker at
    its step in the log (TensorBoard hides the points at and after it).

    A checkpoint saved at the end of a training step (periodic, SIGTERM, requeue) comes before
    Lightning logs that step's losses, so it also carries those values and the event files' sizes
    at the save (``step_log``): a run killed after the save and before its resume point leaves no
    journal point, and the resumed run cuts the files back to the save and logs the step's losses
    itself (the stopped run logged nothing else in between)."""

    def __init__(self) -> None:
        self.pending: list[str] = []  # marks saved since the last resume point
        self.resumed_from: str | None = None  # the mark of the checkpoint this fit resumed from
        self.resumed_step_log: dict | None = None  # the losses that checkpoint's step had still to log
        self.cut_done = False
        self.trainer: Trainer | None = None
        self.in_step_end = False  # between a training step's end hooks and the next resume point

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict:
        mark = uuid.uuid4().hex
        self.pending.append(mark)
        unlogged = step_log(self.trainer) if self.in_step_end and self.trainer is not None else None
        if unlogged is not None and self.trainer.is_global_zero:
            unlogged["files"] = {}
            for logger in tensorboards(self.trainer):
                logger.experiment.flush()
                unlogged["files"][logger.log_dir] = event_file_sizes(Path(logger.log_dir))
        return {"mark": mark, "step_log": unlogged}

    def load_state_dict(self, state_dict: dict) -> None:
        self.resumed_from = state_dict.get("mark")
        self.resumed_step_log = state_dict.get("step_log")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        for logger in tensorboards(trainer):
            logger._default_hp_metric = False  # the stopped run logged it at step 0
        self._cut(trainer)  # here: a run resumed at its last step trains nothing (no on_train_start)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path is None or not trainer.is_global_zero:
            return
        if self.resumed_from is None:  # an older checkpoint, without a mark
            for logger in tensorboards(trainer):
                self._restart_marker(logger, trainer.global_step)
        self._cut(trainer)  # (strategies that restore callbacks after on_fit_start)

    def _cut(self, trainer: Trainer) -> None:
        if self.resumed_from is None or self.cut_done or not trainer.is_global_zero:
            return
        for logger in tensorboards(trainer):
            own = Path(logger.experiment.file_writer.event_writer._file_name).name
            saved = (self.resumed_step_log or {}).get("files", {})
            if cut_back(Path(logger.log_dir), self.resumed_from, own) or logger.log_dir not in saved:
                continue
            # killed between the save and its resume point: the log as at the save, plus the step's losses
            truncate(Path(logger.log_dir), saved[logger.log_dir], own)
            logger.log_metrics(self.resumed_step_log["metrics"], self.resumed_step_log["step"])
            logger.save()
        self.cut_done = True

    @staticmethod
    def _restart_marker(logger: TensorBoardLogger, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        logger.experiment.file_writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self._journal(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.in_step_end = True  # first of the callbacks: every save from here on precedes the step's logging

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._journal(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._journal(trainer)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._journal(trainer)  # the checkpoints of the end of training: before the summary is logged

    def _journal(self, trainer: Trainer) -> None:
        self.in_step_end = False
        if not self.pending:
            return
        if trainer.is_global_zero:
            for logger in tensorboards(trainer):
                logger.experiment.flush()
                journal_point(Path(logger.log_dir), self.pending)
        self.pending = []


class ValidateTheCheckpointStep(Callback):
    """A run resumed from a checkpoint taken at the end of a training step whose validation had not run
    (a periodic checkpoint, a SIGTERM or SLURM requeue at a validation step) validates that step before
    training on, as the uninterrupted run did; Lightning alone would skip that validation.

    It puts the loops in the state Lightning restores from a checkpoint taken at the start of that
    validation: the step completed, the validation to run from its first batch. When that step was
    the last one (``max_steps``), Lightning trains nothing and the validation runs as the fit ends,
    before the other callbacks' end of fit (it comes right after ``ContinueLogs``)."""

    def __init__(self) -> None:
        self.trained = False

    @staticmethod
    def _pending(trainer: Trainer) -> bool:
        epoch_loop, progress = trainer.fit_loop.epoch_loop, trainer.fit_loop.epoch_loop.batch_progress.total
        return (trainer.ckpt_path is not None and progress.completed == progress.processed - 1
                and not epoch_loop._should_accumulate()
                and epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.trained = True
        epoch_loop = trainer.fit_loop.epoch_loop
        if not epoch_loop.restarted_on_train_batch_end or not self._pending(trainer):
            return
        epoch_loop.batch_progress.increment_completed()
        epoch_loop.batch_progress.is_last_batch = False  # of this run's length (the stopped run's may be shorter)
        epoch_loop._restart_stage = TrainingStage.RESTARTED_ON_LAST
        epoch_loop.val_loop.batch_progress.reset_on_run()
        epoch_loop.val_loop._restart_stage = EvaluationStage.RESTARTED_MID_EVALUATION

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.trained or not self._pending(trainer):
            return
        stage = trainer.state.stage
        trainer.fit_loop.epoch_loop.val_loop.batch_progress.reset_on_run()
        trainer.validating = True
        trainer.fit_loop.epoch_loop.val_loop.run()
        trainer.state.stage = stage
