"""``lightning reproduce``: the paper's comparison on any labelled corpus, as one command."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from lightning_app.data.collate import special_tokens
from lightning_app.data.sources import open_corpus
from lightning_app.data.views import TokenCrops
from lightning_app.errors import ConfigError
from lightning_app.probes.callbacks import MAX_LENGTH
from lightning_app.evaluate.scores import mteb_scores
from lightning_app.experiments.grid import (ALL_SETTINGS, RECIPES, UNTRAINED, Budget, Cell, Hardware, Probes,
                                            recipe_file, resolved)
from lightning_app.experiments.grid import plan as plan_cells
from lightning_app.experiments.launch import check_launcher, run_local, slot_environments
from lightning_app.experiments.report import collect, write_report
from lightning_app.experiments.slurm import Slurm, check_slurm, submit
from lightning_app.model.encoder import model_config
from lightning_app.model.load import check_length, config_position_limit
from lightning_app.packaged import load_tokenizer


@dataclass
class Mteb:
    """MTEB evaluation of the grid's final models.

    Args:
        tasks: task set or names to evaluate each final model on (e.g. offline, offline-fast,
            LeeDocumentSimilarity); None skips MTEB.
        seeds: evaluate the models of the first this many seeds.
        max_length: tokens per text.
    """

    tasks: str | None = None
    seeds: int = 1
    max_length: int = MAX_LENGTH


@dataclass
class Plan:
    """A reproduction laid out before anything runs: its cells and what the launch and the report need.
    ``budget``, ``probe`` and ``runs_on`` hold what every cell runs with, the recipes' values filled in."""

    folder: Path
    name: str
    model: str
    described: str
    cells: list[Cell]
    budget: Budget
    probe: Probes
    runs_on: Hardware


def check_token_crops(config: dict, recipe: Path, model: str, max_length: int | None) -> None:
    """The token-crop recipe's (``config``, resolved from ``recipe``) longest span fits the cells'
    tokens per view (its own or the budget's), checked before any cell runs."""
    view = config["data"]["view"]
    if view["class_path"] != f"{TokenCrops.__module__}.TokenCrops":
        return
    length_option, length = ("budget.max_length", max_length) if max_length else ("data.max_length",
                                                                                   config["data"]["max_length"])
    prefix, suffix = special_tokens(load_tokenizer(model))
    TokenCrops(**view.get("init_args", {})).check_fits(length - len(prefix) - len(suffix), length, length_option,
                                                        where=f" ({recipe})")


def corpus_name(source: str) -> str:
    """A tag-safe name: ``packaged:bbcnews`` -> ``bbcnews``, ``data/tickets.jsonl`` -> ``tickets``."""
    stem = source.split(":", 1)[1] if source.startswith("packaged:") else Path(source.rstrip("/")).stem
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in stem) or "corpus"


def _check_reuse(cells: list[Cell]) -> None:
    """A finished cell is reused only if it was run with the same config."""
    for cell in cells:
        written = cell.folder / "config.yaml"
        if cell.done and yaml.safe_load(written.read_text(encoding="utf-8")) != cell.config:
            raise ConfigError(f"output: {cell.folder} holds a finished {cell.name} run with a different config "
                              f"({written}); pass a new --output, or remove that folder to rerun it")


def _check_options(settings: list[str], seeds: list[int], recipes: dict[str, str], mteb: Mteb) -> None:
    unknown = [s for s in settings if s not in ALL_SETTINGS]
    if unknown or not settings:
        raise ConfigError(f"settings: expected some of {list(ALL_SETTINGS)}, got {settings}")
    if not [s for s in settings if s != UNTRAINED]:
        raise ConfigError("settings: 'untrained' is read from the step-0 probe of a trained setting; "
                          "add at least one of " + ", ".join(ALL_SETTINGS[1:]))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: expected distinct integers, got {seeds}")
    if mteb.seeds < 0:
        raise ConfigError(f"mteb.seeds: expected >= 0, got {mteb.seeds}")
    if set(RECIPES) ^ set(recipes):
        raise ConfigError(f"recipes: expected a config for each of {sorted(RECIPES)}, got {sorted(recipes)}")


def epoch_steps(source: str, text_field: str, batch_size: int, val_fraction: float) -> int:
    """Steps of one epoch over the training split (the documents less the ``val_fraction`` held out)."""
    documents = sum(1 for _ in open_corpus(source, text_field))
    steps = max(1, math.ceil(documents * (1 - val_fraction) / batch_size))
    print(f"one epoch: {documents} documents, {1 - val_fraction:.0%} for training -> {steps} steps of {batch_size} pairs")
    return steps


def _steps(budget: Budget, recipe: dict, source: str, text_field: str, batch_size: int, val_fraction: float) -> int:
    """``budget.steps``: a number, one epoch of the corpus, or (None) the recipe's ``trainer.max_steps``."""
    if budget.steps == "epoch":
        steps = epoch_steps(source, text_field, batch_size, val_fraction)
    else:
        steps = recipe["trainer"]["max_steps"] if budget.steps is None else budget.steps
    if steps < 1:
        raise ConfigError(f"budget.steps: expected >= 1, 'epoch' or null (the recipe's), got {steps}")
    return steps


def _device(runs_on: Hardware) -> str:
    """Where the grid's MTEB evaluations run: CUDA when the cells use a GPU and there is one."""
    return "cuda" if runs_on.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"


def plan(*, source: str, text_field: str, label_field: str, name: str | None, model: str | None, pretrained: bool,
         config_overrides: dict | None, settings: list[str], seeds: list[int], recipes: dict[str, str],
         budget: Budget, probe: Probes, mteb: Mteb, hardware: Hardware, output: str | None,
         resolve: Callable[[Path], dict] | None) -> Plan:
    """Every cell of the grid with its config, checked against the recipes, the model and the corpus;
    reads them, writes and runs nothing. A bad value is a ConfigError naming its option."""
    name = name or corpus_name(source)
    folder = Path(output or os.path.join("results", name))
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output: expected a folder, but {folder} is a file")
    files = {view: recipe_file(path) for view, path in recipes.items()}
    base = resolved(files["crops"], resolve)
    model = model or base["model"]["model"]
    config = model_config(model, config_overrides, option="model")
    lengths = {"budget.max_length": budget.max_length or base["data"]["max_length"],
               "probe.max_length": probe.max_length or base["probe"]["max_length"], "mteb.max_length": mteb.max_length}
    for option, value in lengths.items():
        check_length(option, value, config_position_limit(config), model)
    open_corpus(source, text_field, label_field)  # fails early, naming the field, when a column is missing
    batch_size = budget.batch_size or base["data"]["batch_size"]
    val_fraction = base["data"]["val_fraction"] if budget.val_fraction is None else budget.val_fraction
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"budget.val_fraction: expected 0 <= val_fraction < 1, got {val_fraction}")
    steps = _steps(budget, base, source, text_field, batch_size, val_fraction)
    if "token_crops" in settings:
        check_token_crops(resolved(files["token_crops"], resolve), files["token_crops"], model, budget.max_length)
    runs_on = Hardware(accelerator=hardware.accelerator or base["trainer"]["accelerator"],
                       devices=hardware.devices or base["trainer"]["devices"],
                       precision=hardware.precision or base["trainer"]["precision"],
                       num_workers=base["data"]["num_workers"] if hardware.num_workers is None else hardware.num_workers)
    cells = plan_cells(folder, settings, seeds, recipes=files, budget=budget, probe=probe, steps=steps,
                       num_layers=config.num_hidden_layers, hardware=hardware,
                       model={"model": model, "pretrained": pretrained, "config_overrides": config_overrides},
                       corpus={"name": name, "source": source, "text_field": text_field, "label_field": label_field})
    _check_reuse(cells)
    described = model if pretrained else (f"random-init {config.model_type} ({config.num_hidden_layers} layers x "
                                          f"{config.hidden_size})")
    filled = dataclasses.replace(budget, steps=steps, batch_size=batch_size, lr=budget.lr or base["model"]["lr"],
                                 max_length=lengths["budget.max_length"], val_fraction=val_fraction)
    probed = dataclasses.replace(probe, max_length=lengths["probe.max_length"])
    return Plan(folder, name, model, described, cells, filled, probed, runs_on)


def _check_launch(runs_on: Hardware, launcher: str, parallel: int | None, slurm: Slurm, report_only: bool) -> None:
    """What the launcher needs (enough GPUs or cores; a usable SLURM), before anything is written."""
    if report_only:
        return
    if launcher == "slurm":
        check_slurm(slurm, runs_on)
    else:
        slot_environments(parallel or 1, runs_on)


def _record(planned: Plan, options: dict) -> None:
    """OUTPUT/reproduce.yaml: the options of this run, which ``--config`` takes to rerun it."""
    recorded = {key: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                for key, value in options.items()}
    recorded.update(name=planned.name, model=planned.model, output=str(planned.folder))
    planned.folder.mkdir(parents=True, exist_ok=True)
    (planned.folder / "reproduce.yaml").write_text(yaml.safe_dump(recorded, sort_keys=False), encoding="utf-8")


def launch(planned: Plan, *, launcher: str, parallel: int | None, slurm: Slurm, keep_checkpoints: bool,
           mteb: Mteb, seeds: list[int], report_only: bool) -> list[Cell]:
    """Run the unfinished cells here, or submit them as a SLURM job array (``report_only``: neither);
    returns the cells still to come."""
    if report_only:
        return [cell for cell in planned.cells if not cell.done]
    if launcher == "local":
        run_local(planned.cells, parallel or 1, planned.runs_on, keep_checkpoints)
        return []
    evaluate = {"tasks": mteb.tasks, "seeds": seeds[:mteb.seeds], "max_length": mteb.max_length,
                "gpu": planned.runs_on.accelerator != "cpu"} if mteb.tasks else None
    waiting = submit(planned.cells, planned.folder, slurm, parallel, keep_checkpoints, evaluate)
    if waiting:
        print(f"watch:  squeue --me --array --name={slurm.job_name}   (each cell's progress: "
              f"{planned.folder}/<setting>/seed<N>/fit.log, task output: {planned.folder / 'slurm'}/<job>_<task>.out)\n"
              f"report: lightning reproduce --config {planned.folder / 'reproduce.yaml'} --report_only true   "
              "(any time; complete once every task has finished)")
    return waiting


def evaluate_on_mteb(planned: Plan, mteb: Mteb, seeds: list[int], untrained: bool) -> dict | None:
    """MTEB scores of the finished cells of the first ``mteb.seeds`` seeds (saved beside each) and,
    if ``untrained``, of the base model, which are returned (else None)."""
    device = _device(planned.runs_on)
    scores = None
    if untrained:
        print(f"MTEB {mteb.tasks}: {UNTRAINED}", flush=True)
        scores = mteb_scores(planned.model, mteb.tasks, planned.folder / UNTRAINED / "mteb", mteb.max_length, device)
    for cell in planned.cells:
        if cell.seed in seeds[:mteb.seeds] and cell.done:
            print(f"MTEB {mteb.tasks}: {cell.name}", flush=True)
            mteb_scores(str(cell.export_dir), mteb.tasks, cell.folder / "mteb", mteb.max_length, device)
    return scores


def code_line(cells: list[Cell]) -> str:
    """Which code ran the finished cells (each cell's ``done.json``): the commits and how many cells each."""
    codes = Counter(json.loads(cell.done_file.read_text()).get("code") for cell in cells if cell.done)
    return ", ".join(f"{f'`{code}`' if code else 'not recorded'} ({count} cells)"
                     for code, count in codes.items()) or "no finished cell"


def report(planned: Plan, options: dict, waiting: list[Cell], untrained: dict | None, seconds: float) -> None:
    """Collect the finished cells' results, write the report (report.md, CSV files, figures) and print it."""
    measured = collect(planned.cells, planned.name, untrained)
    if UNTRAINED not in options["settings"]:
        measured.pop(UNTRAINED, None)
    budget, probe, cells = planned.budget, planned.probe, planned.cells
    overrides = "" if options["pretrained"] else f", `{planned.model}` with {options['config_overrides']}"
    corpus = f"{options['source']} (labels: {options['label_field']})"
    header = [f"- command: `lightning reproduce --config {planned.folder / 'reproduce.yaml'}` (the options of this run)",
              f"- model: {planned.described}{overrides}; corpus: {corpus}",
              f"- recipes: {', '.join(f'{view} `{path}`' for view, path in options['recipes'].items())}",
              f"- budget: {budget.steps} steps of {budget.batch_size} pairs, lr {budget.lr}, {budget.max_length} "
              f"tokens per view; probes every {cells[0].config['trainer.val_check_interval']} steps on "
              f"{probe.documents or 'all'} documents at {probe.max_length} tokens; {budget.val_fraction:.0%} of the "
              f"corpus held out of training" + (f", the in-domain signals on up to {probe.indomain_documents} of its "
                                                f"documents" if probe.indomain_documents is not None else ""),
              f"- seeds: {', '.join(map(str, options['seeds']))}; machine: {platform.machine()}, {os.cpu_count()} "
              f"CPUs, device {_device(planned.runs_on)}; the runs took "
              f"{sum(sum(row.wall_s) for row in measured.values()) / 60:.1f} min in all (this invocation "
              f"{seconds / 60:.1f} min)"]
    header.append(f"- code: {code_line(planned.cells)}")
    if waiting:
        header.append(f"- **incomplete**: {len(cells) - len(waiting)} of {len(cells)} cells finished; still to come: "
                      + ", ".join(cell.name for cell in waiting))
    written = write_report(measured, planned.folder, f"{planned.name}, {planned.described}", header)
    print(written.read_text(encoding="utf-8"))
    print(f"report: {written}")


def reproduce_command(*, source: str = "packaged:bbcnews", text_field: str = "text", label_field: str = "label",
                      name: str | None = None, model: str | None = None, pretrained: bool = True,
                      config_overrides: dict | None = None, settings: list[str] = list(ALL_SETTINGS),
                      seeds: list[int] = [1, 2, 3], recipes: dict[str, str] = dict(RECIPES),
                      budget: Budget = Budget(), probe: Probes = Probes(), mteb: Mteb = Mteb(),
                      hardware: Hardware = Hardware(), output: str | None = None, keep_checkpoints: bool = False,
                      launcher: str = "local", parallel: int | None = None, slurm: Slurm = Slurm(),
                      report_only: bool = False, _resolve: Callable[[Path], dict] | None = None) -> None:
    """Run the paper's comparison on a labelled corpus and write a report with a table and figures.

    Every cell (setting x seed) is an ordinary ``lightning fit`` with its config in
    OUTPUT/<setting>/seed<seed>/config.yaml; a rerun skips finished cells. The report (report.md,
    CSV files and PNG figures in OUTPUT) is rebuilt from the cells' logs at the end of every run.
    ``--launcher slurm`` submits the unfinished cells as a SLURM job array and returns.

    Args:
        source: labelled corpus to train on (labels unused) and to probe: a local file, folder or
            glob, a hub dataset id, or packaged:bbcnews / packaged:newsarticles / packaged:houseofcommons.
        text_field: the column holding the text.
        label_field: the column holding the class label (probes only).
        name: the corpus' name in tags and titles (default: from the source).
        model: base model: hub id, local folder or packaged:minilm; default: the recipes' model.
        pretrained: start from the model's weights; false trains its architecture from random weights.
        config_overrides: fields of the model's config to change, e.g. a smaller random-init BERT.
        settings: which of untrained, dropout, crops, token_crops, crops_last2, crops_last1 to run.
        seeds: one training run per seed and setting.
        recipes: the ``lightning fit`` config each view's cells start from (crops, dropout,
            token_crops); the budget, probes, hardware and corpus are set on top of it.
        budget: steps, batch, learning rate and tokens per view shared by every cell (None: the recipe's).
        probe: when and how every cell probes its layers on the labelled corpus.
        mteb: MTEB evaluation of the final models (tasks, seeds, tokens per text).
        hardware: accelerator, devices, precision and data workers of every cell (None: the recipe's).
        output: results folder (default: results/<name>).
        keep_checkpoints: keep each finished cell's checkpoints; the exported model is always kept.
        launcher: local (this machine) or slurm (one task of a SLURM job array per unfinished cell,
            requeued and resumed when preempted).
        parallel: cells at once: local, each on its own GPUs (hardware.devices each) or its share of
            the CPU cores (default 1); slurm, the array's limit of running tasks (default none).
        slurm: partition, time limit, GPUs and CPUs per cell and further sbatch options of the array.
        report_only: launch nothing; rebuild the report from the cells finished so far.
        _resolve: the fit parser's recipe resolver, passed in by the ``lightning`` command.
    """
    options = {key: value for key, value in locals().items() if key not in ("report_only", "_resolve")}
    _check_options(settings, seeds, recipes, mteb)
    check_launcher(launcher, parallel)
    planned = plan(source=source, text_field=text_field, label_field=label_field, name=name, model=model,
                   pretrained=pretrained, config_overrides=config_overrides, settings=settings, seeds=seeds,
                   recipes=recipes, budget=budget, probe=probe, mteb=mteb, hardware=hardware, output=output,
                   resolve=_resolve)
    _check_launch(planned.runs_on, launcher, parallel, slurm, report_only)
    _record(planned, options)
    start = time.monotonic()
    waiting = launch(planned, launcher=launcher, parallel=parallel, slurm=slurm, keep_checkpoints=keep_checkpoints,
                     mteb=mteb, seeds=seeds, report_only=report_only)
    if len(waiting) == len(planned.cells):
        print(f"no finished cell yet; the report: lightning reproduce --config {planned.folder / 'reproduce.yaml'} "
              "--report_only true")
        return
    untrained = None
    if mteb.tasks and not waiting:  # the base model once the grid is complete; the cells keep their scores
        untrained = evaluate_on_mteb(planned, mteb, seeds, pretrained and UNTRAINED in settings)
    report(planned, options, waiting, untrained, time.monotonic() - start)
