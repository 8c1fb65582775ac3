"""Labelled probe corpora: which texts the probes embed, sampled once, checked before training."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch

from lightning_app.data.sources import open_corpus
from lightning_app.errors import ConfigError
from lightning_app.probes.knn import stratified_split

log = logging.getLogger(__name__)


@dataclass
class ProbeCorpus:
    """A labelled corpus the probes embed at every validation.

    Args:
        name: its name in TensorBoard tags (``probe/<name>/knn_acc``); letters, digits, ``_`` and ``-``.
        source: local file, folder or glob (jsonl, json, parquet, csv, txt), hub dataset id, or
            ``packaged:bbcnews`` (5 topics), ``packaged:newsarticles`` (9 outlets) or
            ``packaged:houseofcommons`` (4 parties).
        text_field: the column holding the text.
        label_field: the column holding the class label.
        subset: the hub dataset's configuration name.
        split: the hub dataset's split.
        max_documents: probe a fixed random subset of this many documents (reservoir sampling over
            the whole stream, seeded by the probe's seed); None probes every document.
    """

    name: str = "bbcnews"
    source: str = "packaged:bbcnews"
    text_field: str = "text"
    label_field: str = "label"
    subset: str | None = None
    split: str = "train"
    max_documents: int | None = None


@dataclass
class LabelledTexts:
    """A sampled probe corpus: texts, integer labels (codes into ``classes``) and the class names."""

    texts: list[str]
    labels: torch.Tensor
    classes: list[str]


def reservoir_sample(stream, size: int | None, seed: int) -> list:
    """A uniform random ``size``-subset of ``stream`` in stream order (Vitter's algorithm R, one
    pass); the whole stream when ``size`` is None. The same seed gives the same subset."""
    if size is None:
        return list(stream)
    rng = random.Random(seed)
    kept: list[tuple[int, object]] = []
    for index, item in enumerate(stream):
        if index < size:
            kept.append((index, item))
        else:
            slot = rng.randint(0, index)
            if slot < size:
                kept[slot] = (index, item)
    return [item for _, item in sorted(kept, key=lambda pair: pair[0])]


def load_probe_corpus(spec: ProbeCorpus, k: int, test_fraction: float, seed: int) -> LabelledTexts:
    """Read, sample and check ``spec``; raise ``ConfigError`` (naming the corpus and option) when
    a column is missing or the kNN protocol cannot run on it: fewer than 2 classes, a class with
    fewer than 2 documents, or fewer than ``k + 1`` documents in the train split (the test split holds at
    least one of each class), so a hand-labelled sample of 100 documents probes fine."""
    where = f"probe corpus '{spec.name}'"
    if not spec.name or not all(ch.isalnum() or ch in "_-" for ch in spec.name):
        raise ConfigError(f"{where}: name: expected letters, digits, '_' or '-' (it becomes a TensorBoard tag)")
    if spec.max_documents is not None and spec.max_documents < 2:
        raise ConfigError(f"{where}: max_documents: expected >= 2 or null, got {spec.max_documents}")
    try:
        stream = open_corpus(spec.source, spec.text_field, spec.label_field, subset=spec.subset, split=spec.split)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    usable = (doc for doc in stream if doc["text"] and doc["label"] is not None and str(doc["label"]) != "")
    documents = reservoir_sample(usable, spec.max_documents, seed)
    classes = sorted({str(doc["label"]) for doc in documents})
    code = {name: i for i, name in enumerate(classes)}
    labels = torch.tensor([code[str(doc["label"])] for doc in documents], dtype=torch.long)
    counts = {name: int((labels == i).sum()) for i, name in enumerate(classes)}
    if len(classes) < 2:
        raise ConfigError(f"{where}: label_field '{spec.label_field}' of '{spec.source}' has "
                          f"{len(classes)} class(es) among {len(documents)} labelled documents; expected at least 2")
    single = [name for name, count in counts.items() if count < 2]
    if single:
        raise ConfigError(f"{where}: classes {single[:5]} of '{spec.source}' have 1 document; the kNN probe "
                          "needs at least 2 per class (one in each split); raise max_documents or drop them")
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    if len(train_idx) < k + 1:
        raise ConfigError(f"{where}: '{spec.source}' gives {len(train_idx)} train and {len(test_idx)} test "
                          f"documents ({len(documents)} sampled, test_fraction={test_fraction}); expected at "
                          f"least k+1 = {k + 1} in the train split: raise max_documents or lower k")
    log.info("%s: %d documents, classes %s", where, len(documents), counts)
    return LabelledTexts([doc["text"] for doc in documents], labels, classes)
