"""The mteb encoder: what mteb passes in, layer choice, truncation, and weight-hash revisions."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import mteb  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from mteb._create_dataloaders import create_dataloader  # noqa: E402

from lightning_app.errors import ConfigError  # noqa: E402
from lightning_app.evaluate.mteb_encoder import MtebEncoder, model_name  # noqa: E402
from lightning_app.model.load import load_encoder  # noqa: E402
from lightning_app.evaluate.report import evaluate_task  # noqa: E402
from lightning_app.evaluate.tasks import LeeDocumentSimilarity  # noqa: E402

TEXTS = ["The cat sat on the mat.", "Stocks fell sharply in early trading.",
         "The cat sat on the mat.", "A new vaccine was approved by regulators today."]


def test_encode_takes_mteb_batches_and_matches_the_encoder(bert_a):
    wrapped = MtebEncoder.load(bert_a, batch_size=3)
    wrapped.encoder.train()  # as during training (MtebCallback)
    meta = LeeDocumentSimilarity().metadata
    loader = create_dataloader(Dataset.from_dict({"text": TEXTS}), task_metadata=meta,
                               input_column="text", batch_size=2)
    out = wrapped.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default")
    assert out.shape == (4, 32) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], out[2])
    assert wrapped.encoder.training  # encode switched dropout off only while encoding
    batch = wrapped.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        direct = wrapped.encoder.eval()(batch["input_ids"], batch["attention_mask"]).numpy()
    np.testing.assert_allclose(out, direct, atol=1e-5)


def test_layer_choice_and_all_layer_views_agree(bert_a):
    last = MtebEncoder.load(bert_a).embed(TEXTS)
    first = MtebEncoder.load(bert_a, layer=0).embed(TEXTS)
    assert not np.allclose(first, last)
    np.testing.assert_allclose(MtebEncoder.load(bert_a, layer=2).embed(TEXTS), last, atol=1e-5)
    every = MtebEncoder.load(bert_a, all_layers=True)
    np.testing.assert_allclose(every.at_layer(0).embed(TEXTS), first, atol=1e-5)
    np.testing.assert_allclose(every.at_layer(None).embed(TEXTS), last, atol=1e-5)
    middle = every.at_layer(1).embed(TEXTS)
    assert not np.allclose(middle, first) and not np.allclose(middle, last)
    np.testing.assert_allclose(MtebEncoder.load(bert_a, layer=1).embed(TEXTS), middle, atol=1e-5)


@pytest.mark.parametrize(("option", "value"), [
    ("layer", 3), ("layer", -1), ("max_length", 0), ("max_length", 513), ("batch_size", 0),
    ("device", "nonsense"), ("precision", "bf16-true")])
def test_bad_options_name_the_option(bert_a, option, value):
    with pytest.raises(ConfigError, match=f"^{option}: "):
        MtebEncoder.load(bert_a, **{option: value})


def test_texts_are_truncated_to_max_length(bert_a):
    words = " ".join(f"word{i}" for i in range(200))
    short = MtebEncoder.load(bert_a, max_length=8)
    tokens = short.tokenizer(words, truncation=True, max_length=8)["input_ids"][1:-1]
    prefix = short.tokenizer.decode(tokens)
    np.testing.assert_allclose(short.embed([words]), short.embed([prefix]), atol=1e-5)
    assert not np.allclose(MtebEncoder.load(bert_a, max_length=64).embed([words]),
                           short.embed([words]))


def test_settings_other_than_defaults_get_their_own_experiment_folder(bert_a):
    assert MtebEncoder.load(bert_a).mteb_model_meta.experiment_kwargs is None
    meta = MtebEncoder.load(bert_a, layer=1, max_length=64).mteb_model_meta
    assert meta.experiment_kwargs == {"layer": 1, "max_length": 64}


@pytest.mark.parametrize("flags, used", [({"avx512_bf16"}, "bf16-mixed"), (set(), "32-true")])
def test_auto_precision_follows_the_device_and_files_bf16_apart(bert_a, monkeypatch, flags, used):
    monkeypatch.setattr("lightning_app.model.precision.cpu_flags", lambda: frozenset(flags))
    auto = MtebEncoder.load(bert_a, precision="auto")
    full = MtebEncoder.load(bert_a, precision="32")
    assert (auto.precision, full.precision, auto.revision) == (used, "32-true", full.revision)
    assert full.mteb_model_meta.experiment_kwargs is None
    got, expected = auto.embed(TEXTS), full.embed(TEXTS)
    if used == "32-true":
        assert auto.mteb_model_meta.experiment_kwargs is None
        np.testing.assert_array_equal(got, expected)
    else:
        assert auto.mteb_model_meta.experiment_kwargs == {"precision": "bf16-mixed"}
        cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cosine.min() > 0.99 and not np.allclose(got, expected, atol=1e-5)


def test_revision_is_a_weight_hash(bert_a, bert_b):
    a, b = MtebEncoder.load(bert_a), MtebEncoder.load(bert_b)
    assert a.revision != b.revision
    assert MtebEncoder.load(bert_a).revision == a.revision
    assert a.mteb_model_meta.revision == a.revision and len(a.revision) == 12


def test_different_weights_never_share_cached_results(bert_a, tmp_path):
    """Two checkpoints with one model name: mteb's cache must not hand one the other's scores."""
    encoder, tokenizer = load_encoder(bert_a)
    first = MtebEncoder(encoder, tokenizer, "local/checkpoint")
    score_before = evaluate_task(first, LeeDocumentSimilarity(), mteb.ResultCache(tmp_path))
    before = first.embed(TEXTS)
    with torch.no_grad():  # in place, as an optimizer step would
        for param in encoder.parameters():
            param.add_(0.05 * torch.randn_like(param))
    second = MtebEncoder(encoder, tokenizer, "local/checkpoint")
    assert second.revision != MtebEncoder.load(bert_a).revision
    assert first.revision == second.revision  # the first wrapper sees the update too
    assert not np.allclose(first.embed(TEXTS), before)  # its cached embeddings were dropped
    score_after = evaluate_task(second, LeeDocumentSimilarity(), mteb.ResultCache(tmp_path))
    assert score_after != score_before
    folders = sorted(p.parent.name for p in tmp_path.glob("results/local__checkpoint/*/*.json")
                     if p.name == "LeeDocumentSimilarity.json")
    assert len(folders) == 2


def test_model_names_for_mteb(tmp_path):
    assert model_name("packaged:minilm") == "packaged/minilm"
    assert model_name("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    checkpoint = tmp_path / "epoch=3 step=10.ckpt"
    checkpoint.touch()
    assert model_name(str(checkpoint)) == "local/epoch=3_step=10"
    folder = tmp_path / "minilm-crop.v2"
    folder.mkdir()
    assert model_name(str(folder)) == "local/minilm-crop.v2"
