"""How one document becomes two views (a positive pair) of token ids.

Each view class is chosen in YAML by ``class_path``; a custom one subclasses :class:`View`.
Views see token ids without special tokens; the collator adds those and truncates.
"""

from __future__ import annotations

import math
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from lightning_app.errors import ConfigError

Tokenize = Callable[[str], list[int]]
Views = tuple[list[int], list[int]]  # the two views of one document

# A sentence ends at . ! or ? (optionally followed by a closing quote or bracket) before
# whitespace and an opening capital, digit or quote; line breaks always end a sentence.
_SENTENCE_END = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+(?=[\"'“‘(\[]?[A-Z0-9])|\s*\n\s*"
)


def split_sentences(text: str) -> list[str]:
    """Split text into stripped, non-empty sentences (a light rule-based splitter)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


class View(ABC):
    """Turns one document into two views, or None when the document cannot give a pair."""

    @abstractmethod
    def pair(self, text: str, tokenize: Tokenize, rng: random.Random) -> Views | None:
        """Two token-id lists for ``text``; ``rng`` is seeded per document, so pairs are reproducible."""

    def check_fits(self, body: int, max_length: int, length_option: str = "data.max_length", where: str = "") -> None:
        """Raise ConfigError when a view cannot fit the ``body`` tokens a view keeps at ``max_length``
        besides its special tokens (only views of a fixed token length can fail)."""



@dataclass
class SentenceCrops(View):
    """The paper's crops: two different random crops, each ``sentences_per_crop`` consecutive
    sentences among those of ``min_chars``..``max_chars`` characters.

    With ``overlap`` (the paper's training code) a crop starts at every qualifying sentence: it and
    the next ``sentences_per_crop - 1`` qualifying ones, so crops overlap and a pair may share a
    sentence; a document with 3 qualifying sentences gives 2 crops. Without it the qualifying
    sentences are cut into consecutive groups, so the two views never share a sentence (a document
    needs 4). Documents with fewer than two crops are skipped.

    Args:
        min_chars: shortest sentence kept, in characters.
        max_chars: longest sentence kept, in characters.
        sentences_per_crop: qualifying sentences in one crop.
        overlap: sliding crops (one per qualifying sentence) instead of disjoint groups.
    """

    min_chars: int = 100
    max_chars: int = 250
    sentences_per_crop: int = 2
    overlap: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.min_chars <= self.max_chars:
            raise ValueError(f"min_chars..max_chars: expected 0 <= min_chars <= max_chars, "
                             f"got {self.min_chars}..{self.max_chars}")
        if self.sentences_per_crop < 1:
            raise ValueError(f"sentences_per_crop: expected >= 1, got {self.sentences_per_crop}")

    def crops(self, text: str) -> list[str]:
        """All crops of ``text``, in document order."""
        kept = [s for s in split_sentences(text) if self.min_chars <= len(s) <= self.max_chars]
        n = self.sentences_per_crop
        return [" ".join(kept[i:i + n]) for i in range(0, len(kept) - n + 1, 1 if self.overlap else n)]

    def pair(self, text: str, tokenize: Tokenize, rng: random.Random) -> Views | None:
        crops = self.crops(text)
        if len(crops) < 2:
            return None
        first, second = rng.sample(crops, 2)
        return tokenize(first), tokenize(second)


@dataclass
class TokenCrops(View):
    """Contriever's independent cropping: two random spans of one random window of ``chunk_tokens``
    consecutive tokens (the whole document if shorter), each ``ratio_min``..``ratio_max`` of the
    window's length, placed independently (they may overlap).

    Contriever cuts documents into chunks (256 tokens) and crops within one, so the ratios hold on
    long documents too; the data module checks that the longest span fits ``data.max_length``.

    Args:
        ratio_min: shortest span as a fraction of the window's tokens.
        ratio_max: longest span as a fraction of the window's tokens.
        min_tokens: documents with fewer tokens are skipped.
        chunk_tokens: tokens in the window both spans are drawn from.
    """

    ratio_min: float = 0.1
    ratio_max: float = 0.5
    min_tokens: int = 2
    chunk_tokens: int = 256

    def __post_init__(self) -> None:
        if not 0 < self.ratio_min <= self.ratio_max <= 1:
            raise ValueError(f"ratio_min..ratio_max: expected 0 < ratio_min <= ratio_max <= 1, "
                             f"got {self.ratio_min}..{self.ratio_max}")
        if self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens: expected >= 1, got {self.chunk_tokens}")
        self.min_tokens = max(self.min_tokens, 1)

    def longest_span(self, chunk_tokens: int | None = None) -> int:
        """An upper bound on a span's tokens: ``ratio_max`` of a full window, rounded half up."""
        return max(1, math.floor(self.ratio_max * (chunk_tokens or self.chunk_tokens) + 0.5))

    def check_fits(self, body: int, max_length: int, length_option: str = "data.max_length", where: str = "") -> None:
        """The longest span fits the ``body`` tokens a view keeps at ``max_length`` besides its special
        tokens; the collator would cut a longer one, breaking the spans' ratios."""
        if self.longest_span() <= body:
            return
        special = max_length - body
        fits = next((c for c in range(self.chunk_tokens - 1, 0, -1) if self.longest_span(c) <= body), None)
        expected = f"chunk_tokens <= {fits} at {length_option} {max_length}, or " if fits else ""
        raise ConfigError(
            f"data.view.init_args.chunk_tokens{where}: expected {expected}{length_option} >= "
            f"{self.longest_span() + special} (the longest TokenCrops span, ratio_max {self.ratio_max} x chunk_tokens "
            f"{self.chunk_tokens} = {self.longest_span()} tokens, must fit the {max(body, 0)} a view keeps besides its "
            f"{special} special tokens)")

    def span(self, ids: list[int], rng: random.Random) -> list[int]:
        length = max(1, round(rng.uniform(self.ratio_min, self.ratio_max) * len(ids)))
        start = rng.randint(0, len(ids) - length)
        return ids[start:start + length]

    def pair(self, text: str, tokenize: Tokenize, rng: random.Random) -> Views | None:
        ids = tokenize(text)
        if len(ids) < self.min_tokens:
            return None
        if len(ids) > self.chunk_tokens:  # a shorter document is its own window (no draw)
            start = rng.randint(0, len(ids) - self.chunk_tokens)
            ids = ids[start:start + self.chunk_tokens]
        return self.span(ids, rng), self.span(ids, rng)


@dataclass
class Dropout(SentenceCrops):
    """Unsupervised SimCSE: the same text twice; the encoder's dropout makes the views differ.

    The text is one random crop of the document (as in the paper), or with ``whole_document``
    the whole document (truncated to the model's ``max_length`` by the collator).

    Args:
        whole_document: use the whole document instead of one crop.
    """

    whole_document: bool = False

    def pair(self, text: str, tokenize: Tokenize, rng: random.Random) -> Views | None:
        if self.whole_document:
            chosen = text if text.strip() else None
        else:
            crops = self.crops(text)
            chosen = rng.choice(crops) if crops else None
        if chosen is None:
            return None
        ids = tokenize(chosen)
        return ids, list(ids)
