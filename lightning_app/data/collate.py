"""Token ids -> padded tensors: the training collator and the one padding routine of the package."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token-id lists to the longest one: ``(input_ids, attention_mask)``, both (N, T) long."""
    width = max(map(len, rows))
    input_ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return input_ids, attention_mask


def length_sorted_batches(rows: list[list[int]], pad_id: int, batch_size: int
                          ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """``(row indices, input_ids, attention_mask)`` batches of at most ``batch_size`` rows, longest
    first, so a batch pads little; the indices put the rows back in input order."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        yield (chunk, *pad_rows([rows[i] for i in chunk], pad_id))


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after one sequence (``[CLS]``/``[SEP]``, ``<s>``/``</s>``)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next(i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain)
    return full[:start], full[start + len(plain):]


class PairCollator:
    """Pairs -> one batch of 2B rows (all first views, then all second views), truncated to
    ``max_length`` with special tokens and padded to the longest row of the batch.

    ``tokens`` (a plain int) counts the non-padding tokens, so that throughput and FLOP counts
    need no device synchronisation."""

    def __init__(self, tokenizer, max_length: int = 128) -> None:
        self.prefix, self.suffix = special_tokens(tokenizer)
        self.body = max_length - len(self.prefix) - len(self.suffix)
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        views = [r["a"] for r in rows] + [r["b"] for r in rows]
        ids = [self.prefix + v[:self.body] + self.suffix for v in views]
        input_ids, attention_mask = pad_rows(ids, self.pad_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "docs_skipped": torch.tensor(sum(r["skipped"] for r in rows)),
            "tokens": sum(map(len, ids)),
        }
