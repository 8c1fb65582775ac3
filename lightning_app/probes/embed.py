"""The one embedding path of the package: token ids -> every layer's pooled embeddings, batched by
length (the probes and the MTEB encoder both embed through it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from lightning import LightningModule, Trainer
from torch import nn

from lightning_app.data.collate import length_sorted_batches
from lightning_app.model.encoder import Encoder


@contextmanager
def in_mode(module: nn.Module, training: bool) -> Iterator[nn.Module]:
    """``module`` in training (dropout on) or eval mode inside the block; each submodule's own mode after it."""
    modes = {sub: sub.training for sub in module.modules()}
    module.train(training)
    try:
        yield module
    finally:
        for sub, mode in modes.items():
            sub.training = mode


def evaluating(module: nn.Module):
    """``module`` in eval mode (dropout off) inside the block; each submodule's own mode after it."""
    return in_mode(module, False)


@contextmanager
def seeded_dropout(module: nn.Module, seed: int) -> Iterator[nn.Module]:
    """``module`` in training mode (dropout on) with torch's generators seeded by ``seed`` inside the
    block: the same dropout masks each time for the same inputs. After it, each submodule's own mode
    and the generators' earlier state (``torch.random.fork_rng``), so training draws what it would have."""
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), in_mode(module, True):
        torch.manual_seed(seed)
        yield module


@torch.no_grad()
def embed_layers(encoder: Encoder, token_ids: list[list[int]], pad_id: int, batch_size: int = 32,
                 last_only: bool = False) -> torch.Tensor:
    """(num_layers + 1, N, H) float32 pooled embeddings of every layer (embeddings first), or (1, N, H)
    of the last layer with ``last_only``, on the encoder's device, in the encoder's current mode.
    The forward runs at the caller's precision (an autocast around it applies).

    The one embedding path of the package (probes, MTEB): texts are batched in order of length,
    so a batch pads little; rows come back in input order. All layers come from one forward pass.
    """
    device = next(encoder.parameters()).device
    layers = 1 if last_only else encoder.num_layers + 1
    out = torch.empty(layers, len(token_ids), encoder.backbone.config.hidden_size, device=device, dtype=torch.float32)
    for rows, input_ids, attention_mask in length_sorted_batches(token_ids, pad_id, batch_size):
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        if last_only:
            pooled = encoder(input_ids, attention_mask).unsqueeze(0)
        else:
            pooled = encoder.layer_embeddings(input_ids, attention_mask)
        out[:, torch.tensor(rows, device=device)] = pooled.to(out.dtype)
    return out


def gathered_layers(trainer: Trainer, pl_module: LightningModule, ids: list[list[int]], batch_size: int) -> torch.Tensor:
    """Every layer's embeddings of all documents on every rank, at the trainer's precision: rank r
    embeds documents r, r + W, ... and the shards are gathered (padded to equal size) and put back in
    document order."""
    world, rank = trainer.world_size, trainer.global_rank
    with trainer.precision_plugin.forward_context():
        local = embed_layers(pl_module.encoder, ids[rank::world], pl_module.tokenizer.pad_token_id, batch_size)
    if world == 1:
        return local
    per_rank = -(-len(ids) // world)
    padded = local.new_zeros(local.shape[0], per_rank, local.shape[2])
    padded[:, :local.shape[1]] = local
    gathered = pl_module.all_gather(padded)  # (W, L, per_rank, H); row j of rank r is document j * W + r
    return gathered.permute(1, 2, 0, 3).reshape(local.shape[0], per_rank * world, -1)[:, :len(ids)]
