"""The ``lightning`` command: LightningCLI for fit/validate/test, plus ``export``, ``mteb``, ``reproduce`` and ``embed``."""

from __future__ import annotations

import functools
import re
import sys

from jsonargparse import CLI, ArgumentError

from lightning_app.errors import ConfigError

DESCRIPTION = """Self-supervised fine-tuning of text embedding models (crops, token crops, dropout).

Start with:  lightning fit --config configs/crop.yaml
Other commands:  lightning export --help   (checkpoint -> HF / sentence-transformers folder)
                 lightning mteb --help     (evaluate a checkpoint, folder or hub model on MTEB)
                 lightning reproduce --help  (the paper's comparison on a labelled corpus, with a report)
                 lightning embed --help    (embed a corpus into Parquet shards, optionally with a 2D map)"""


def _export(args: list[str]) -> None:
    from lightning_app.model.export import export_command
    CLI(export_command, args=args, prog="lightning export", exit_on_error=False)


def _mteb(args: list[str]) -> None:
    from lightning_app.evaluate.command import mteb_command
    CLI(mteb_command, args=args, prog="lightning mteb", exit_on_error=False)


def _reproduce(args: list[str]) -> None:
    from lightning_app.cli.fit import resolve_recipe
    from lightning_app.experiments.command import reproduce_command
    command = functools.update_wrapper(functools.partial(reproduce_command, _resolve=resolve_recipe), reproduce_command)
    CLI(command, args=args, prog="lightning reproduce", exit_on_error=False)


def _embed(args: list[str]) -> None:
    from lightning_app.embed.command import embed_command
    CLI(embed_command, args=args, prog="lightning embed", exit_on_error=False)


COMMANDS = {"export": _export, "mteb": _mteb, "reproduce": _reproduce, "embed": _embed}
FIT_COMMANDS = ("fit", "validate", "test", "predict")

# Renamed options, per command: old spelling -> new. An old one (an option or a config key) stops the
# command with one line naming the new one.
_FIT_RENAMES = {"mteb.max_seq_length": "mteb.max_length"}
RENAMED = {
    "embed": {"corpus": "source"},
    "mteb": {"max_seq_length": "max_length"},
    "reproduce": {"corpus": "source", "mteb_tasks": "mteb.tasks", "mteb_seeds": "mteb.seeds",
                  "mteb_max_seq_length": "mteb.max_length", "budget.probe_every": "probe.every",
                  "budget.probe_documents": "probe.documents", "budget.probe_max_length": "probe.max_length",
                  "budget.cv_folds": "probe.cv_folds"},
    **dict.fromkeys(FIT_COMMANDS, _FIT_RENAMES),
}


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    try:
        if argv and argv[0] in COMMANDS:
            COMMANDS[argv[0]](argv[1:])
        else:
            from lightning_app.cli.fit import run
            run(args, DESCRIPTION)
    except ConfigError as error:
        print(f"error: {unwrap_worker_error(str(error))}", file=sys.stderr)
        raise SystemExit(2) from None
    except ArgumentError as error:  # jsonargparse's parse errors: unknown option, wrong type, ...
        known = argv[:1] if argv and argv[0] in (*COMMANDS, *FIT_COMMANDS) else []
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        message = renamed(RENAMED.get("".join(known), {}), str(error)) or \
            re.sub(r'^Parser key "([^"]+)":', r"\1:", " ".join(lines))
        print(f"error: {message} (see: {' '.join(['lightning', *known, '--help'])})", file=sys.stderr)
        raise SystemExit(2) from None


def renamed(renames: dict[str, str], message: str) -> str | None:
    """When jsonargparse's ``message`` rejects an old spelling in ``renames``, a line naming the new
    one: ``--corpus is now --source`` for a command-line option, ``corpus is now source`` for a
    config key; otherwise None."""
    given = message.split("unrecognized arguments:", 1)
    options = re.findall(r"(?:^|\s)--([\w.]+)", given[1]) if len(given) == 2 else []
    keys = [key if kind == "Subcommand" else f"{group}.{key}" for kind, group, key in
            re.findall(r"(Group|Subcommand) '([\w.]+)' does not accept option '([\w.]+)'", message)]
    keys += re.findall(r"Option '([\w.]+)' is not accepted", message)
    for old, dashes in [*((option, "--") for option in options), *((key, "") for key in keys)]:
        if old in renames:
            return f"{dashes}{old} is now {dashes}{renames[old]}"
    return None


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
