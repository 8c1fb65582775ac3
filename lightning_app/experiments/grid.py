"""The reproduction grid: one ordinary ``lightning fit`` per (setting, seed), each with its own
config written next to its results, so any cell can be rerun alone with
``lightning fit --config <cell>/config.yaml``.

Settings (González-Márquez et al. 2025): ``untrained`` (the base model, read from the step-0
probe of a trained cell of each seed), ``dropout``, ``crops``, ``token_crops``, and crops with only
the last 2 or last 1 layers trained. Every trained setting shares steps, batch, learning rate,
probes and seeds, and every cell probes step 0, so each has its own baseline and the paired
interval of its labelled change (``probe/<corpus>/knn_cv_change``).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from lightning_app.errors import ConfigError, first_line
from lightning_app.experiments import children
from lightning_app.probes.knn import FOLDS

# The recipe each view's cells start from (relative paths: to the working folder, else to the project).
RECIPES = {"crops": "configs/crop.yaml", "dropout": "configs/dropout.yaml", "token_crops": "configs/token_crop.yaml"}
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
PROJECT = Path(__file__).resolve().parents[2]


@dataclass
class Budget:
    """What every trained cell trains with; None keeps the recipe's value.

    Args:
        steps: optimizer steps per run; ``epoch``: one epoch (documents / batch size); None: the recipe's.
        batch_size: pairs per step.
        lr: peak learning rate (the recipe's warmup and decay).
        max_length: tokens per view.
        val_documents: documents held out for the validation loss (``data.val_documents``).
        val_fraction: share of the corpus held out of training by content hash (``data.val_fraction``):
            the validation loss's and the in-domain signals' documents.
        limit_val_batches: batches of the validation loss at each probe (``trainer.limit_val_batches``).
    """

    steps: int | Literal["epoch"] | None = None
    batch_size: int | None = None
    lr: float | None = None
    max_length: int | None = None
    val_documents: int | None = 64
    val_fraction: float | None = None
    limit_val_batches: int | None = 2


@dataclass
class Probes:
    """How every trained cell probes its layers on the labelled corpus.

    Args:
        every: probe every layer every this many steps (and at the end); None: steps / 4.
        documents: probe a seeded sample of this many labelled documents; None: all.
        max_length: tokens per probe document; None: the recipe's.
        cv_folds: folds of the cross-validated kNN accuracy (0: only the 10% split).
        projector: also write TensorBoard projector embeddings at each probe (``probe.projector``).
        indomain_documents: held-out documents of the corpus for the label-free in-domain signals
            (``probe.indomain_documents``); None: the recipe's.
    """

    every: int | None = None
    documents: int | None = 1000
    max_length: int | None = None
    cv_folds: int = FOLDS
    projector: bool = False
    indomain_documents: int | None = None


@dataclass
class Hardware:
    """Where each cell runs; None keeps the recipe's value.

    Args:
        accelerator: the Trainer's accelerator (auto, cpu, gpu).
        devices: the Trainer's devices per cell.
        precision: the Trainer's precision (e.g. bf16-mixed).
        num_workers: data-loading processes per cell.
    """

    accelerator: str | None = None
    devices: int | str | None = None
    precision: str | None = None
    num_workers: int | None = None


def recipe_file(path: str) -> Path:
    """A recipe file: as given, else relative to the project (``configs/crop.yaml`` from anywhere)."""
    for candidate in (Path(path), PROJECT / path):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"recipes: no config file at '{path}'; expected a `lightning fit` config such as configs/crop.yaml")


def resolved(recipe: Path, resolve: Callable[[Path], dict]) -> dict:
    """The complete ``lightning fit`` config a recipe file stands for (defaults filled in), by
    ``resolve``: the fit parser's, which the ``lightning`` command passes in (nothing is built)."""
    try:
        return resolve(recipe)
    except Exception as error:  # the parser's ArgumentError, a ConfigError, a YAML error
        raise ConfigError(f"recipes: '{recipe}' is not a valid `lightning fit` config ({first_line(error)})") from None


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


def probe_steps(steps: int, every: int | None) -> int:
    """The validation (probe) interval: ``every``, or a quarter of the run; at most the run."""
    if every is not None and every < 1:
        raise ConfigError(f"probe.every: expected >= 1 step or null, got {every}")
    return min(every or max(1, math.ceil(steps / 4)), steps)  # at least one probe, at the end


def _set(config: dict, **values) -> None:
    """Dotted ``lightning fit`` keys (``section__option``), the None values left to the recipe."""
    config.update({key.replace("__", "."): value for key, value in values.items() if value is not None})


def cell_config(setting: str, seed: int, folder: Path, *, recipes: dict[str, Path], model: dict, corpus: dict,
                budget: Budget, probe: Probes, steps: int, num_layers: int, hardware: Hardware) -> dict:
    """The ``lightning fit`` config of one cell: its view's recipe file and what the grid changes in it
    (it probes step 0 whatever the recipe says)."""
    view, trained = SETTINGS[setting]
    if trained is not None and trained > num_layers:
        raise ConfigError(f"settings: '{setting}' trains the last {trained} layers, but the model has {num_layers}")
    every = probe_steps(steps, probe.every)
    config = {"config": str(recipes[view]), "seed_everything": seed}
    _set(config, trainer__max_steps=steps, trainer__val_check_interval=every,
         trainer__limit_val_batches=budget.limit_val_batches, trainer__enable_progress_bar=False,
         trainer__default_root_dir=str(folder),
         trainer__logger={"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                          "init_args": {"save_dir": str(folder), "name": "", "version": "tensorboard"}},
         trainer__callbacks=[], trainer__accelerator=hardware.accelerator, trainer__devices=hardware.devices,
         trainer__precision=hardware.precision,
         checkpoint__dirpath=str(folder / "checkpoints"), checkpoint__every_n_train_steps=every,
         checkpoint__save_top_k=0, checkpoint__save_last=True, export__dirpath=str(folder / "export"),
         probe__corpora=[{"name": corpus["name"], "source": corpus["source"], "text_field": corpus["text_field"],
                          "label_field": corpus["label_field"], "max_documents": probe.documents}],
         probe__max_length=probe.max_length, probe__cv_folds=probe.cv_folds, probe__projector=probe.projector,
         probe__at_start=True, probe__indomain_documents=probe.indomain_documents, drift__every_n_steps=every,
         model__frozen_layers=0 if trained is None else num_layers - trained, model__lr=budget.lr,
         data__source=corpus["source"], data__text_field=corpus["text_field"], data__max_length=budget.max_length,
         data__batch_size=budget.batch_size, data__num_workers=hardware.num_workers,
         data__val_documents=budget.val_documents, data__val_fraction=budget.val_fraction)
    config["mteb.tasks"] = None  # the grid evaluates the final models itself
    config.update({f"model.{key}": value for key, value in model.items()})
    return config


def code_version() -> str:
    """The code a cell ran: the git commit of the package's checkout (``+`` when it has uncommitted changes),
    else the installed version."""
    try:
        described = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always",
                                    "--dirty=+", "--abbrev=7"], capture_output=True, text=True, timeout=30)
        if described.returncode == 0 and described.stdout.strip():
            return described.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return f"version {importlib.metadata.version('lightning-app-embeddings')}"


def plan(output: Path, settings: list[str], seeds: list[int], **config_args) -> list[Cell]:
    """Every trained cell in run order (seed by seed, so a short grid already covers every setting)."""
    trained = [s for s in settings if s != UNTRAINED]
    cells = []
    for seed in seeds:
        for setting in trained:
            folder = output / setting / f"seed{seed}"
            config = cell_config(setting, seed, folder, **config_args)
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
                                          "steps": cell.config["trainer.max_steps"], "code": code_version()}) + "\n",
                              encoding="utf-8")
    return seconds
