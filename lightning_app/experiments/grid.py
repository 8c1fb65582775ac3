"""The reproduction grid: one ordinary ``lightning fit`` per (setting, seed), each with its own
config written next to its results, so any cell can be rerun alone with
``lightning fit --config <cell>/config.yaml``.

Settings (González-Márquez et al. 2025): ``untrained`` (the base model, read from the step-0
probe of the first trained setting), ``dropout``, ``crops``, ``token_crops``, and crops with only
the last 2 or last 1 layers trained. Every trained setting shares steps, batch, learning rate,
probes and seeds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lightning_app.errors import ConfigError
from lightning_app.experiments import children

VIEWS = {
    "crops": {"class_path": "lightning_app.data.views.SentenceCrops"},
    "dropout": {"class_path": "lightning_app.data.views.Dropout"},
    "token_crops": {"class_path": "lightning_app.data.views.TokenCrops",
                    "init_args": {"ratio_min": 0.1, "ratio_max": 0.5}},
}
# setting -> (view, trained layers: None = all)
SETTINGS: dict[str, tuple[str, int | None]] = {
    "dropout": ("dropout", None),
    "crops": ("crops", None),
    "token_crops": ("token_crops", None),
    "crops_last2": ("crops", 2),
    "crops_last1": ("crops", 1),
}
UNTRAINED = "untrained"
ALL_SETTINGS = (UNTRAINED, *SETTINGS)


@dataclass
class Budget:
    """What every trained cell shares.

    Args:
        steps: optimizer steps per run; None: one epoch (documents / batch_size).
        batch_size: pairs per step.
        lr: peak learning rate (linear warmup over 10%, then linear decay).
        max_length: tokens per view.
        probe_every: probe every layer every this many steps (and at the end); None: steps / 4.
        probe_documents: probe a seeded sample of this many labelled documents; None: all.
        probe_max_length: tokens per probe document.
        cv_folds: folds of the cross-validated kNN accuracy (0: only the 10% split).
    """

    steps: int | None = 30
    batch_size: int = 32
    lr: float = 2e-5
    max_length: int = 128
    probe_every: int | None = None
    probe_documents: int | None = 1000
    probe_max_length: int = 128
    cv_folds: int = 10


@dataclass
class Hardware:
    """Where each cell runs.

    Args:
        accelerator: the Trainer's accelerator (auto, cpu, gpu).
        devices: the Trainer's devices per cell.
        precision: the Trainer's precision (e.g. bf16-mixed); None keeps its default.
        num_workers: data-loading processes per cell.
    """

    accelerator: str = "auto"
    devices: int | str = 1
    precision: str | None = None
    num_workers: int = 1


@dataclass
class Cell:
    setting: str
    seed: int
    folder: Path
    config: dict = field(repr=False)

    @property
    def name(self) -> str:
        return f"{self.setting}/seed{self.seed}"

    @property
    def done_file(self) -> Path:
        return self.folder / "done.json"

    @property
    def log_dir(self) -> Path:
        return self.folder / "tensorboard"

    @property
    def export_dir(self) -> Path:
        return self.folder / "export"

    @property
    def done(self) -> bool:
        return self.done_file.exists()


def probe_steps(steps: int, probe_every: int | None) -> int:
    """The validation (probe) interval: ``probe_every``, or a quarter of the run."""
    if probe_every is not None and probe_every < 1:
        raise ConfigError(f"budget.probe_every: expected >= 1 step or null, got {probe_every}")
    return probe_every or max(1, math.ceil(steps / 4))


def cell_config(setting: str, seed: int, folder: Path, *, model: dict, corpus: dict, budget: Budget,
                steps: int, num_layers: int, hardware: Hardware, probe_at_start: bool) -> dict:
    """The ``lightning fit`` config of one cell: everything explicit, nothing read from elsewhere."""
    view, trained = SETTINGS[setting]
    if trained is not None and trained > num_layers:
        raise ConfigError(f"settings: '{setting}' trains the last {trained} layers, but the model has {num_layers}")
    every = probe_steps(steps, budget.probe_every)
    trainer = {
        "accelerator": hardware.accelerator, "devices": hardware.devices, "max_steps": steps,
        "val_check_interval": every, "check_val_every_n_epoch": None, "limit_val_batches": 2,
        "num_sanity_val_steps": 0, "log_every_n_steps": 1, "enable_progress_bar": False,
        "default_root_dir": str(folder),
        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                   "init_args": {"save_dir": str(folder), "name": "", "version": "tensorboard"}},
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": str(folder / "checkpoints"), "every_n_train_steps": every,
                           "save_top_k": 0, "save_last": True}},
            {"class_path": "lightning_app.model.throughput.PairThroughput"},
            {"class_path": "lightning_app.export.ExportEncoder", "init_args": {"dirpath": str(folder / "export")}},
            {"class_path": "lightning_app.probes.callbacks.LayerProbe",
             "init_args": {"corpora": [{"name": corpus["name"], "source": corpus["source"],
                                        "text_field": corpus["text_field"], "label_field": corpus["label_field"],
                                        "max_documents": budget.probe_documents}],
                           "k": 10, "metric": "euclidean", "test_fraction": 0.1, "seed": 42,
                           "max_length": budget.probe_max_length, "batch_size": 32, "cv_folds": budget.cv_folds,
                           "geometry_pairs": 64, "projector": False, "at_start": probe_at_start}},
            {"class_path": "lightning_app.probes.callbacks.LayerDrift", "init_args": {"every_n_steps": every}},
        ],
    }
    if hardware.precision:
        trainer["precision"] = hardware.precision
    return {
        "seed_everything": seed,
        "trainer": trainer,
        "model": {**model, "frozen_layers": 0 if trained is None else num_layers - trained,
                  "lr": budget.lr, "warmup_fraction": 0.1, "temperature": 0.05, "pooling": "mean"},
        "data": {"source": corpus["source"], "text_field": corpus["text_field"], "view": VIEWS[view],
                 "max_length": budget.max_length, "batch_size": budget.batch_size,
                 "num_workers": hardware.num_workers, "val_fraction": 0.05, "val_documents": 64},
    }


def plan(output: Path, settings: list[str], seeds: list[int], **config_args) -> list[Cell]:
    """Every trained cell in run order (seed by seed, so a short grid already covers every setting);
    the first trained setting of each seed also probes step 0, the untrained base."""
    trained = [s for s in settings if s != UNTRAINED]
    cells = []
    for seed in seeds:
        for setting in trained:
            folder = output / setting / f"seed{seed}"
            config = cell_config(setting, seed, folder, probe_at_start=setting == trained[0], **config_args)
            cells.append(Cell(setting, seed, folder, config))
    return cells


def run_cell(cell: Cell, keep_checkpoints: bool = False, env: dict | None = None,
             overlays: tuple[str, ...] = ()) -> float | None:
    """Run one cell's ``lightning fit`` in its own process (``experiments.children``: it dies with
    this one); returns its wall seconds, or None when it stopped for a SLURM requeue.

    A cell interrupted after a checkpoint resumes from its newest one (``last.ckpt``, or the
    ``hpc_ckpt_N.ckpt`` a requeue saved); one interrupted before its first checkpoint starts again,
    its partial logs moved aside (``tensorboard.interrupted-N``). ``done.json`` is written only
    after a clean exit with the model exported; the checkpoints (weights plus optimizer state) are
    then removed unless ``keep_checkpoints``. ``env`` is added to the child's environment,
    ``overlays`` are config files given after the cell's own.
    """
    cell.folder.mkdir(parents=True, exist_ok=True)
    config_path = cell.folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(cell.config, sort_keys=False), encoding="utf-8")
    command = [sys.executable, "-m", "lightning_app", "fit", "--config", str(config_path)]
    for overlay in overlays:
        command += ["--config", overlay]
    requeued = set(cell.folder.glob("hpc_ckpt_*.ckpt"))
    saved = [path for path in (cell.folder / "checkpoints" / "last.ckpt", *requeued) if path.exists()]
    if saved:
        command += ["--ckpt_path", str(max(saved, key=lambda path: path.stat().st_mtime_ns))]
    elif cell.log_dir.exists():
        attempt = 1
        while cell.folder.joinpath(f"tensorboard.interrupted-{attempt}").exists():
            attempt += 1
        cell.log_dir.rename(cell.folder / f"tensorboard.interrupted-{attempt}")
    start = time.monotonic()
    with open(cell.folder / "fit.log", "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        code = children.call(command, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})
    seconds = time.monotonic() - start
    if code == 0 and set(cell.folder.glob("hpc_ckpt_*.ckpt")) - requeued:
        return None  # saved and requeued (SLURM's signal): the requeued job resumes it
    if code != 0 or not (cell.export_dir / "config.json").exists():
        tail = (cell.folder / "fit.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise ConfigError(f"cell {cell.name} failed (exit {code}); its log is {cell.folder / 'fit.log'}:\n  "
                          + "\n  ".join(tail))
    if not keep_checkpoints:
        shutil.rmtree(cell.folder / "checkpoints", ignore_errors=True)
        for path in cell.folder.glob("hpc_ckpt_*.ckpt"):
            path.unlink()
    cell.done_file.write_text(json.dumps({"setting": cell.setting, "seed": cell.seed, "wall_s": round(seconds, 1),
                                          "steps": cell.config["trainer"]["max_steps"]}) + "\n", encoding="utf-8")
    return seconds
