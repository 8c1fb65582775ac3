"""The grid as a SLURM job array: one array task per unfinished cell, submitted with a generated
``sbatch`` script that asks, like ``slurm/train.sbatch``, for ``--signal=SIGUSR1@90 --requeue``.
Each task runs its cell with ``grid.run_cell`` and ``configs/slurm.yaml`` on top, so a preempted
cell saves ``hpc_ckpt_N.ckpt``, is requeued and resumes from it.

Everything lives in ``OUTPUT/slurm/``: ``array-K.json`` (task index -> cell, and what each task
does), ``array-K.sbatch``, ``jobs.tsv`` (submitted job id, task file) and the tasks' outputs. A
rerun asks ``squeue`` which tasks are still pending or running and submits only the cells that are
neither done nor queued.

``python -m lightning_app.experiments.slurm OUTPUT/slurm/array-K.json`` is the array task itself.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from lightning_app.errors import ConfigError, first_line
from lightning_app.experiments import children
from lightning_app.experiments.grid import Cell, Hardware, run_cell

# States in which squeue still lists a task that will not run again.
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED", "SPECIAL_EXIT", "REVOKED"}
OVERLAY = "configs/slurm.yaml"


@dataclass
class Slurm:
    """The SLURM job array of ``--launcher slurm``: one array task per cell.

    Args:
        partition: the partition (sbatch --partition); None: the cluster's default.
        time: the time limit of one task (sbatch --time); a cell that reaches it is requeued and resumes.
        gpus_per_cell: GPUs per task (sbatch --gres=gpu:N); 0 for a CPU partition.
        cpus_per_cell: CPU cores per task (sbatch --cpus-per-task), for data loading and probes.
        job_name: the array's name (sbatch --job-name).
        sbatch_options: further sbatch options, one per item, e.g. --account=abc or --qos=long.
    """

    partition: str | None = None
    time: str = "24:00:00"
    gpus_per_cell: int = 1
    cpus_per_cell: int = 8
    job_name: str = "reproduce"
    sbatch_options: list[str] = field(default_factory=list)


def _run(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise ConfigError(f"launcher: 'slurm' needs `{command[0]}` on PATH (run on a SLURM login node)") from None


def overlay_path() -> Path:
    """``configs/slurm.yaml`` of the checkout this package runs from, else of the working folder."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / OVERLAY).is_file():
            return root / OVERLAY
    raise ConfigError(f"launcher: 'slurm' adds {OVERLAY} to every cell, but there is none in "
                      f"{Path(__file__).resolve().parents[2]} or {Path.cwd()}")


def check_slurm(slurm: Slurm, hardware: Hardware) -> None:
    """Everything ``--launcher slurm`` can check before it writes anything."""
    if str(hardware.devices) != "1":
        raise ConfigError(f"hardware.devices: the slurm launcher runs each cell as one process on one device; "
                          f"expected 1, got {hardware.devices}")
    if slurm.gpus_per_cell < 0 or slurm.cpus_per_cell < 1:
        raise ConfigError(f"slurm: expected gpus_per_cell >= 0 and cpus_per_cell >= 1, got {slurm.gpus_per_cell} "
                          f"and {slurm.cpus_per_cell}")
    for option in slurm.sbatch_options:
        if not option.startswith("-"):
            raise ConfigError(f"slurm.sbatch_options: expected sbatch options such as --qos=long, got '{option}'")
    overlay_path()
    if slurm.partition is not None:
        shown = _run(["scontrol", "show", "partition", slurm.partition])
        if shown.returncode != 0:
            raise ConfigError(f"slurm.partition: no partition '{slurm.partition}' on this cluster "
                              f"({first_line(shown.stderr + shown.stdout)})")
    if shutil.which("sbatch") is None:
        raise ConfigError("launcher: 'slurm' needs `sbatch` on PATH (run on a SLURM login node)")


def _jobs(folder: Path) -> list[tuple[str, Path]]:
    """(job id, task file) of every array submitted for this output folder."""
    listing = folder / "slurm" / "jobs.tsv"
    if not listing.exists():
        return []
    return [(job, folder / "slurm" / tasks) for job, tasks in
            (line.split("\t") for line in listing.read_text(encoding="utf-8").splitlines() if line)]


def queued_cells(folder: Path) -> dict[Path, str]:
    """Cell folder -> SLURM task id (``<array job>_<index>``) of every cell whose task is pending or running."""
    jobs = _jobs(folder)
    if not jobs:
        return {}
    listed = _run(["squeue", "--noheader", "--array", f"--user={getpass.getuser()}", "--format=%i %T"])
    if listed.returncode != 0:
        raise ConfigError(f"launcher: squeue failed: {first_line(listed.stderr + listed.stdout)}")
    active = {task for task, state in (line.split()[:2] for line in listed.stdout.splitlines() if line.strip())
              if state.upper() not in ENDED}
    queued = {}
    for job, tasks in jobs:
        for index, entry in enumerate(json.loads(tasks.read_text(encoding="utf-8"))["cells"]):
            if f"{job}_{index}" in active:
                queued[Path(entry["folder"])] = f"{job}_{index}"
    return queued


def batch_script(slurm: Slurm, tasks: Path, count: int, parallel: int | None) -> str:
    """The ``sbatch --array`` script: task ``$SLURM_ARRAY_TASK_ID`` runs the cell listed at that index."""
    log = tasks.parent / "%A_%a.out"
    options = [f"--job-name={slurm.job_name}", f"--array=0-{count - 1}" + (f"%{parallel}" if parallel else ""),
               "--ntasks=1", f"--cpus-per-task={slurm.cpus_per_cell}", f"--time={slurm.time}",
               *([f"--gres=gpu:{slurm.gpus_per_cell}"] if slurm.gpus_per_cell else []),
               *([f"--partition={slurm.partition}"] if slurm.partition else []),
               "--signal=SIGUSR1@90", "--requeue", "--open-mode=append", f"--output={log}", *slurm.sbatch_options]
    return "\n".join([
        "#!/bin/bash",
        "# Written by `lightning reproduce --launcher slurm`: one array task per cell of the grid.",
        "# 90 s before the time limit (or on preemption) SLURM sends SIGUSR1: the cell saves",
        "# hpc_ckpt_N.ckpt in its folder and requeues its task, which resumes from it.",
        *[f"#SBATCH {option}" for option in options],
        "set -euo pipefail",
        f"cd {shlex.quote(str(Path.cwd()))}",
        f"srun {shlex.quote(sys.executable)} -m lightning_app.experiments.slurm {shlex.quote(str(tasks))}",
        ""])


def submit(cells: list[Cell], folder: Path, slurm: Slurm, parallel: int | None, keep_checkpoints: bool,
           mteb: dict | None) -> list[Cell]:
    """Submit every cell that is neither done nor queued as one job array; returns the cells still to
    come (queued before or submitted now). ``mteb``: the options of the cells' own MTEB evaluation."""
    queued = queued_cells(folder)
    for cell in cells:
        written = cell.folder / "config.yaml"
        if cell.folder in queued and yaml.safe_load(written.read_text(encoding="utf-8")) != cell.config:
            raise ConfigError(f"output: {cell.name} is queued as SLURM task {queued[cell.folder]} with a different "
                              f"config ({written}); scancel it or pass a new --output")
    for index, cell in enumerate(cells, 1):
        state = "finished earlier, kept" if cell.done else \
            f"queued as SLURM task {queued[cell.folder]}" if cell.folder in queued else None
        if state:
            print(f"[{index}/{len(cells)}] {cell.name}: {state}")
    todo = [cell for cell in cells if not cell.done and cell.folder not in queued]
    waiting = [cell for cell in cells if cell.folder in queued]
    if not todo:
        print("nothing to submit" + (f": {len(waiting)} cell(s) pending or running" if waiting else ""))
        return waiting
    slurm_folder = folder / "slurm"
    slurm_folder.mkdir(parents=True, exist_ok=True)
    overlay = slurm_folder / "slurm.yaml"
    shutil.copyfile(overlay_path(), overlay)
    number = 1
    while (slurm_folder / f"array-{number}.json").exists():
        number += 1
    tasks = slurm_folder / f"array-{number}.json"
    for cell in todo:
        cell.folder.mkdir(parents=True, exist_ok=True)
        (cell.folder / "config.yaml").write_text(yaml.safe_dump(cell.config, sort_keys=False), encoding="utf-8")
    tasks.write_text(json.dumps({
        "keep_checkpoints": keep_checkpoints, "overlay": str(overlay), "mteb": mteb,
        "cells": [{"setting": cell.setting, "seed": cell.seed, "folder": str(cell.folder)} for cell in todo]},
        indent=1) + "\n", encoding="utf-8")
    script = slurm_folder / f"array-{number}.sbatch"
    script.write_text(batch_script(slurm, tasks, len(todo), parallel), encoding="utf-8")
    done = _run(["sbatch", "--parsable", str(script)])
    if done.returncode != 0:
        raise ConfigError(f"slurm: sbatch refused {script}: {first_line(done.stderr + done.stdout)}")
    job = done.stdout.strip().split(";")[0]
    with open(slurm_folder / "jobs.tsv", "a", encoding="utf-8") as listing:
        listing.write(f"{job}\t{tasks.name}\n")
    for index, cell in enumerate(todo):
        print(f"  task {job}_{index}: {cell.name}")
    print(f"submitted SLURM array job {job}: {len(todo)} cell(s), script {script}")
    return waiting + todo


def run_task(tasks: Path, index: int) -> None:
    """One array task: run its cell (resuming from the cell's newest checkpoint) and, when asked,
    evaluate the cell's exported model on MTEB, here on the task's node."""
    plan = json.loads(tasks.read_text(encoding="utf-8"))
    entry = plan["cells"][index]
    folder = Path(entry["folder"])
    cell = Cell(entry["setting"], entry["seed"], folder,
                yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")))
    print(f"{cell.name}: task {index} of {tasks}", flush=True)
    if not cell.done:
        # SLURM signals the job step; the cell's process runs in its own group, so it is passed on.
        with children.stopped_with_runner(forward=(signal.SIGUSR1,)):
            seconds = run_cell(cell, plan["keep_checkpoints"], overlays=(plan["overlay"],))
        if seconds is None:
            print(f"{cell.name}: saved for a requeue; the requeued task resumes it", flush=True)
            return
        print(f"{cell.name}: done in {seconds:.0f} s", flush=True)
    mteb = plan.get("mteb")
    if mteb and cell.seed in mteb["seeds"]:
        from lightning_app.evaluate.scores import mteb_scores

        device = "cuda" if mteb["gpu"] and torch.cuda.is_available() else "cpu"
        mteb_scores(str(cell.export_dir), mteb["tasks"], cell.folder / "mteb", mteb["max_length"], device)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or "SLURM_ARRAY_TASK_ID" not in os.environ:
        raise SystemExit("usage (inside a SLURM array task): python -m lightning_app.experiments.slurm ARRAY.json")
    try:
        run_task(Path(argv[0]), int(os.environ["SLURM_ARRAY_TASK_ID"]))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
