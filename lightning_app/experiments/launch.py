"""Where the grid's cells run: ``local`` (this machine, up to ``parallel`` cells at once, each on its
own GPUs or its share of the CPU cores) or ``slurm`` (one task of a SLURM job array per cell,
``experiments.slurm``). Either way a cell is ``grid.run_cell``: an ordinary ``lightning fit``."""

from __future__ import annotations

import os
import queue
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import torch

from lightning_app.errors import ConfigError
from lightning_app.experiments import children
from lightning_app.experiments.grid import Cell, Hardware, run_cell

LAUNCHERS = ("local", "slurm")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def check_launcher(launcher: str, parallel: int | None) -> None:
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher: expected one of {', '.join(LAUNCHERS)}, got '{launcher}'")
    if parallel is not None and parallel < 1:
        raise ConfigError(f"parallel: expected >= 1 cells at once, got {parallel}")


def uses_gpu(hardware: Hardware) -> bool:
    return hardware.accelerator in ("gpu", "cuda") or (hardware.accelerator == "auto" and torch.cuda.is_available())


def slot_environments(parallel: int, hardware: Hardware) -> list[dict]:
    """One environment per concurrent cell: its own GPUs (``CUDA_VISIBLE_DEVICES``, ``hardware.devices``
    each) and an equal share of the CPU cores as math-library threads, so that ``parallel`` cells never
    ask for more GPUs or threads than the machine has. One cell at a time keeps the environment."""
    if parallel == 1:
        return [{}]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = {name: str(max(1, cores // parallel)) for name in THREAD_VARIABLES}
    if not uses_gpu(hardware):
        if parallel > cores:
            raise ConfigError(f"parallel: expected at most {cores} cells at once on this machine's {cores} CPU "
                              f"cores, got {parallel}")
        return [dict(threads) for _ in range(parallel)]
    per_cell = hardware.devices
    if isinstance(per_cell, str) and per_cell.isdigit():
        per_cell = int(per_cell)
    if not isinstance(per_cell, int) or per_cell < 1:
        raise ConfigError(f"hardware.devices: --parallel pins each cell to its own GPUs; expected a number of "
                          f"GPUs per cell, got {per_cell!r}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [gpu for gpu in visible.split(",") if gpu.strip()] if visible is not None else \
        [str(index) for index in range(torch.cuda.device_count())]
    if parallel * per_cell > len(gpus):
        raise ConfigError(f"parallel: {parallel} cells at once with {per_cell} GPU(s) each need "
                          f"{parallel * per_cell} GPUs, this machine shows {len(gpus)}")
    return [{**threads, "CUDA_VISIBLE_DEVICES": ",".join(gpus[slot * per_cell:(slot + 1) * per_cell])}
            for slot in range(parallel)]


def run_local(cells: list[Cell], parallel: int, hardware: Hardware, keep_checkpoints: bool) -> None:
    """Run every unfinished cell here, ``parallel`` at a time. A failed cell stops new ones from
    starting; those already running finish (their results are kept) before its error is raised.
    SIGTERM or SIGINT stops every running cell (each resumes from its checkpoint on a rerun)."""
    environments = slot_environments(parallel, hardware)
    todo = [(index, cell) for index, cell in enumerate(cells, 1) if not cell.done]
    for index, cell in enumerate(cells, 1):
        if cell.done:
            print(f"[{index}/{len(cells)}] {cell.name}: finished earlier, kept")
    free: queue.SimpleQueue[dict] = queue.SimpleQueue()
    for environment in environments:
        free.put(environment)
    failed = []

    def one(index: int, cell: Cell) -> None:
        if failed:
            return
        environment = free.get()
        pinned = f" (CUDA_VISIBLE_DEVICES={environment['CUDA_VISIBLE_DEVICES']})" \
            if "CUDA_VISIBLE_DEVICES" in environment else ""
        print(f"[{index}/{len(cells)}] {cell.name}: lightning fit --config {cell.folder / 'config.yaml'}{pinned}",
              flush=True)
        try:
            seconds = run_cell(cell, keep_checkpoints, env=environment)
            print(f"[{index}/{len(cells)}] {cell.name}: done in {seconds:.0f} s", flush=True)
        except Exception as error:
            failed.append(error)
            raise
        finally:
            free.put(environment)

    with children.stopped_with_runner():
        if parallel == 1:
            for index, cell in todo:
                one(index, cell)
            return
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="cell") as pool:
            futures = [pool.submit(one, index, cell) for index, cell in todo]
            wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future.exception() is not None:
                raise future.exception()
