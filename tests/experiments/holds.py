"""A test-only hold for the grid's cells, so a test signals or kills a cell at the point it means.

``lightning reproduce`` runs each cell as its own ``lightning fit`` process, configured by the cell's
recipe plus what the grid sets. The grid resets ``trainer.callbacks`` and the SLURM launcher's
overlay (configs/slurm.yaml) replaces ``trainer.plugins``, so a test puts the hold in a recipe's
``trainer.profiler``: the Trainer calls its profiler at every hook and training batch, and the
default one does nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml
from lightning.pytorch.profilers import PassThroughProfiler

ROOT = Path(__file__).resolve().parents[2]
REQUEUE_SIGNAL = "requeue-signal"


class HoldStep(PassThroughProfiler):
    """At the start of training step ``step`` (1-based; 0: at the first hook Lightning profiles, as
    the fit sets up), in the cell whose folder ends with ``cell`` (None: any), writes ``marker`` and
    waits until ``release``: a file that exists, or
    ``"requeue-signal"``: the run has received SLURM's requeue signal (``StepBoundaryRequeue``
    acts on it at the end of this step); None: until the process is killed. A run whose marker
    exists already (a rerun, a resumed run) is not held. Not released within ``seconds``, it raises:
    the cell fails, and the test with it."""

    def __init__(self, step: int, marker: str, release: str | None = None, cell: str | None = None,
                 seconds: float = 240) -> None:
        super().__init__()
        self.step, self.marker, self.release, self.cell, self.seconds = step, Path(marker), release, cell, seconds

    def start(self, action_name: str) -> None:
        module = getattr(self, "_lightning_module", None)  # set by the Trainer before its first hook
        if module is None:
            return
        trainer = module.trainer
        if (trainer.global_step + 1 if action_name == "run_training_batch" else 0) != self.step or self.marker.exists():
            return
        if self.cell is not None and not Path(trainer.default_root_dir).as_posix().endswith("/" + self.cell):
            return
        self.marker.write_text(str(self.step))
        deadline = time.monotonic() + self.seconds
        while not self._released(trainer):
            if time.monotonic() > deadline:
                raise RuntimeError(f"HoldStep: step {self.step} was not released ({self.release}) in {self.seconds} s")
            time.sleep(0.01)

    def _released(self, trainer) -> bool:
        if self.release == REQUEUE_SIGNAL:
            return any(type(callback).__name__ == "StepBoundaryRequeue" and callback.received
                       for callback in trainer.callbacks)
        return self.release is not None and Path(self.release).exists()


def held_recipe(folder: Path, recipe: str, **hold) -> str:
    """A recipe file in ``folder``: the project's ``recipe`` (configs/crop.yaml, ...) with a
    ``HoldStep(**hold)`` as its profiler."""
    path = folder / f"{Path(recipe).stem}-held-{Path(hold['marker']).name}.yaml"
    path.write_text(yaml.safe_dump({"config": str(ROOT / recipe), "trainer.profiler": {
        "class_path": "tests.experiments.holds.HoldStep", "init_args": hold}}, sort_keys=False))
    return str(path)


def recipes_option(**recipes: str) -> str:
    """``--recipes=`` with the grid's recipes, those given replaced."""
    from lightning_app.experiments.grid import RECIPES

    return f"--recipes={json.dumps({**RECIPES, **recipes})}"


def python_path() -> str:
    """PYTHONPATH for a cell's ``lightning fit``, so it imports this module from the checkout."""
    return os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
