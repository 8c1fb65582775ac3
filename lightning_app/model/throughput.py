"""Samples/s and tokens/s of training, through Lightning's ThroughputMonitor."""

from __future__ import annotations

from lightning.pytorch.callbacks import ThroughputMonitor


def pairs_in(batch: dict) -> int:
    return batch["input_ids"].shape[0] // 2


def tokens_in(batch: dict) -> int:
    """Non-padding tokens: the collator's count (no device synchronisation), else the mask's sum."""
    return batch["tokens"] if "tokens" in batch else int(batch["attention_mask"].sum())


class PairThroughput(ThroughputMonitor):
    """Logs ``train/device/samples_per_sec`` (pairs) and ``train/device/items_per_sec`` (non-padding
    tokens of both views) over a sliding window of steps; global figures are added under DDP.

    Args:
        window_size: steps in the sliding window; rates appear once it is full.
    """

    def __init__(self, window_size: int = 5) -> None:
        super().__init__(batch_size_fn=pairs_in, length_fn=tokens_in, window_size=window_size)
