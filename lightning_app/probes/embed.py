"""Probe embeddings: every layer's mean-pooled hidden states from one forward pass per batch."""

from __future__ import annotations

import torch

from lightning_app.model.encoder import Encoder


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids with special tokens, truncated to ``max_length``; done once, at setup."""
    return tokenizer(texts, truncation=True, max_length=max_length, verbose=False)["input_ids"]


@torch.no_grad()
def embed_layers(encoder: Encoder, token_ids: list[list[int]], pad_id: int, batch_size: int = 32,
                 last_only: bool = False) -> torch.Tensor:
    """(num_layers + 1, N, H) pooled embeddings of every layer (embeddings first), or (1, N, H)
    of the last layer with ``last_only``, on the encoder's device.

    Texts are batched in order of length, so a batch pads to similar lengths; rows come back in
    input order. All layers come from the same forward pass (``output_hidden_states``).
    """
    config = encoder.backbone.config
    device = next(encoder.parameters()).device
    layers = 1 if last_only else encoder.num_layers + 1
    out = torch.empty(layers, len(token_ids), config.hidden_size, device=device)
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = len(token_ids[rows[0]])
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, index in enumerate(rows):
            ids = token_ids[index]
            input_ids[row, :len(ids)] = torch.tensor(ids)
            attention_mask[row, :len(ids)] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        if last_only:
            pooled = encoder(input_ids, attention_mask).unsqueeze(0)
        else:
            pooled = encoder.layer_embeddings(input_ids, attention_mask)
        out[:, torch.tensor(rows, device=device)] = pooled.to(out.dtype)
    return out
