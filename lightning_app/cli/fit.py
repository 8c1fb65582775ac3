"""``lightning fit|validate|test``: LightningCLI over the contrastive module and data module, with
every run's callbacks as config sections, pre-fit checks, and preemption-safe checkpoints and logs."""

from __future__ import annotations

import warnings
from pathlib import Path

import yaml
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_app.cli.checks import check_fit, constructor_error, set_up_early
from lightning_app.data.datamodule import ContrastiveDataModule
from lightning_app.errors import ConfigError
from lightning_app.evaluate.callback import MtebCallback
from lightning_app.cli.memory import ReleaseFreedMemory
from lightning_app.model.export import ExportEncoder
from lightning_app.model.load import read_checkpoint
from lightning_app.model.module import ContrastiveModule
from lightning_app.model.throughput import PairThroughput
from lightning_app.cli.continuation import ContinueLogs, ValidateTheCheckpointStep
from lightning_app.cli.preemption import AtomicCheckpointIO, LastIsNewest, StepBoundaryRequeue
from lightning_app.probes.callbacks import LayerProbe
from lightning_app.probes.drift import LayerDrift

# The callbacks every run has, each configured in its own section of the config (``probe.k: 10``),
# so a recipe changes one option without restating the list: section -> callback.
SECTIONS = {"checkpoint": ModelCheckpoint, "throughput": PairThroughput, "export": ExportEncoder,
            "probe": LayerProbe, "drift": LayerDrift, "mteb": MtebCallback}

SEED = 42  # seed_everything's default

# ``--ckpt_path`` values Lightning resolves itself (the newest last/hpc/best checkpoint).
SPECIAL_CKPT_PATHS = {"last", "hpc", "best"}

class ContrastiveCLI(LightningCLI):
    """LightningCLI whose data module always tokenizes like the model it feeds, whose callbacks
    are config sections (``SECTIONS``; ``trainer.callbacks`` adds others), whose trainer
    survives preemption (atomic checkpoints, requeue at a step boundary, continuous logs; see
    ``lightning_app.cli.preemption`` and ``lightning_app.cli.continuation``) and hands freed memory back between steps (``lightning_app.cli.memory``)."""

    def init_parser(self, **kwargs):
        """Parse errors raise (``main`` prints them as one line) instead of printing the usage."""
        return super().init_parser(exit_on_error=False, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model", "data.tokenizer")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")
        for section, callback in SECTIONS.items():
            parser.add_lightning_class_args(callback, section)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        # First: ContinueLogs journals before any other callback logs, and a pending validation of the
        # last step runs before the other callbacks' end of fit.
        trainer.callbacks[:0] = [ContinueLogs(), ValidateTheCheckpointStep()]
        trainer.callbacks.extend([StepBoundaryRequeue(), LastIsNewest(), ReleaseFreedMemory()])
        return trainer

    def instantiate_classes(self) -> None:
        """A constructor's ValueError/TypeError (a view's, the loss', a callback's) becomes one line
        naming the option that configured the object."""
        try:
            super().instantiate_classes()
        except ConfigError:
            raise
        except (ValueError, TypeError, MisconfigurationException) as error:
            roots = {ContrastiveModule: "model", ContrastiveDataModule: "data", Trainer: "trainer",
                     **{callback: section for section, callback in SECTIONS.items()}}
            raise constructor_error(error, self.config[self.subcommand], roots) from None

    def before_fit(self) -> None:
        """Token lengths, the contrastive batch and the corpora, checked before anything is written."""
        check_fit(self.trainer, self.model, self.datamodule)
        set_up_early(self.trainer, self.model, self.datamodule)

    def parse_arguments(self, parser, args) -> None:
        """Also checks ``--ckpt_path`` before anything reads it: one clear line if it is not a
        complete checkpoint (the file is left untouched)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path is not None and str(path) not in SPECIAL_CKPT_PATHS:
            try:
                read_checkpoint(path)
            except ConfigError as error:
                raise ConfigError(f"ckpt_path: {error}") from None


class _Parsed(Exception):
    """Carries a parsed config out of ``LightningCLI.__init__`` before anything is built."""


class _RecipeCLI(ContrastiveCLI):
    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        raise _Parsed(parser.dump(self.config, skip_none=False, skip_check=True))


def resolve_recipe(path: str | Path) -> dict:
    """The complete ``lightning fit`` config a recipe file stands for, every default filled in (what
    ``lightning fit --config PATH --print_config`` shows); nothing is built."""
    try:
        with warnings.catch_warnings():  # the args are the recipe's, not the running command's
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            _RecipeCLI(ContrastiveModule, ContrastiveDataModule, args=["fit", "--config", str(path)],
                       seed_everything_default=SEED, save_config_kwargs={"overwrite": True})
    except _Parsed as parsed:
        return yaml.safe_load(str(parsed))["fit"]
    raise AssertionError("unreachable: parse_arguments always raises")


def run(args: list[str] | None, description: str) -> None:
    """``lightning fit|validate|test ...`` (``args`` None: the process's own)."""
    ContrastiveCLI(ContrastiveModule, ContrastiveDataModule, args=args, seed_everything_default=SEED,
                   save_config_kwargs={"overwrite": True}, parser_kwargs={"description": description})
