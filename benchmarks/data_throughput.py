"""Does the data pipeline keep training fed? Training pairs/s fed by the DataModule (its workers
streaming, cropping, tokenizing and collating while the model trains) against training pairs/s fed
the very same batches pre-collated in memory.

Both are a ``Trainer.fit`` of the default model for ``--steps`` steps in this process, timed from
``on_fit_start`` (before the training dataloader is created: worker start and the first shuffle
window's fill are included) to the end of the last step. The DataModule's workers compete with
training for the same cores; the memory-fed run has no worker. The batches are the DataModule's
first ``--steps`` batches, collected beforehand, so both train on identical batches (checked by
their token counts). Repeats alternate which runs first. Figure: ``ratio`` = DataModule-fed /
memory-fed training pairs/s (target >= 0.97), medians over the repeats.

Also the DataModule alone: pairs/s it delivers for crops and token crops (several jsonl shards,
``--delivery-workers`` workers, batch 64), timed from the first request (the iterator's creation,
so window fill included), and that figure over the memory-fed training pairs/s.

    python benchmarks/data_throughput.py                 # 10 steps x 2 repeats, the default recipe's data
    python benchmarks/data_throughput.py --steps 30      # the default run's length
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import shutil
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

import lightning as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import emit, write_jsonl_shards  # noqa: E402
from lightning_app.cli.memory import ReleaseFreedMemory, release_freed_memory  # noqa: E402
from lightning_app.data.datamodule import ContrastiveDataModule  # noqa: E402
from lightning_app.data.views import SentenceCrops, TokenCrops  # noqa: E402
from lightning_app.model.module import ContrastiveModule  # noqa: E402

DEFAULTS = {name: p.default for name, p in inspect.signature(ContrastiveDataModule).parameters.items()}


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def attach(dm: ContrastiveDataModule, max_steps: int) -> ContrastiveDataModule:
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1, max_steps=max_steps, accumulate_grad_batches=1)
    dm.setup("fit")
    return dm


def delivered(source: str, view, args) -> float:
    """Pairs/s of the training dataloader from the first request (iterator creation) on."""
    dm = attach(ContrastiveDataModule(source=source, view=view, batch_size=64, num_workers=args.delivery_workers,
                                      max_length=args.max_length), 10**6)
    start = time.perf_counter()
    loader = iter(dm.train_dataloader())
    for _ in range(args.batches):
        next(loader)
    return args.batches * 64 / (time.perf_counter() - start)


class FitTimer(L.Callback):
    """Seconds from ``on_fit_start`` to the end of the last training step, the tokens trained on, and
    where the time went: to the end of the first step (worker start and the first window's fill
    included), and each later step from the end of the one before (its wait for the batch included)."""

    def __init__(self) -> None:
        self.tokens = 0
        self.ends: list[float] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tokens += batch["tokens"]
        self.ends.append(time.perf_counter() - self.start)
        self.seconds = self.ends[-1]

    @property
    def first_step(self) -> float:
        return self.ends[0]

    @property
    def later_steps(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])]


def fit(data, steps: int) -> FitTimer:
    """A ``steps``-step fit of the default model on ``data`` (a DataModule or a DataLoader), timed.

    It starts from the heap a fresh process has, as ``lightning fit`` does: the earlier fits' freed
    memory handed back first (a worker forked from a process holding it costs its first step
    seconds of copy-on-write), and freed memory handed back after every step, as in every CLI run."""
    gc.collect()
    release_freed_memory()
    timer = FitTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[timer, ReleaseFreedMemory()])
    module = ContrastiveModule()
    if isinstance(data, ContrastiveDataModule):
        trainer.fit(module, datamodule=data)
    else:
        trainer.fit(module, train_dataloaders=data)
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="training steps per fit")
    parser.add_argument("--repeats", type=int, default=2, help="fits of each kind, interleaved")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--workers", type=int, default=DEFAULTS["num_workers"], help="workers of the DataModule-fed fit")
    parser.add_argument("--max-length", type=int, default=DEFAULTS["max_length"])
    parser.add_argument("--delivery-workers", type=int, default=2)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batches", type=int, default=40, help="batches timed for the delivery figure")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads; training: {args.steps} steps of "
          f"{args.batch_size} pairs, {args.workers} worker(s); load average {load()}", flush=True)

    def datamodule() -> ContrastiveDataModule:
        return ContrastiveDataModule(batch_size=args.batch_size, num_workers=args.workers, max_length=args.max_length)

    collect = attach(datamodule(), args.steps)
    batches = [batch for _, batch in zip(range(args.steps), collect.train_dataloader())]
    del collect
    memory = DataLoader(batches, batch_size=None)
    expected = sum(batch["tokens"] for batch in batches)
    rates = {"datamodule": [], "memory": []}
    first, later = {"datamodule": [], "memory": []}, {"datamodule": [], "memory": []}
    for repeat in range(args.repeats):
        for kind in (("datamodule", "memory") if repeat % 2 == 0 else ("memory", "datamodule")):
            timer = fit(datamodule() if kind == "datamodule" else memory, args.steps)
            if timer.tokens != expected:
                raise SystemExit(f"{kind}-fed fit trained on {timer.tokens} tokens, the collected batches hold {expected}")
            rates[kind].append(args.steps * args.batch_size / timer.seconds)
            first[kind].append(timer.first_step)
            later[kind].append(sum(timer.later_steps))
            print(f"repeat {repeat + 1}, {kind}-fed: {timer.seconds:.1f} s, {rates[kind][-1]:.2f} pairs/s; "
                  f"to the end of step 1 {timer.first_step:.1f} s, steps 2-{args.steps} {sum(timer.later_steps):.1f} s "
                  f"(median step {statistics.median(timer.later_steps):.2f} s, slowest {max(timer.later_steps):.2f} s) "
                  f"(load average {load()})", flush=True)
    fed, mem = statistics.median(rates["datamodule"]), statistics.median(rates["memory"])
    print(f"training pairs/s: DataModule-fed {fed:.2f} (runs {[round(r, 2) for r in rates['datamodule']]}), "
          f"memory-fed {mem:.2f} (runs {[round(r, 2) for r in rates['memory']]}): {fed / mem:.3f}")

    folder = tempfile.mkdtemp(prefix="data-throughput-")
    delivery = {}
    try:
        source = write_jsonl_shards(folder, args.shards, repeat=2)
        # token crops as configs/token_crop.yaml sets them (252-token windows fit max_length 128)
        for name, view in {"crops": SentenceCrops(), "token_crops": TokenCrops(chunk_tokens=252)}.items():
            runs = [delivered(source, view, args) for _ in range(args.repeats)]
            delivery[name] = round(statistics.median(runs), 1)
            print(f"DataModule alone, {name}: {delivery[name]} pairs/s (runs {[round(r, 1) for r in runs]}; "
                  f"{args.delivery_workers} workers, {args.shards} shards, batch 64, first request included): "
                  f"{delivery[name] / mem:.0f}x the memory-fed training (load average {load()})", flush=True)
    finally:
        shutil.rmtree(folder)
    emit("training_pairs_per_s_datamodule_vs_memory", ratio=round(fed / mem, 3),
         baseline="the same batches pre-collated in memory, same process and threads",
         datamodule_pairs_per_s=round(fed, 2), memory_pairs_per_s=round(mem, 2),
         datamodule_runs=[round(r, 2) for r in rates["datamodule"]], memory_runs=[round(r, 2) for r in rates["memory"]],
         first_step_s={kind: round(statistics.median(v), 2) for kind, v in first.items()},
         later_steps_s={kind: round(statistics.median(v), 2) for kind, v in later.items()},
         steps=args.steps, batch_size=args.batch_size, workers=args.workers,
         delivered_pairs_per_s=delivery,
         delivered_vs_training=round(min(delivery.values()) / mem, 1))


if __name__ == "__main__":
    main()
