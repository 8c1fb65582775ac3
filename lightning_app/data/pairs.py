"""Positive pairs: one document -> two views as token ids, drawn reproducibly per document.

The same functions draw the training stream's pairs, the validation pairs and the probes' crop
pairs, so every part of a run sees a document's pair the same way.
"""

from __future__ import annotations

import hashlib
import random
from typing import TypedDict

from lightning_app.data.views import View


class Pair(TypedDict):
    """Two views of one document as token ids (no special tokens), and the documents without a
    pair skipped just before it in the stream (a log count)."""

    a: list[int]
    b: list[int]
    skipped: int


def stable_hash(*parts: object) -> int:
    """A stable 64-bit hash (the same in every process, unlike ``hash``)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def held_out(text: str, fraction: float) -> bool:
    """Whether a document belongs to the validation slice: decided by its content alone."""
    return stable_hash("validation", text) < fraction * 2**64


def document_rng(seed: int, epoch: int, text: str) -> random.Random:
    """The view sampler's generator for one document: the same pair for the same seed and epoch,
    whichever rank or worker reads the document, and after a resume."""
    return random.Random(stable_hash(seed, epoch, text))


def document_pair(view: View, text: str | None, tokenize, seed: int, epoch: int):
    """The document's two views as token ids, or None when it gives no pair."""
    pair = view.pair(text, tokenize, document_rng(seed, epoch, text)) if text else None
    return pair if pair is not None and pair[0] and pair[1] else None


def document_pairs(texts, view: View, tokenize, seed: int, epoch: int = 0, limit: int | None = None) -> list[Pair]:
    """A pair for each of ``texts`` that gives one (at most ``limit`` pairs)."""
    pairs: list[Pair] = []
    for text in texts:
        if limit is not None and len(pairs) >= limit:
            break
        pair = document_pair(view, text, tokenize, seed, epoch)
        if pair is not None:
            pairs.append({"a": pair[0], "b": pair[1], "skipped": 0})
    return pairs


def token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (the collator adds them)."""
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
