"""The LightningModule: contrastive fine-tuning of an encoder on pairs of views."""

from __future__ import annotations

import os
from typing import Literal

import torch
from lightning import LightningModule
from torch.nn import functional as F
from transformers import get_linear_schedule_with_warmup

from lightning_app.errors import ConfigError
from lightning_app.model.chunking import by_length, chunked_embeddings
from lightning_app.model.encoder import Encoder, Pooling, encoder_options
from lightning_app.model.gradcache import cached_embeddings
from lightning_app.model.loss import TEMPERATURE, check_temperature, info_nce
from lightning_app.model.throughput import tokens_in
from lightning_app.packaged import load_tokenizer


class ContrastiveModule(LightningModule):
    """Fine-tunes a Hugging Face encoder with InfoNCE on pairs of views, without labels.

    Args:
        model: hub id, local folder, or ``packaged:minilm`` (the default, offline).
        pooling: ``mean`` over non-padding tokens (the paper's choice) or ``cls``.
        normalize: L2-normalise embeddings at inference and export (the loss always uses cosine).
        frozen_layers: freeze the embeddings and the first N transformer layers (0..num_layers);
            0 trains everything.
        temperature: InfoNCE temperature (the paper's: ``loss.TEMPERATURE``); must be > 0.
        symmetric: average the loss over both directions (a->b and b->a).
        gather_negatives: under DDP, use every device's views as negatives (global batch).
        optimizer: ``adam`` (the paper) or ``adamw``.
        lr: peak learning rate (the paper: 2e-5).
        weight_decay: weight decay of the optimizer.
        warmup_fraction: linear warmup over this share of the steps, then linear decay to 0.
        trust_remote_code: run model code shipped with a hub model (off unless asked for).
        attn_implementation: ``sdpa``, ``eager``, ``sdpa_lean``, ...; None: ``sdpa_lean`` where the
            model supports it (the results of ``sdpa``, less memory in CPU training), else the library's default.
        pretrained: start from the model's weights; False trains its architecture from random
            weights (seeded by ``seed_everything``).
        config_overrides: fields of the model's config to change (see ``Encoder``), e.g. a smaller
            random-init BERT.
        gradient_checkpointing: activation checkpointing of the transformer blocks (see ``Encoder``):
            the same gradients with less memory, at the cost of one more forward pass of the blocks.
        tokens_per_chunk: the in-batch padding cut: the batch's rows are sorted by length and
            embedded in chunks of at most this many padded tokens (rows x the chunk's longest row),
            each padded only to its own longest row, then put back in the batch's order; the loss
            and its negatives are those of one padded forward. None: one forward padded to the
            batch's longest row.
        cache_chunk_size: embed the training batch in chunks of this many rows (views) with
            GradCache, so a large batch needs the activation memory of one chunk (at the cost of a
            second forward); rows are sorted by length first, so each chunk pads little. None embeds
            the batch without GradCache. Single device only.
    """

    def __init__(self, model: str = "packaged:minilm", pooling: Pooling = "mean", normalize: bool = False,
                 frozen_layers: int = 0, temperature: float = TEMPERATURE, symmetric: bool = False,
                 gather_negatives: bool = True, optimizer: Literal["adam", "adamw"] = "adam",
                 lr: float = 2e-5, weight_decay: float = 0.0, warmup_fraction: float = 0.1,
                 trust_remote_code: bool = False, attn_implementation: str | None = None,
                 tokens_per_chunk: int | None = 4096, cache_chunk_size: int | None = None, pretrained: bool = True,
                 config_overrides: dict | None = None, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        check_temperature(temperature)
        if not 0 <= warmup_fraction <= 1:
            raise ConfigError(f"model.warmup_fraction: expected 0..1, got {warmup_fraction}")
        if lr <= 0:
            raise ConfigError(f"model.lr: expected > 0, got {lr}")
        if tokens_per_chunk is not None and tokens_per_chunk < 1:
            raise ConfigError(f"model.tokens_per_chunk: expected >= 1 tokens or null, got {tokens_per_chunk}")
        if cache_chunk_size is not None and cache_chunk_size < 1:
            raise ConfigError(f"model.cache_chunk_size: expected >= 1 rows or null, got {cache_chunk_size}")
        self.save_hyperparameters()
        self.encoder = Encoder(**encoder_options(self.hparams))
        self.flops_per_batch: int | None = None  # read by ThroughputMonitor (PairThroughput)

    @property
    def tokenizer(self):
        """The encoder's tokenizer, loaded on first use (callbacks and export read it)."""
        if not hasattr(self, "_tokenizer"):
            self._tokenizer = load_tokenizer(self.hparams.model, self.hparams.trust_remote_code)
        return self._tokenizer

    def setup(self, stage: str) -> None:
        if self.hparams.cache_chunk_size and self.trainer.world_size > 1:
            raise ConfigError("model.cache_chunk_size: the cached loss runs on one device only (its second "
                              "forward runs inside backward, outside DDP's gradient synchronisation); set it "
                              "to null or use trainer.devices 1")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """All devices' rows (gradients flow back to each device's own rows)."""
        return self.all_gather(x, sync_grads=True).flatten(0, 1)

    def embed_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Both views' rows (2B) -> embeddings in the same order: GradCache, the padding cut or one forward."""
        hp = self.hparams
        if hp.cache_chunk_size and torch.is_grad_enabled():
            order, _ = by_length(attention_mask)
            cached = cached_embeddings(self.encoder, input_ids[order], attention_mask[order], hp.cache_chunk_size)
            return cached[torch.argsort(order)]
        if hp.tokens_per_chunk:
            return chunked_embeddings(self.encoder, input_ids, attention_mask, hp.tokens_per_chunk)
        return self(input_ids, attention_mask)

    def contrastive_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Both views' embeddings (2B rows, the batch's order) and the loss with gathered negatives."""
        embeddings = self.embed_rows(batch["input_ids"], batch["attention_mask"])
        a, b = embeddings.chunk(2)
        distributed = self.hparams.gather_negatives and self.trainer.world_size > 1
        a_all, b_all = (self._gather(a), self._gather(b)) if distributed else (None, None)
        offset = self.trainer.global_rank * a.shape[0] if distributed else 0
        loss, accuracy = info_nce(a, b, self.hparams.temperature, self.hparams.symmetric, a_all, b_all, offset)
        spread = F.normalize(embeddings.detach(), dim=-1).std(0).mean()
        return {"loss": loss, "acc": accuracy, "embedding_std": spread}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        self.flops_per_batch = self.estimate_flops(tokens_in(batch))
        out = self.contrastive_step(batch)
        pairs = batch["input_ids"].shape[0] // 2
        self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, prog_bar=True, batch_size=pairs, sync_dist=True)
        self.log("train/docs_skipped", batch["docs_skipped"].float(), reduce_fx="sum", batch_size=pairs, sync_dist=True)
        return out["loss"] if self.trainable_parameters() else None

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.contrastive_step(batch)
        self.log_dict({f"val/{k}": v for k, v in out.items()}, sync_dist=True, batch_size=batch["input_ids"].shape[0] // 2)

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Seed torch's generator from (seed, rank, step): a resumed run draws the dropout masks
        the uninterrupted run drew, whatever ran in between (validation, checkpoint loading)."""
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        torch.manual_seed(hash((seed, self.global_rank, self.global_step)) % 2**63)

    def estimate_flops(self, tokens: int) -> int:
        """Training FLOPs for ``tokens`` non-padding tokens: 2 per parameter and token forward,
        4 per trainable parameter and token backward (attention's quadratic term left out)."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.trainable_parameters())
        return (2 * total + 4 * trainable) * tokens

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        params = self.trainable_parameters()
        if not params:
            return None
        hp = self.hparams
        optimizer_class = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(params, lr=hp.lr, weight_decay=hp.weight_decay)
        total = self.trainer.estimated_stepping_batches
        if total == float("inf"):
            raise ConfigError("trainer.max_steps: a streamed corpus has no known length; set "
                              "trainer.max_steps so the warmup and decay schedule can be computed")
        schedule = get_linear_schedule_with_warmup(optimizer, round(hp.warmup_fraction * total), int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
