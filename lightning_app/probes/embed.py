"""The one embedding path of the package: token ids -> every layer's pooled embeddings, batched by
length (the probes and the MTEB encoder both embed through it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lightning_app.data.collate import pad_rows
from lightning_app.model.encoder import Encoder


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode (dropout off) inside the block; each submodule's own mode after it."""
    modes = {sub: sub.training for sub in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for sub, training in modes.items():
            sub.training = training


@torch.no_grad()
def embed_layers(encoder: Encoder, token_ids: list[list[int]], pad_id: int, batch_size: int = 32,
                 last_only: bool = False) -> torch.Tensor:
    """(num_layers + 1, N, H) pooled embeddings of every layer (embeddings first), or (1, N, H)
    of the last layer with ``last_only``, on the encoder's device, in the encoder's current mode.

    The one embedding path of the package (probes, MTEB): texts are batched in order of length,
    so a batch pads little; rows come back in input order. All layers come from one forward pass.
    """
    device = next(encoder.parameters()).device
    layers = 1 if last_only else encoder.num_layers + 1
    out = torch.empty(layers, len(token_ids), encoder.backbone.config.hidden_size, device=device)
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        input_ids, attention_mask = (t.to(device) for t in pad_rows([token_ids[i] for i in rows], pad_id))
        if last_only:
            pooled = encoder(input_ids, attention_mask).unsqueeze(0)
        else:
            pooled = encoder.layer_embeddings(input_ids, attention_mask)
        out[:, torch.tensor(rows, device=device)] = pooled.to(out.dtype)
    return out
