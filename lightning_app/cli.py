"""The ``lightning`` command: LightningCLI for fit/validate/test, plus ``export`` and ``mteb``."""

from __future__ import annotations

import sys

from jsonargparse import CLI
from lightning.pytorch.cli import LightningCLI

from lightning_app.data.datamodule import ContrastiveDataModule
from lightning_app.errors import ConfigError
from lightning_app.model.module import ContrastiveModule

DESCRIPTION = """Self-supervised fine-tuning of text embedding models (crops, token crops, dropout).

Start with:  lightning fit --config configs/crop.yaml
Other commands:  lightning export --help   (checkpoint -> HF / sentence-transformers folder)
                 lightning mteb --help     (evaluate a checkpoint, folder or hub model on MTEB)"""


class ContrastiveCLI(LightningCLI):
    """LightningCLI whose data module always tokenizes like the model it feeds."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model", "data.tokenizer")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")


def _export(args: list[str]) -> None:
    from lightning_app.export import export_command
    CLI(export_command, args=args, prog="lightning export")


def _mteb(args: list[str]) -> None:
    from lightning_app.evaluate.command import mteb_command
    CLI(mteb_command, args=args, prog="lightning mteb")


COMMANDS = {"export": _export, "mteb": _mteb}


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
