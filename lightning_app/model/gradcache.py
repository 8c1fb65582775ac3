"""GradCache (Gao et al. 2021, arXiv 2101.06983): contrastive batches far larger than memory allows.

The encoder embeds the batch chunk by chunk without keeping activations; the loss sees the full
batch of embeddings as usual and its backward yields the gradient w.r.t. each embedding; then each
chunk is embedded again, with gradients, and back-propagated with its slice of that gradient.
Only one chunk's activations are alive at a time, at the cost of a second forward. The second
forward replays the first one's RNG state, so dropout draws the same masks and the gradients are
exactly those of the plain loss on the same embeddings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Embed = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _chunks(input_ids: torch.Tensor, attention_mask: torch.Tensor, size: int):
    """Row chunks of a right-padded batch, each cut to its own longest row."""
    for start in range(0, input_ids.shape[0], size):
        mask = attention_mask[start:start + size]
        width = int(mask.sum(1).max())
        yield input_ids[start:start + size, :width], mask[:, :width]


class _RngState:
    """The CPU (and CUDA device) generator state, to replay a forward's random draws."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


class _CachedEmbeddings(torch.autograd.Function):
    """Embeds chunks without a graph; in backward re-embeds each chunk with gradients and
    back-propagates the cached gradient of its embeddings into the encoder's parameters."""

    @staticmethod
    def forward(ctx, anchor, embed: Embed, input_ids, attention_mask, chunk_size: int):
        ctx.embed, ctx.chunks, ctx.states = embed, list(_chunks(input_ids, attention_mask, chunk_size)), []
        device = input_ids.device.type
        ctx.autocast = {"device_type": device, "enabled": torch.is_autocast_enabled(device),
                        "dtype": torch.get_autocast_dtype(device)}
        outputs = []
        for ids, mask in ctx.chunks:
            ctx.states.append(_RngState(input_ids.device))
            outputs.append(embed(ids, mask))
        return torch.cat(outputs)

    @staticmethod
    def backward(ctx, grad):
        start = 0
        for (ids, mask), state in zip(ctx.chunks, ctx.states):
            rows = ids.shape[0]
            devices = [ids.device] if ids.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.enable_grad(), torch.autocast(**ctx.autocast):
                state.restore()
                embeddings = ctx.embed(ids, mask)
            torch.autograd.backward(embeddings, grad[start:start + rows].to(embeddings.dtype))
            start += rows
        return None, None, None, None, None


def cached_embeddings(embed: Embed, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      chunk_size: int) -> torch.Tensor:
    """``embed(input_ids, attention_mask)`` computed in chunks of ``chunk_size`` rows, with the
    activations of one chunk alive at a time; the result back-propagates into ``embed``'s
    parameters like the plain call (see the module docstring)."""
    anchor = torch.empty(0, requires_grad=True)  # makes autograd call backward (no tensor input needs grad)
    return _CachedEmbeddings.apply(anchor, embed, input_ids, attention_mask, chunk_size)
