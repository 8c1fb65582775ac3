"""Read a finished cell's own records: its TensorBoard scalars and its MTEB scores."""

from __future__ import annotations

import json
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_app.errors import ConfigError

Series = dict[int, float]  # step -> value; a step logged twice (a resumed run) keeps the later value


def read_scalars(log_dir: Path) -> dict[str, Series]:
    """Every scalar tag of a TensorBoard folder (all its event files, in order), as step -> value."""
    if not log_dir.is_dir():
        raise ConfigError(f"no TensorBoard folder at {log_dir}")
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: {event.step: event.value for event in accumulator.Scalars(tag)}
            for tag in accumulator.Tags()["scalars"]}


def layer_series(scalars: dict[str, Series], prefix: str) -> list[Series]:
    """``<prefix>/layer_00``, ``layer_01``, ... in layer order (embeddings first)."""
    tags = sorted(tag for tag in scalars if tag.startswith(prefix + "/layer_"))
    return [scalars[tag] for tag in tags]


def read_mteb(folder: Path) -> dict | None:
    """``{"tasks": {name: score}, "blocks": {block: mean}, "mean": mean of block means}`` or None."""
    path = folder / "scores.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
