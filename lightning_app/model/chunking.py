"""The in-batch padding cut: embed a batch's rows in length-sorted chunks, each padded only to its
own longest row, and return the embeddings in the batch's order.

The batch itself is untouched (which pairs, which negatives): only the encoder's forward is split,
so the loss sees exactly the embeddings of one padded forward (up to float rounding; dropout draws
its masks chunk by chunk).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Embed = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def by_length(attention_mask: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The rows' order from longest to shortest (ties in batch order) and their lengths in that order."""
    lengths = attention_mask.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    return order, lengths[order].tolist()


def sorted_chunks(attention_mask: torch.Tensor, tokens_per_chunk: int) -> list[tuple[torch.Tensor, int]]:
    """Row indices of length-homogeneous chunks and each chunk's width (its longest row): rows sorted
    by length, cut so that rows x width stays within ``tokens_per_chunk`` (at least one row each)."""
    order, lengths = by_length(attention_mask)
    chunks, start = [], 0
    while start < len(lengths):
        width = max(lengths[start], 1)
        rows = max(1, tokens_per_chunk // width)
        chunks.append((order[start:start + rows], width))
        start += rows
    return chunks


def chunked_embeddings(embed: Embed, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       tokens_per_chunk: int) -> torch.Tensor:
    """``embed(input_ids, attention_mask)`` of a right-padded batch, computed chunk by chunk on
    length-sorted rows (see :func:`sorted_chunks`), in the batch's row order."""
    chunks = sorted_chunks(attention_mask, tokens_per_chunk)
    if len(chunks) == 1 and chunks[0][1] == input_ids.shape[1]:
        return embed(input_ids, attention_mask)  # one chunk without padding to cut: the plain forward
    parts = [embed(input_ids[rows, :width], attention_mask[rows, :width]) for rows, width in chunks]
    order = torch.cat([rows for rows, _ in chunks])
    return torch.cat(parts)[torch.argsort(order)]
