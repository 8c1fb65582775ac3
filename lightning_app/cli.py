"""The ``lightning`` command: LightningCLI for fit/validate/test, plus ``export``, ``mteb``, ``reproduce`` and ``embed``."""

from __future__ import annotations

import sys

from jsonargparse import CLI
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_app.data.datamodule import ContrastiveDataModule
from lightning_app.errors import ConfigError
from lightning_app.evaluate.callback import MtebCallback
from lightning_app.export import ExportEncoder, read_checkpoint
from lightning_app.model.module import ContrastiveModule
from lightning_app.model.throughput import PairThroughput
from lightning_app.preemption import AtomicCheckpointIO, ContinueLogs, StepBoundaryRequeue
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
    are config sections (``SECTIONS``; ``trainer.callbacks`` adds others), and whose trainer
    survives preemption (atomic checkpoints, requeue at a step boundary, continuous logs; see
    ``lightning_app.preemption``)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model", "data.tokenizer")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")
        for section, callback in SECTIONS.items():
            parser.add_lightning_class_args(callback, section)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        trainer.callbacks.extend([StepBoundaryRequeue(), ContinueLogs()])
        return trainer

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
    CLI(export_command, args=args, prog="lightning export")


def _mteb(args: list[str]) -> None:
    from lightning_app.evaluate.command import mteb_command
    CLI(mteb_command, args=args, prog="lightning mteb")


def _reproduce(args: list[str]) -> None:
    from jsonargparse import ArgumentError

    from lightning_app.experiments.command import reproduce_command
    try:
        CLI(reproduce_command, args=args, prog="lightning reproduce", exit_on_error=False)
    except ArgumentError as error:  # an unknown or mistyped option: one line, like every bad input
        raise ConfigError(" ".join(line.strip() for line in str(error).splitlines() if line.strip())) from None


def _embed(args: list[str]) -> None:
    from lightning_app.embed.command import embed_command
    CLI(embed_command, args=args, prog="lightning embed")


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
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
