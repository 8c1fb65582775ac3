"""``lightning reproduce``: the paper's comparison on any labelled corpus, as one command."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import yaml

from lightning_app.checks import check_length, check_span_length, config_position_limit
from lightning_app.data.collate import special_tokens
from lightning_app.data.sources import open_corpus
from lightning_app.data.views import TokenCrops
from lightning_app.errors import ConfigError
from lightning_app.experiments.grid import (ALL_SETTINGS, RECIPES, UNTRAINED, Budget, Cell, Hardware, plan, recipe_file,
                                            resolved)
from lightning_app.experiments.launch import check_launcher, run_local, slot_environments
from lightning_app.experiments.logs import read_mteb
from lightning_app.experiments.report import collect, write_report
from lightning_app.experiments.slurm import Slurm, check_slurm, submit
from lightning_app.model.encoder import model_config
from lightning_app.packaged import load_tokenizer


def check_token_crops(recipe: Path, model: str, max_length: int | None) -> None:
    """The token-crop recipe's longest span fits the cells' tokens per view (its own or the
    budget's), checked before any cell runs."""
    config = resolved(recipe)
    view = config["data"]["view"]
    if view["class_path"] != f"{TokenCrops.__module__}.TokenCrops":
        return
    length_option, length = ("budget.max_length", max_length) if max_length else ("data.max_length",
                                                                                   config["data"]["max_length"])
    prefix, suffix = special_tokens(load_tokenizer(model))
    check_span_length(TokenCrops(**view.get("init_args", {})), length, length - len(prefix) - len(suffix),
                      length_option, where=f" ({recipe})")


def corpus_name(corpus: str) -> str:
    """A tag-safe name: ``packaged:bbcnews`` -> ``bbcnews``, ``data/tickets.jsonl`` -> ``tickets``."""
    stem = corpus.split(":", 1)[1] if corpus.startswith("packaged:") else Path(corpus.rstrip("/")).stem
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in stem) or "corpus"


def mteb_scores(model: str, tasks: str, folder: Path, max_seq_length: int, device: str) -> dict:
    """Main score per task, block means and their mean, saved as ``folder/scores.json``; the saved
    scores are reused when they cover the same tasks at the same ``max_seq_length``."""
    from lightning_app.evaluate.mteb_encoder import MtebEncoder
    from lightning_app.evaluate.report import block_means, evaluate_tasks
    from lightning_app.evaluate.tasks import resolve_tasks, task_block

    task_list = resolve_tasks(tasks)
    saved = read_mteb(folder)
    if (saved and set(saved["tasks"]) == {task.metadata.name for task in task_list}
            and saved.get("max_seq_length") == max_seq_length):
        return saved
    folder.mkdir(parents=True, exist_ok=True)
    encoder = MtebEncoder.load(model, max_seq_length=max_seq_length, device=device)
    scores = evaluate_tasks(encoder, task_list, folder)
    means = block_means(scores, {task.metadata.name: task_block(task) for task in task_list})
    overall = means.pop("mean")
    result = {"model": model, "max_seq_length": max_seq_length, "tasks": scores, "blocks": means, "mean": overall}
    (folder / "scores.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def _check_reuse(cells: list[Cell]) -> None:
    """A finished cell is reused only if it was run with the same config."""
    for cell in cells:
        written = cell.folder / "config.yaml"
        if cell.done and yaml.safe_load(written.read_text(encoding="utf-8")) != cell.config:
            raise ConfigError(f"output: {cell.folder} holds a finished {cell.name} run with a different config "
                              f"({written}); pass a new --output, or remove that folder to rerun it")


def _check_options(settings: list[str], seeds: list[int], mteb_seeds: int) -> None:
    unknown = [s for s in settings if s not in ALL_SETTINGS]
    if unknown or not settings:
        raise ConfigError(f"settings: expected some of {list(ALL_SETTINGS)}, got {settings}")
    if not [s for s in settings if s != UNTRAINED]:
        raise ConfigError("settings: 'untrained' is read from the step-0 probe of a trained setting; "
                          "add at least one of " + ", ".join(ALL_SETTINGS[1:]))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: expected distinct integers, got {seeds}")
    if mteb_seeds < 0:
        raise ConfigError(f"mteb_seeds: expected >= 0, got {mteb_seeds}")


def epoch_steps(corpus: str, text_field: str, batch_size: int) -> int:
    """Steps of one epoch over the training split (95% of the documents; 5% hold the validation loss)."""
    documents = sum(1 for _ in open_corpus(corpus, text_field))
    steps = max(1, math.ceil(documents * 0.95 / batch_size))
    print(f"one epoch: {documents} documents, 95% for training -> {steps} steps of {batch_size} pairs")
    return steps


def reproduce_command(*, corpus: str = "packaged:bbcnews", text_field: str = "text", label_field: str = "label",
                      name: str | None = None, model: str | None = None, pretrained: bool = True,
                      config_overrides: dict | None = None, settings: list[str] = list(ALL_SETTINGS),
                      seeds: list[int] = [1, 2, 3], recipes: dict[str, str] = dict(RECIPES),
                      budget: Budget = Budget(), hardware: Hardware = Hardware(),
                      mteb_tasks: str | None = None, mteb_seeds: int = 1, mteb_max_seq_length: int = 256,
                      output: str | None = None, keep_checkpoints: bool = False, launcher: str = "local",
                      parallel: int | None = None, slurm: Slurm = Slurm(), report_only: bool = False) -> None:
    """Run the paper's comparison on a labelled corpus and write a report with a table and figures.

    Every cell (setting x seed) is an ordinary ``lightning fit`` whose config is written to
    OUTPUT/<setting>/seed<seed>/config.yaml; finished cells are skipped on a rerun, so an
    interrupted grid continues where it stopped. The report (report.md, results.csv, layers.csv and
    PNG figures in OUTPUT) is rebuilt from the cells' own logs at the end of every run.
    ``--launcher slurm`` submits the unfinished cells as a SLURM job array and returns; rerun the
    command (or add ``--report_only true``) to rebuild the report from the cells finished so far.

    Args:
        corpus: labelled corpus to train on (labels unused) and to probe: a local file, folder or
            glob, a hub dataset id, or packaged:bbcnews / packaged:newsarticles.
        text_field: the column holding the text.
        label_field: the column holding the class label (probes only).
        name: the corpus' name in tags and titles (default: from the corpus).
        model: base model: hub id, local folder or packaged:minilm; default: the recipes' model.
        pretrained: start from the model's weights; false trains its architecture from random weights.
        config_overrides: fields of the model's config to change, e.g. a smaller random-init BERT.
        settings: which of untrained, dropout, crops, token_crops, crops_last2, crops_last1 to run.
        seeds: one training run per seed and setting.
        recipes: the ``lightning fit`` config each view's cells start from (crops, dropout,
            token_crops); the budget, hardware, corpus and probes below are set on top of it.
        budget: steps, batch, learning rate, lengths and probes shared by every cell (None: the recipe's).
        hardware: accelerator, devices, precision and data workers of every cell (None: the recipe's).
        mteb_tasks: MTEB task set or names to evaluate each final model on (e.g. offline,
            offline-fast, LeeDocumentSimilarity); nothing skips MTEB.
        mteb_seeds: evaluate the models of the first this many seeds on MTEB.
        mteb_max_seq_length: tokens per text for MTEB.
        output: results folder (default: results/<name>).
        keep_checkpoints: keep each finished cell's checkpoints (weights and optimizer state); the
            exported model is always kept.
        launcher: where the cells run: local (this machine) or slurm (one task of a SLURM job array
            per unfinished cell, requeued and resumed when preempted; see the slurm options).
        parallel: cells at once: local, each on its own GPUs (hardware.devices each) or its share of
            the CPU cores (default 1); slurm, the array's limit of running tasks (default none).
        slurm: partition, time limit, GPUs and CPUs per cell and further sbatch options of the array.
        report_only: launch nothing; rebuild the report from the cells finished so far.
    """
    _check_options(settings, seeds, mteb_seeds)
    check_launcher(launcher, parallel)
    name = name or corpus_name(corpus)
    folder = Path(output or os.path.join("results", name))
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output: expected a folder, but {folder} is a file")
    unknown = set(RECIPES) ^ set(recipes)
    if unknown:
        raise ConfigError(f"recipes: expected a config for each of {sorted(RECIPES)}, got {sorted(recipes)}")
    files = {view: recipe_file(path) for view, path in recipes.items()}
    base = resolved(files["crops"])
    model = model or base["model"]["model"]
    config = model_config(model, config_overrides, option="model")
    limit = config_position_limit(config)
    lengths = {"budget.max_length": budget.max_length or base["data"]["max_length"],
               "budget.probe_max_length": budget.probe_max_length or base["probe"]["max_length"],
               "mteb_max_seq_length": mteb_max_seq_length}
    for option, value in lengths.items():
        check_length(option, value, limit, model)
    open_corpus(corpus, text_field, label_field)  # fails early, naming the field, when a column is missing
    batch_size = budget.batch_size or base["data"]["batch_size"]
    if budget.steps == "epoch":
        steps = epoch_steps(corpus, text_field, batch_size)
    else:
        steps = base["trainer"]["max_steps"] if budget.steps is None else budget.steps
    if steps < 1:
        raise ConfigError(f"budget.steps: expected >= 1, 'epoch' or null (the recipe's), got {steps}")
    if "token_crops" in settings:
        check_token_crops(files["token_crops"], model, budget.max_length)
    # What every cell runs on: the hardware options, else the recipe's trainer and data settings.
    runs_on = Hardware(accelerator=hardware.accelerator or base["trainer"]["accelerator"],
                       devices=hardware.devices or base["trainer"]["devices"],
                       precision=hardware.precision or base["trainer"]["precision"],
                       num_workers=base["data"]["num_workers"] if hardware.num_workers is None else hardware.num_workers)
    cells = plan(folder, settings, seeds, recipes=files, budget=budget, steps=steps,
                 num_layers=config.num_hidden_layers, hardware=hardware,
                 model={"model": model, "pretrained": pretrained, "config_overrides": config_overrides},
                 corpus={"name": name, "source": corpus, "text_field": text_field, "label_field": label_field})
    _check_reuse(cells)
    if not report_only and launcher == "slurm":
        check_slurm(slurm, runs_on)
    elif not report_only:
        slot_environments(parallel or 1, runs_on)  # enough GPUs / cores, before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    options = {"corpus": corpus, "text_field": text_field, "label_field": label_field, "name": name,
               "model": model, "pretrained": pretrained, "config_overrides": config_overrides,
               "settings": list(settings), "seeds": list(seeds), "recipes": dict(recipes),
               "budget": dataclasses.asdict(budget),
               "hardware": dataclasses.asdict(hardware), "mteb_tasks": mteb_tasks, "mteb_seeds": mteb_seeds,
               "mteb_max_seq_length": mteb_max_seq_length, "output": str(folder),
               "keep_checkpoints": keep_checkpoints, "launcher": launcher, "parallel": parallel,
               "slurm": dataclasses.asdict(slurm)}
    (folder / "reproduce.yaml").write_text(yaml.safe_dump(options, sort_keys=False), encoding="utf-8")

    start = time.monotonic()
    rerun = f"lightning reproduce --config {folder / 'reproduce.yaml'}"
    if report_only:
        waiting = [cell for cell in cells if not cell.done]
    elif launcher == "slurm":
        waiting = submit(cells, folder, slurm, parallel, keep_checkpoints,
                         mteb={"tasks": mteb_tasks, "seeds": seeds[:mteb_seeds], "max_seq_length": mteb_max_seq_length,
                               "gpu": runs_on.accelerator != "cpu"} if mteb_tasks else None)
        if waiting:
            print(f"watch:  squeue --me --array --name={slurm.job_name}   (each cell's progress: "
                  f"{folder}/<setting>/seed<N>/fit.log, task output: {folder / 'slurm'}/<job>_<task>.out)\n"
                  f"report: {rerun} --report_only true   (any time; complete once every task has finished)")
    else:
        run_local(cells, parallel or 1, runs_on, keep_checkpoints)
        waiting = []
    if len(waiting) == len(cells):
        print(f"no finished cell yet; the report: {rerun} --report_only true")
        return

    device = "cuda" if runs_on.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"
    untrained = None
    if mteb_tasks and not waiting:  # the base model once the grid is complete; cells keep their scores
        if pretrained and UNTRAINED in settings:  # a random-init base has no weights to evaluate
            print(f"MTEB {mteb_tasks}: {UNTRAINED}", flush=True)
            untrained = mteb_scores(model, mteb_tasks, folder / UNTRAINED / "mteb", mteb_max_seq_length, device)
        for cell in cells:
            if cell.seed in seeds[:mteb_seeds] and cell.done:
                print(f"MTEB {mteb_tasks}: {cell.name}", flush=True)
                mteb_scores(str(cell.export_dir), mteb_tasks, cell.folder / "mteb", mteb_max_seq_length, device)

    measured = collect(cells, name, untrained)
    if UNTRAINED not in settings:
        measured.pop(UNTRAINED, None)
    described = model if pretrained else f"random-init {config.model_type} ({config.num_hidden_layers} layers x " \
                                         f"{config.hidden_size})"
    header = [f"- command: `lightning reproduce --config {folder / 'reproduce.yaml'}` (the options of this run)",
              f"- model: {described}" + (f", `{model}` with {config_overrides}" if not pretrained else "")
              + f"; corpus: {corpus} (labels: {label_field})",
              f"- recipes: {', '.join(f'{view} `{path}`' for view, path in recipes.items())}",
              f"- budget: {steps} steps of {batch_size} pairs, lr {budget.lr or base['model']['lr']}, "
              f"{budget.max_length or base['data']['max_length']} tokens per view; probes every "
              f"{cells[0].config['trainer.val_check_interval']} steps on {budget.probe_documents or 'all'} "
              f"documents at {budget.probe_max_length or base['probe']['max_length']} tokens",
              f"- seeds: {', '.join(map(str, seeds))}; machine: {platform.machine()}, {os.cpu_count()} CPUs, "
              f"device {device}; the runs took {sum(sum(row.wall_s) for row in measured.values()) / 60:.1f} min "
              f"in all (this invocation {(time.monotonic() - start) / 60:.1f} min)"]
    if waiting:
        header.append(f"- **incomplete**: {len(cells) - len(waiting)} of {len(cells)} cells finished; still to come: "
                      + ", ".join(cell.name for cell in waiting))
    report = write_report(measured, folder, f"{name}, {described}", header)
    print(report.read_text(encoding="utf-8"))
    print(f"report: {report}")
