"""How far fine-tuning has moved each layer's weights, logged to TensorBoard."""

from __future__ import annotations

import torch
from lightning import Callback, LightningModule, Trainer

from lightning_app.errors import ConfigError
from lightning_app.probes import board, tags


class LayerDrift(Callback):
    """How far fine-tuning has moved each layer's weights: ``||theta - theta_0|| / ||theta_0||`` over
    the layer's parameters, ``theta_0`` taken at the start of training (and kept in checkpoints, so a
    resumed fit measures from the same weights). Logged as ``drift/layer_NN``
    (layer 00: the embeddings); frozen layers stay exactly 0. Weights are the same on every rank,
    so rank 0 logs without any communication.

    Args:
        every_n_steps: log every this many optimizer steps; None follows ``trainer.log_every_n_steps``.
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ConfigError(f"drift.every_n_steps: expected >= 1 or null, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.initial: list[list[torch.Tensor]] = []
        self.restored = False
        self.logged_step = -1

    def state_dict(self) -> dict:
        """``theta_0`` travels in the checkpoint: a resumed run still measures from the start of training."""
        return {"initial": self.initial}

    def load_state_dict(self, state_dict: dict) -> None:
        self.initial = state_dict["initial"]
        self.restored = True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.restored:  # a resumed fit: the stopped run logged the checkpoint's step
            self.restored, self.logged_step = False, trainer.global_step
            return
        self.initial = [[p.detach().clone() for p in group] for group in pl_module.encoder.layer_parameters()]
        if trainer.global_step % (self.every_n_steps or trainer.log_every_n_steps) == 0:
            self._log(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        every = self.every_n_steps or trainer.log_every_n_steps
        if trainer.global_step % every == 0 and trainer.global_step != self.logged_step:
            self._log(trainer, pl_module)

    @torch.no_grad()
    def drift(self, pl_module: LightningModule) -> list[float]:
        """Relative change of every layer since the start of fit, embeddings first."""
        values = []
        for group, initial in zip(pl_module.encoder.layer_parameters(), self.initial):
            moved = sum((p.detach().float() - p0.to(p.device).float()).pow(2).sum() for p, p0 in zip(group, initial))
            size = sum(p0.float().pow(2).sum() for p0 in initial)
            values.append((moved.sqrt() / size.sqrt()).item())
        return values

    def _log(self, trainer: Trainer, pl_module: LightningModule) -> None:
        values = self.drift(pl_module)
        board.log_at_step(trainer, tags.layer_tags(tags.DRIFT, values))
        self.logged_step = trainer.global_step
