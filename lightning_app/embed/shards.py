"""The corpus cut into fixed row ranges (shards), each embedded by one rank and written as one
Parquet file; a shard's file exists only once complete, so a rerun skips exactly those.

Shard ``s`` holds corpus rows ``[s * shard_size, (s + 1) * shard_size)``; rank ``r`` of ``W``
embeds the shards with ``s % W == r``. Every rank streams the whole corpus (reading is cheap next
to embedding) and tokenizes only its own shards. Within a shard rows are sorted by token count,
so a batch pads little; the writer puts them back in row order.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset

from lightning_app.data.collate import length_sorted_batches
from lightning_app.data.sources import open_corpus

SHARD_FOLDER = "embeddings"
META = "meta.json"


def shard_path(output: str | Path, shard: int) -> Path:
    return Path(output) / SHARD_FOLDER / f"shard-{shard:06d}.parquet"


def shard_files(output: str | Path) -> list[Path]:
    """The complete shards in row order (partial files end in ``.partial`` and are not listed)."""
    return sorted((Path(output) / SHARD_FOLDER).glob("shard-*.parquet"))


def write_shard(path: Path, rows: np.ndarray, embeddings: np.ndarray, labels: list | None) -> None:
    """One shard, atomically: written to ``<name>.partial`` and renamed when complete."""
    dim = embeddings.shape[1]
    columns = {"row": pa.array(rows, pa.int64())}
    if labels is not None:
        columns["label"] = pa.array([None if v is None else str(v) for v in labels], pa.string())
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1)), dim)
    partial = path.with_name(path.name + ".partial")
    pq.write_table(pa.table(columns), partial)
    partial.replace(path)


def write_meta(output: str | Path, meta: dict) -> None:
    """``meta.json``, atomically."""
    partial = Path(output) / (META + ".partial")
    partial.write_text(json.dumps(meta, indent=2) + "\n")
    partial.replace(Path(output) / META)


def read_rows(output: str | Path) -> np.ndarray:
    """Every shard's ``row`` column, concatenated in file order."""
    parts = [pq.read_table(f, columns=["row"])["row"].to_numpy() for f in shard_files(output)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class ShardBatches(IterableDataset):
    """Padded, length-sorted batches of this rank's unfinished shards, as dicts with ``input_ids``,
    ``attention_mask``, ``rows`` (corpus row numbers), ``labels``, ``shard`` and ``done`` (the shard's
    last batch). After a full pass ``total_rows`` holds the number of corpus rows.

    Args:
        corpus: keyword arguments of ``open_corpus``.
        tokenizer: the model's tokenizer.
        output: the output folder (complete shards in it are skipped).
        shard_size: rows per shard.
        batch_size: texts per batch.
        max_length: tokens kept per text, special tokens included.
        max_documents: embed only the first this many rows; None embeds all.
        rank, world: this process's rank and the number of processes.
    """

    def __init__(self, corpus: dict, tokenizer, output: str | Path, shard_size: int, batch_size: int,
                 max_length: int, max_documents: int | None = None, rank: int = 0, world: int = 1) -> None:
        self.corpus, self.tokenizer, self.output = corpus, tokenizer, Path(output)
        self.shard_size, self.batch_size, self.max_length = shard_size, batch_size, max_length
        self.max_documents, self.rank, self.world = max_documents, rank, world
        self.total_rows: int | None = None

    def __iter__(self) -> Iterator[dict]:
        stream = iter(open_corpus(**self.corpus))
        if self.max_documents is not None:
            stream = itertools.islice(stream, self.max_documents)
        self.total_rows = None
        rows = 0
        for shard in itertools.count():
            mine = shard % self.world == self.rank and not shard_path(self.output, shard).exists()
            docs = list(itertools.islice(stream, self.shard_size)) if mine else \
                sum(1 for _ in itertools.islice(stream, self.shard_size))
            count = len(docs) if mine else docs
            if count == 0:
                break
            if mine:
                yield from self._batches(shard, rows, docs)
            rows += count
            if count < self.shard_size:
                break
        self.total_rows = rows

    def _batches(self, shard: int, first_row: int, docs: list[dict]) -> Iterator[dict]:
        ids = self.tokenizer([doc["text"] or "" for doc in docs], truncation=True, max_length=self.max_length,
                             verbose=False)["input_ids"]
        last = math.ceil(len(ids) / self.batch_size)
        batches = length_sorted_batches(ids, self.tokenizer.pad_token_id or 0, self.batch_size)
        for number, (chunk, input_ids, attention_mask) in enumerate(batches, 1):
            yield {"input_ids": input_ids, "attention_mask": attention_mask,
                   "rows": torch.tensor([first_row + i for i in chunk], dtype=torch.long),
                   "labels": [docs[i].get("label") for i in chunk] if "label" in docs[0] else None,
                   "shard": shard, "done": number == last}
