"""Resident memory that follows the live tensors: freed heap pages handed back between steps.

On the CPU a training step allocates and frees its activations (hundreds of tensors of 0.1-32 MB).
Once glibc has freed one mmapped block it raises its mmap threshold, so later blocks of that size
come from the heap, and freed heap pages stay resident: the process keeps the largest step's
activations (and the probes') as resident memory for the rest of the run. ``malloc_trim`` returns
those free pages to the operating system; it changes no value, only what stays resident.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

from lightning import Callback, LightningModule, Trainer


@cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the operating system; False where that is not possible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class ReleaseFreedMemory(Callback):
    """After every training step and every validation (probes included), the pages freed since are
    handed back (``release_freed_memory``), so the run's resident memory between steps is its live
    memory, not the high-water mark of its largest step. Every run of the CLI has it."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        release_freed_memory()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        release_freed_memory()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        release_freed_memory()  # after the step-0 probe
