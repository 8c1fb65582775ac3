"""A corpus read mid-run: a record the reader cannot parse stops the run with one line naming the
file (and line, for JSON lines), instead of a reader's traceback from a dataloader worker.

Stopping, not skipping: a corpus that breaks deep inside is usually truncated or mis-exported, and
training on what happens to parse would silently change the data of a run meant to be exact on
resume. The checkpoints written so far stay as they are; fix the file and resume from ``last.ckpt``.
"""

from __future__ import annotations

import json
from pathlib import Path

from lightning_app.data.sources import BUILDERS, is_local, local_files
from lightning_app.errors import ConfigError
from lightning_app.packaged import is_packaged


def first_bad_line(path: str) -> int | None:
    """The number (from 1) of the first line of a JSON-lines file that is not one JSON object."""
    with open(path, "rb") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                return number
            if not isinstance(record, dict):
                return number
    return None


def locate(source: str) -> str:
    """Where in a local JSON-lines ``source`` the first malformed record is, as ``file:line``;
    otherwise the source as given."""
    if is_packaged(source) or not is_local(source):
        return f"'{source}'"
    try:
        files = local_files(source)
    except ConfigError:
        return f"'{source}'"
    for path in files:
        if BUILDERS.get(Path(path).suffix) == "json" and path.endswith(".jsonl"):
            line = first_bad_line(path)
            if line is not None:
                return f"'{path}' line {line}"
    return f"'{source}'"


class GuardedDocuments:
    """A ``datasets.IterableDataset`` of documents (as ``PairStream`` reads it) whose read errors
    become one ``ConfigError`` naming ``data.source``, the file and line, and how far the stream got."""

    def __init__(self, documents, source: str) -> None:
        self.documents = documents
        self.source = source

    def set_epoch(self, epoch: int) -> None:
        self.documents.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.documents.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.documents.load_state_dict(state)

    def __iter__(self):
        read = 0
        stream = iter(self.documents)
        while True:
            try:
                document = next(stream)
            except StopIteration:
                return
            except ConfigError:
                raise
            except Exception as error:  # the reader's own error: pyarrow, csv, json, decoding
                reason = " ".join(str(error).split())[:200] or type(error).__name__
                raise ConfigError(f"data.source: a malformed record in {locate(self.source)} ({reason}), "
                                  f"after {read} documents read by this {_reader()}; expected every record "
                                  "to parse: fix or remove it, then rerun, or resume from the last checkpoint if "
                                  "one was written") from None
            read += 1
            yield document


def _reader() -> str:
    """``worker N`` inside a dataloader worker, else ``process``."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return f"dataloader worker {info.id}" if info is not None else "process"

