"""Length bucketing: batches of pairs of similar length, so each batch pads little."""

from __future__ import annotations

import random


def pair_length(pair: dict) -> int:
    """The longer view's tokens: the row length that this pair pads its batch to."""
    return max(len(pair["a"]), len(pair["b"]))


def regroup_by_length(pairs: list[dict], batch_size: int, buckets: int, offset: int,
                      rng: random.Random) -> list[dict]:
    """Reorder ``pairs`` so that consecutive batches hold pairs of similar length (fairseq-style).

    The stream already holds ``offset`` pairs of an unfinished batch, so the first
    ``batch_size - offset`` pairs keep their place and complete it; the rest is cut into groups of
    ``buckets`` batches, each group sorted by length, cut into batches and the batches shuffled
    with ``rng``; the last incomplete batch stays last (the next window completes it). Only the
    grouping changes: every pair is kept once.
    """
    head = (batch_size - offset) % batch_size
    body = pairs[head:]
    whole = len(body) - len(body) % batch_size
    regrouped = pairs[:head]
    group = buckets * batch_size
    for start in range(0, whole, group):
        ordered = sorted(body[start:min(start + group, whole)], key=pair_length)
        batches = [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
        rng.shuffle(batches)
        regrouped += [pair for batch in batches for pair in batch]
    return regrouped + body[whole:]
