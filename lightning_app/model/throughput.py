"""Samples/s and tokens/s of training, through Lightning's ThroughputMonitor."""

from __future__ import annotations

from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage


def pairs_in(batch: dict) -> int:
    return batch["input_ids"].shape[0] // 2


def tokens_in(batch: dict) -> int:
    """Non-padding tokens: the collator's count (no device synchronisation), else the mask's sum."""
    return batch["tokens"] if "tokens" in batch else int(batch["attention_mask"].sum())


class PairThroughput(ThroughputMonitor):
    """Logs ``train/device/samples_per_sec`` (pairs) and ``train/device/items_per_sec`` (non-padding
    tokens of both views) over a sliding window of steps; global figures are added under DDP. The
    running totals (``train/samples``, ``train/batches``, ``train/lengths``) travel in checkpoints, so
    a resumed fit counts on from them (its rates start over once its window is full again).

    Args:
        window_size: steps in the sliding window; rates appear once it is full.
    """

    def __init__(self, window_size: int = 5) -> None:
        super().__init__(batch_size_fn=pairs_in, length_fn=tokens_in, window_size=window_size)
        self.restored: dict[str, int] = {}

    def state_dict(self) -> dict:
        stage = RunningStage.TRAINING
        return {"samples": self._samples.get(stage, 0), "batches": self._batches.get(stage, 0),
                "lengths": self._lengths.get(stage, 0)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.restored = dict(state_dict)

    def on_train_start(self, trainer, *args) -> None:
        super().on_train_start(trainer, *args)  # sets the totals to 0 (rank 0)
        if self.restored and trainer.is_global_zero:
            stage = RunningStage.TRAINING
            self._samples[stage], self._batches[stage] = self.restored["samples"], self.restored["batches"]
            self._lengths[stage] = self.restored["lengths"]
        self.restored = {}

    def on_validation_end(self, trainer, *args) -> None:
        if RunningStage.TRAINING in self._t0s:  # not so when a resumed fit only validates its last step
            super().on_validation_end(trainer, *args)
