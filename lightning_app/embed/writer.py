"""The Lightning side of ``lightning embed``: a predict-only module, the data module handing each
rank its shards, and the prediction writer turning batches into Parquet shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from lightning_app.embed.shards import ShardBatches, read_rows, shard_files, shard_path, write_meta, write_shard
from lightning_app.model.encoder import Encoder


class EmbedModule(LightningModule):
    """Pooled embeddings of the last layer (the model's own ``forward``) or of hidden state ``layer``."""

    def __init__(self, encoder: Encoder, layer: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.layer = layer

    def predict_step(self, batch: dict, batch_idx: int = 0) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out = self.encoder(ids, mask) if self.layer is None else self.encoder.layer_embeddings(ids, mask)[self.layer]
        return out.float()


class EmbedData(LightningDataModule):
    """Each rank's ``ShardBatches``, built once the trainer knows the rank and world size."""

    def __init__(self, **batches) -> None:
        super().__init__()
        self.batches = batches

    def predict_dataloader(self) -> DataLoader:
        dataset = ShardBatches(**self.batches, rank=self.trainer.global_rank, world=self.trainer.world_size)
        return DataLoader(dataset, batch_size=None)


class ShardWriter(BasePredictionWriter):
    """Collects a shard's batches and writes the shard, rows in corpus order, after its last batch.

    At the end rank 0 checks the shards (every row from 0 to the corpus's row count exactly once,
    in order) and, when they pass, writes ``meta`` with the count to ``meta.json``.
    """

    def __init__(self, output: str | Path, meta: dict) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.meta = meta
        self.pending: dict[int, list] = {}

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: torch.Tensor,
                           batch_indices, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        parts = self.pending.setdefault(batch["shard"], [])
        parts.append((batch["rows"].cpu().numpy(), prediction.detach().cpu().numpy(), batch["labels"]))
        if batch["done"]:
            self._write(batch["shard"], self.pending.pop(batch["shard"]))

    def _write(self, shard: int, parts: list) -> None:
        rows = np.concatenate([p[0] for p in parts])
        order = np.argsort(rows, kind="stable")
        embeddings = np.concatenate([p[1] for p in parts])[order]
        labels = None if parts[0][2] is None else [v for p in parts for v in p[2]]
        write_shard(shard_path(self.output, shard), rows[order], embeddings,
                    None if labels is None else [labels[i] for i in order])
        print(f"wrote shard {shard} (rows {rows[order][0]}-{rows[order][-1]})", flush=True)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.strategy.barrier()
        total = trainer.predict_dataloaders.dataset.total_rows
        if trainer.is_global_zero and total is not None and np.array_equal(read_rows(self.output), np.arange(total)):
            write_meta(self.output, {**self.meta, "count": total, "complete": True,
                                     "shards": len(shard_files(self.output))})
        trainer.strategy.barrier()
