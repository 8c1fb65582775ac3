"""The ``lightning`` command: LightningCLI for fit/validate/test, plus ``export``, ``mteb``, ``reproduce`` and ``embed``."""

from __future__ import annotations

import re
import sys

from jsonargparse import CLI, ArgumentError
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_app.checks import check_fit, constructor_error, set_up_early
from lightning_app.data.datamodule import ContrastiveDataModule
from lightning_app.errors import ConfigError
from lightning_app.evaluate.callback import MtebCallback
from lightning_app.export import ExportEncoder, read_checkpoint
from lightning_app.memory import ReleaseFreedMemory
from lightning_app.model.module import ContrastiveModule
from lightning_app.model.throughput import PairThroughput
from lightning_app.preemption import AtomicCheckpointIO, ContinueLogs, LastIsNewest, StepBoundaryRequeue
from lightning_app.probes.callbacks import LayerProbe
from lightning_app.probes.drift import LayerDrift

# The callbacks every run has, each configured in its own section of the config (``probe.k: 10``),
# so a recipe changes one option without restating the list: section -> callback.
SECTIONS = {"checkpoint": ModelCheckpoint, "throughput": PairThroughput, "export": ExportEncoder,
            "probe": LayerProbe, "drift": LayerDrift, "mteb": MtebCallback}

# ``--ckpt_path`` values Lightning resolves itself (the newest last/hpc/best checkpoint).
SPECIAL_CKPT_PATHS = {"last", "hpc", "best"}

DESCRIPTION = """Self-supervised fine-tuning of text embedding models (crops, token crops, dropout).

Start with:  lightning fit --config configs/crop.yaml
Other commands:  lightning export --help   (checkpoint -> HF / sentence-transformers folder)
                 lightning mteb --help     (evaluate a checkpoint, folder or hub model on MTEB)
                 lightning reproduce --help  (the paper's comparison on a labelled corpus, with a report)
                 lightning embed --help    (embed a corpus into Parquet shards, optionally with a 2D map)"""


class ContrastiveCLI(LightningCLI):
    """LightningCLI whose data module always tokenizes like the model it feeds, whose callbacks
    are config sections (``SECTIONS``; ``trainer.callbacks`` adds others), whose trainer
    survives preemption (atomic checkpoints, requeue at a step boundary, continuous logs; see
    ``lightning_app.preemption``) and hands freed memory back between steps (``lightning_app.memory``)."""

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
        trainer.callbacks.extend([StepBoundaryRequeue(), ContinueLogs(), LastIsNewest(), ReleaseFreedMemory()])
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


def _export(args: list[str]) -> None:
    from lightning_app.export import export_command
    CLI(export_command, args=args, prog="lightning export", exit_on_error=False)


def _mteb(args: list[str]) -> None:
    from lightning_app.evaluate.command import mteb_command
    CLI(mteb_command, args=args, prog="lightning mteb", exit_on_error=False)


def _reproduce(args: list[str]) -> None:
    from lightning_app.experiments.command import reproduce_command
    CLI(reproduce_command, args=args, prog="lightning reproduce", exit_on_error=False)


def _embed(args: list[str]) -> None:
    from lightning_app.embed.command import embed_command
    CLI(embed_command, args=args, prog="lightning embed", exit_on_error=False)


COMMANDS = {"export": _export, "mteb": _mteb, "reproduce": _reproduce, "embed": _embed}


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    try:
        if argv and argv[0] in COMMANDS:
            COMMANDS[argv[0]](argv[1:])
        else:
            ContrastiveCLI(ContrastiveModule, ContrastiveDataModule, args=args, seed_everything_default=42,
                           save_config_kwargs={"overwrite": True},
                           parser_kwargs={"description": DESCRIPTION})
    except ConfigError as error:
        print(f"error: {unwrap_worker_error(str(error))}", file=sys.stderr)
        raise SystemExit(2) from None
    except ArgumentError as error:  # jsonargparse's parse errors: unknown option, wrong type, ...
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        message = re.sub(r'^Parser key "([^"]+)":', r"\1:", " ".join(lines))
        known = argv[:1] if argv and argv[0] in (*COMMANDS, "fit", "validate", "test", "predict") else []
        print(f"error: {message} (see: {' '.join(['lightning', *known, '--help'])})", file=sys.stderr)
        raise SystemExit(2) from None


def unwrap_worker_error(message: str) -> str:
    """A ConfigError raised in a dataloader worker arrives wrapped in the worker's traceback
    ("Caught ConfigError in DataLoader worker process 0. Original Traceback ..."), whose last line
    holds the original message; any other message is returned as it is."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if lines and lines[0].startswith("Caught ") and "Original Traceback" in message:
        return re.sub(r"^[\w.]+Error: ", "", lines[-1])
    return message


if __name__ == "__main__":
    main()
