"""Peak resident memory of the default run (``lightning fit --config configs/crop.yaml``) against
the floor of what training this model needs.

The run goes in a child process, in a temporary folder (removed afterwards unless ``--keep``);
the resident memory of its whole process tree (the trainer and its dataloader workers) is sampled
every 20 ms, and the proportional set size (PSS: pages shared between processes counted once)
every 0.5 s. The floor, the named baseline of the ratio, is measured afterwards in another child
process on the run's own batches (the same stream, read without workers):

    floor = weights + gradients + Adam's two moments + the activations of the run's largest step
            (every tensor autograd saves for backward, parameters excluded)

That child also reports the peak RSS of a bare training process: imports, the model and one full
step (forward, backward, Adam) on that batch, without data workers, probes, validation or logging.

    python benchmarks/run_memory.py                           # the default run: 30 steps
    python benchmarks/run_memory.py --steps 10                # a shorter run (one validation)
    python benchmarks/run_memory.py --steps 10 -- --probe.corpora '[]'   # fit options after --
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import lightning as L
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import PeakRss, emit, tree_rss  # noqa: E402

GB = 1e9


class TreeSampler:
    """RSS of a process tree every ``every`` s (total, the root, its descendants) and its PSS every
    ``pss_every`` s, kept as a timeline; the peaks are the largest samples."""

    def __init__(self, pid: int, every: float = 0.02, pss_every: float = 0.5) -> None:
        self.root, self.every, self.pss_every = psutil.Process(pid), every, pss_every
        self.timeline: list[tuple[float, int, int, int]] = []  # (seconds, total, root, descendants)
        self.peak = self.peak_root = self.peak_children = self.peak_pss = 0
        self.done, self._tree, self._listed = threading.Event(), [self.root], -1.0
        self.threads = [threading.Thread(target=self._rss, daemon=True), threading.Thread(target=self._pss, daemon=True)]
        self.start = time.perf_counter()
        for thread in self.threads:
            thread.start()

    def _processes(self) -> list[psutil.Process]:
        """The tree, its membership re-read every 0.5 s (reading it costs more than the sizes)."""
        now = time.perf_counter()
        if now - self._listed > 0.5:
            try:
                self._tree = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                self._tree = []
            self._listed = now
        return self._tree

    def _rss(self) -> None:
        while not self.done.is_set():
            sizes = []
            for p in self._processes():
                try:
                    sizes.append(p.memory_info().rss)
                except psutil.NoSuchProcess:
                    sizes.append(0)
            if sizes:
                total, root = sum(sizes), sizes[0]
                self.timeline.append((time.perf_counter() - self.start, total, root, total - root))
                self.peak, self.peak_root = max(self.peak, total), max(self.peak_root, root)
                self.peak_children = max(self.peak_children, total - root)
            time.sleep(self.every)

    def _pss(self) -> None:
        while not self.done.is_set():
            total = 0
            for p in list(self._tree):
                try:
                    total += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_pss = max(self.peak_pss, total)
            time.sleep(self.pss_every)

    def stop(self) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join()


class PhaseMarks(L.Callback):
    """For ``--phases``: prints the trainer's RSS and its process tree's at each stage of the fit."""

    def __init__(self) -> None:
        self.process, self.start = psutil.Process(), time.perf_counter()

    def mark(self, name: str) -> None:
        print(f"PHASE {name} {time.perf_counter() - self.start:.1f} {self.process.memory_info().rss} "
              f"{tree_rss(self.process)}", flush=True)

    def on_fit_start(self, *args) -> None:
        self.mark("fit_start")

    def on_train_start(self, *args) -> None:
        self.mark("train_start")  # the loader's workers have started; the step-0 probe follows

    def on_train_epoch_start(self, *args) -> None:
        self.mark("epoch_start")  # after the step-0 probe

    def on_train_batch_end(self, trainer, *args) -> None:
        self.mark(f"step_{trainer.global_step}")

    def on_validation_end(self, trainer, *args) -> None:
        self.mark(f"validation_end_{trainer.global_step}")

    def on_fit_end(self, *args) -> None:
        self.mark("fit_end")


def run_fit(steps: int, extra: list[str], folder: str, env: dict) -> tuple[TreeSampler, float, str]:
    """The default fit for ``steps`` steps in ``folder`` (its ``runs/``), sampled; its sampler,
    wall seconds and log file."""
    script = os.path.join(os.path.dirname(sys.executable), "lightning")  # the console script, as the README runs it
    launcher = [script] if os.path.exists(script) else [sys.executable, "-m", "lightning_app"]
    command = [*launcher, "fit", "--config", os.path.join(ROOT, "configs", "crop.yaml"),
               f"--trainer.max_steps={steps}", *extra]
    log = os.path.join(folder, "fit.log")
    with open(log, "w") as out:
        start = time.perf_counter()
        child = subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = TreeSampler(child.pid)
        code = child.wait()
        sampler.stop()
        wall = time.perf_counter() - start
    if code != 0:
        with open(log) as file:
            sys.stderr.write(file.read()[-4000:])
        raise SystemExit(f"the fit exited with status {code}: {' '.join(command)}")
    return sampler, wall, log


def floor_child(steps: int) -> None:
    """Child: the floor's components, with the activations of the run's largest step (the run's
    ``steps`` batches, each embedded once to count what autograd saves), and the peak RSS of a bare
    training process (imports, model, one full step on that batch); one JSON line."""
    from types import SimpleNamespace

    import torch

    from lightning_app.data.datamodule import ContrastiveDataModule
    from lightning_app.cli.memory import release_freed_memory
    from lightning_app.model.module import ContrastiveModule

    imports = psutil.Process().memory_info().rss
    module = ContrastiveModule()  # the default recipe's model: every model option is a code default
    module.trainer = SimpleNamespace(world_size=1, global_rank=0)
    data = ContrastiveDataModule(num_workers=0)  # likewise its data: the run's batches, same stream
    data.trainer = SimpleNamespace(global_rank=0, world_size=1, max_steps=steps, accumulate_grad_batches=1)
    data.setup("fit")
    batches = [batch for _, batch in zip(range(steps), data.train_dataloader())]
    del data
    parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}

    def saved_bytes(batch: dict) -> int:
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in parameters:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor.detach()  # the tensor itself would tie a saved output to its own graph: a cycle never freed

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            module.contrastive_step(batch)
        release_freed_memory()  # hand this graph's freed pages back before the next
        return sum(saved.values())

    module.train()
    activations = [saved_bytes(batch) for batch in batches]
    largest = max(range(len(batches)), key=activations.__getitem__)
    model_loaded = psutil.Process().memory_info().rss
    with PeakRss() as bare:
        optimizer = torch.optim.Adam(module.trainable_parameters(), lr=module.hparams.lr)
        module.contrastive_step(batches[largest])["loss"].backward()
        optimizer.step()
    trainable = module.trainable_parameters()
    print(json.dumps({
        "weights": sum(p.numel() * p.element_size() for p in module.parameters()),
        "grads": sum(p.numel() * p.element_size() for p in trainable),
        "adam": sum(v.numel() * v.element_size() for state in optimizer.state.values()
                    for v in state.values() if torch.is_tensor(v) and v.dim() > 0),
        "activations": activations[largest], "activations_first": activations[0], "largest_step": largest + 1,
        "largest_shape": list(batches[largest]["input_ids"].shape),
        "imports": imports, "model_loaded": model_loaded, "bare_peak": bare.peak,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="trainer.max_steps of the run (the recipe's: 30)")
    parser.add_argument("--keep", default=None, help="run in this folder and keep it (runs/crop/version_N inside)")
    parser.add_argument("--timeline", default=None, help="write the RSS timeline here as CSV (seconds, total, "
                                                         "trainer, workers; bytes)")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor (peak only)")
    parser.add_argument("--phases", action="store_true", help="also print the RSS at each stage of the fit "
                                                              "(adds a callback to the run)")
    parser.add_argument("--floor-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("fit_options", nargs="*", help="extra options for lightning fit (after --)")
    args = parser.parse_args()
    if args.floor_child:
        floor_child(args.steps)
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "HF_HUB_OFFLINE": "1"}
    folder = args.keep or tempfile.mkdtemp(prefix="run-memory-")
    os.makedirs(folder, exist_ok=True)
    load_before = open("/proc/loadavg").read().split()[0]
    try:
        options = [*args.fit_options, *(["--trainer.callbacks+=benchmarks.run_memory.PhaseMarks"] if args.phases else [])]
        sampler, wall, log = run_fit(args.steps, options, folder, env)
        phases = [line.split()[1:] for line in open(log) if line.startswith("PHASE ")]
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    load_after = open("/proc/loadavg").read().split()[0]
    for name, seconds, trainer, tree in phases:
        print(f"  {float(seconds):6.1f} s  {name:<20} trainer {int(trainer) / GB:.2f} GB, tree {int(tree) / GB:.2f} GB")
    if args.timeline:
        with open(args.timeline, "w") as out:
            out.write("seconds,total,trainer,workers\n")
            out.writelines(f"{t:.2f},{total},{root},{children}\n" for t, total, root, children in sampler.timeline)
    print(f"lightning fit --config configs/crop.yaml --trainer.max_steps={args.steps} {' '.join(args.fit_options)}")
    print(f"  {wall:.0f} s, load average {load_before} -> {load_after}")
    print(f"  peak RSS of the process tree {sampler.peak / GB:.2f} GB (trainer alone {sampler.peak_root / GB:.2f} GB, "
          f"its child processes {sampler.peak_children / GB:.2f} GB); peak PSS {sampler.peak_pss / GB:.2f} GB")
    figures = {"peak_gb": round(sampler.peak / GB, 3), "trainer_peak_gb": round(sampler.peak_root / GB, 3),
               "workers_peak_gb": round(sampler.peak_children / GB, 3), "pss_peak_gb": round(sampler.peak_pss / GB, 3),
               "steps": args.steps, "fit_options": args.fit_options, "wall_s": round(wall, 1),
               "load_average": [float(load_before), float(load_after)]}
    if args.no_floor:
        emit("run_peak_rss", **figures)
        return
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--floor-child", f"--steps={args.steps}"],
                         env=env, check=True,
                         capture_output=True, text=True).stdout
    floor = json.loads(out.strip().splitlines()[-1])
    total = floor["weights"] + floor["grads"] + floor["adam"] + floor["activations"]
    print(f"  floor {total / GB:.2f} GB = weights {floor['weights'] / GB:.3f} + gradients {floor['grads'] / GB:.3f} "
          f"+ Adam moments {floor['adam'] / GB:.3f} + activations of the largest step {floor['activations'] / GB:.3f} "
          f"(step {floor['largest_step']}, batch {floor['largest_shape'][0]} rows x {floor['largest_shape'][1]} tokens; "
          f"step 1: {floor['activations_first'] / GB:.3f})")
    print(f"  a bare training process (imports {floor['imports'] / GB:.2f} GB, + model and batches "
          f"{floor['model_loaded'] / GB:.2f} GB, one full step on that batch): peak RSS {floor['bare_peak'] / GB:.2f} GB")
    emit("run_peak_rss_vs_floor", ratio=round(sampler.peak / total, 3),
         baseline="floor: weights + gradients + Adam moments + the largest step's saved activations", **figures,
         floor_gb=round(total / GB, 3), weights_gb=round(floor["weights"] / GB, 3),
         grads_gb=round(floor["grads"] / GB, 3), adam_gb=round(floor["adam"] / GB, 3),
         activations_gb=round(floor["activations"] / GB, 3), largest_step=floor["largest_step"],
         activations_step1_gb=round(floor["activations_first"] / GB, 3), imports_gb=round(floor["imports"] / GB, 3),
         bare_step_peak_gb=round(floor["bare_peak"] / GB, 3),
         ratio_vs_bare_step=round(sampler.peak / floor["bare_peak"], 3))


if __name__ == "__main__":
    main()
