"""MTEB during training: the paper's quality-vs-steps curve, live in TensorBoard."""

from __future__ import annotations

import os

from lightning import Callback, LightningModule, Trainer

from lightning_app.errors import ConfigError
from lightning_app.probes.board import log_at_step
from lightning_app.probes.callbacks import MAX_LENGTH  # tokens per text during training


class MtebCallback(Callback):
    """At the start of fit and every ``every_n_steps`` steps, evaluate the encoder being trained on
    an mteb task set and log ``mteb/<Block>`` (each block's mean main score) and ``mteb/mean``.

    Rank 0 evaluates, at the trainer's precision, and broadcasts the scores, so every rank logs the
    same values. Results are kept in mteb's JSON layout under ``output``, one revision (weights
    hash) per evaluation.

    Args:
        tasks: a task set (``offline-fast``, ``offline``, ``paper``, ...) or comma-separated task
            names; None evaluates nothing (the default recipe: MTEB costs minutes per evaluation).
        every_n_steps: training steps between evaluations.
        output: results folder; default: the run's log directory + ``/mteb``.
        batch_size: texts per forward pass.
        max_length: tokens kept per text.
    """

    def __init__(self, tasks: str | None = None, every_n_steps: int = 100, output: str | None = None,
                 batch_size: int = 32, max_length: int = MAX_LENGTH) -> None:
        if every_n_steps < 1:
            raise ConfigError(f"mteb.every_n_steps: expected >= 1, got {every_n_steps}")
        self.task_spec = tasks
        self.every_n_steps = every_n_steps
        self.output = output
        self.batch_size = batch_size
        self.max_length = max_length
        self.last_step: int | None = None
        self.tasks: list = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.task_spec is None:
            return
        from lightning_app.evaluate.tasks import resolve_tasks, task_block  # mteb loads only when used

        self.tasks = resolve_tasks(self.task_spec)  # unknown tasks fail here, before training
        self.blocks = {task.metadata.name: task_block(task) for task in self.tasks}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path is None:  # a resumed fit: the stopped run evaluated its start
            self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        if trainer.global_step % self.every_n_steps == 0 and trainer.global_step != self.last_step:
            self._evaluate(trainer, pl_module)  # once per optimizer step, also with accumulation

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.tasks:
            return
        from lightning_app.evaluate.mteb_encoder import MtebEncoder
        from lightning_app.evaluate.report import block_means, evaluate_tasks

        self.last_step = trainer.global_step
        means = None
        if trainer.is_global_zero:
            output = self.output or os.path.join(trainer.log_dir or trainer.default_root_dir, "mteb")
            name = f"lightning-app/{getattr(trainer.logger, 'name', None) or 'run'}"
            encoder = MtebEncoder(pl_module.encoder, pl_module.tokenizer, name, batch_size=self.batch_size,
                                  max_length=self.max_length)
            with trainer.precision_plugin.forward_context():
                means = block_means(evaluate_tasks(encoder, self.tasks, output), self.blocks)
        means = trainer.strategy.broadcast(means, src=0)
        log_at_step(trainer, {f"mteb/{block}": value for block, value in means.items()})
