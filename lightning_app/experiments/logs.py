"""Read a finished cell's TensorBoard scalars."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_app.errors import ConfigError
from lightning_app.probes.tags import Series


def read_scalars(log_dir: Path) -> dict[str, Series]:
    """Every scalar tag of a TensorBoard folder (all its event files, in order), as step -> value."""
    if not log_dir.is_dir():
        raise ConfigError(f"no TensorBoard folder at {log_dir}")
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: {event.step: event.value for event in accumulator.Scalars(tag)}
            for tag in accumulator.Tags()["scalars"]}
