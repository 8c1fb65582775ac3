"""``lightning embed``: every row once and in order, embeddings equal to the module's, resume, DDP, bad input."""

from __future__ import annotations

import json
import os

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lightning_app.cli import main
from lightning_app.embed import shards as shards_module
from lightning_app.embed.shards import shard_files
from lightning_app.model.export import export_encoder
from lightning_app.model.load import load_encoder

MAX_LENGTH = 64


def embed(output, model, corpus, *extra, precision="32"):
    """``lightning embed`` of the test corpus; float32 unless ``precision`` says otherwise (auto would
    follow this machine's CPU)."""
    main(["embed", f"--model={model}", f"--source={corpus}", f"--output={output}", "--text_field=body",
          "--label_field=topic", f"--max_length={MAX_LENGTH}", "--batch_size=16", "--shard_size=64",
          "--accelerator=cpu", "--devices=1", f"--precision={precision}", *extra])


def corpus_rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def module_embeddings(model, texts, layer=None) -> np.ndarray:
    encoder, tokenizer = load_encoder(model)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        encoder.eval()
        if layer is None:
            return encoder(batch["input_ids"], batch["attention_mask"]).numpy()
        return encoder.layer_embeddings(batch["input_ids"], batch["attention_mask"])[layer].numpy()


def read_output(output) -> pd.DataFrame:
    loaded = datasets.load_dataset("parquet", data_files=str(output / "embeddings" / "*.parquet"), split="train")
    return loaded.to_pandas()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, bbc_texts) -> str:
    """130 BBC articles (not a multiple of the shard size) as jsonl with ``body`` and ``topic``."""
    path = tmp_path_factory.mktemp("corpus") / "bbc.jsonl"
    with path.open("w") as f:
        for text, topic in bbc_texts[::17][:130]:
            f.write(json.dumps({"body": text, "topic": topic}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, tiny_model, corpus):
    output = tmp_path_factory.mktemp("embedded")
    embed(output, tiny_model, corpus)
    return output


def test_every_row_once_in_corpus_order_with_labels_and_the_module_embeddings(embedded, tiny_model, corpus):
    rows = corpus_rows(corpus)
    frame = read_output(embedded)
    assert frame["row"].tolist() == list(range(len(rows)))
    assert frame["label"].tolist() == [r["topic"] for r in rows]
    assert [f.name for f in shard_files(embedded)] == ["shard-000000.parquet", "shard-000001.parquet",
                                                       "shard-000002.parquet"]
    kind = pq.read_schema(shard_files(embedded)[0]).field("embedding").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == 32 and kind.value_type == pa.float32()
    got = np.stack(frame["embedding"].to_numpy())
    np.testing.assert_allclose(got, module_embeddings(tiny_model, [r["body"] for r in rows]), atol=1e-5)


def test_meta_names_model_revision_and_count(embedded, tiny_model):
    from lightning_app.model.load import weights_revision
    meta = json.loads((embedded / "meta.json").read_text())
    encoder, _ = load_encoder(tiny_model)
    assert meta["revision"] == weights_revision(encoder)
    assert (meta["model"], meta["pooling"], meta["layer"], meta["dimension"]) == (tiny_model, "mean", 2, 32)
    assert (meta["count"], meta["complete"], meta["shards"], meta["precision"]) == (130, True, 3, "32-true")
    assert meta["command"].startswith("lightning embed --model=") and "--shard_size=64" in meta["command"]


def test_a_chosen_layer_normalized_equals_the_module(tmp_path, tiny_model, corpus):
    embed(tmp_path, tiny_model, corpus, "--layer=1", "--normalize=true", "--max_documents=40")
    frame = read_output(tmp_path)
    assert frame["row"].tolist() == list(range(40))
    expected = module_embeddings(tiny_model, [r["body"] for r in corpus_rows(corpus)[:40]], layer=1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(np.stack(frame["embedding"].to_numpy()), expected, atol=1e-5)


def test_equals_the_exported_sentence_transformers_model(tmp_path, tiny_model, corpus):
    from sentence_transformers import SentenceTransformer
    encoder, tokenizer = load_encoder(tiny_model)
    folder = export_encoder(encoder, tokenizer, tmp_path / "export", max_length=MAX_LENGTH)
    embed(tmp_path / "out", str(folder), corpus, "--max_documents=50")
    texts = [r["body"] for r in corpus_rows(corpus)[:50]]
    expected = SentenceTransformer(str(folder), device="cpu").encode(texts, batch_size=16)
    np.testing.assert_allclose(np.stack(read_output(tmp_path / "out")["embedding"].to_numpy()), expected, atol=1e-5)


@pytest.mark.parametrize("flags, used", [({"amx_bf16"}, "bf16-mixed"), (set(), "32-true")])
def test_auto_precision_is_the_hardware_s_and_recorded(tmp_path, tiny_model, corpus, monkeypatch, flags, used):
    monkeypatch.setattr("lightning_app.model.precision.cpu_flags", lambda: frozenset(flags))
    embed(tmp_path, tiny_model, corpus, "--max_documents=40", precision="auto")
    assert json.loads((tmp_path / "meta.json").read_text())["precision"] == used
    got = np.stack(read_output(tmp_path)["embedding"].to_numpy())
    expected = module_embeddings(tiny_model, [r["body"] for r in corpus_rows(corpus)[:40]])
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    if used == "32-true":
        np.testing.assert_allclose(got, expected, atol=1e-5)
    else:
        assert 0.99 < cosine.min() and not np.allclose(got, expected, atol=1e-5)  # bf16 ran, close to float32


def test_an_interrupted_run_continues_from_its_complete_shards(tmp_path, tiny_model, corpus, embedded, monkeypatch):
    written = []
    real_write = shards_module.write_shard

    def write_then_fail(path, *args):
        if len(written) == 1:
            raise RuntimeError("node lost")  # the run dies while the second shard is on its way
        written.append(path.name)
        real_write(path, *args)

    monkeypatch.setattr("lightning_app.embed.writer.write_shard", write_then_fail)
    with pytest.raises(RuntimeError, match="node lost"):
        embed(tmp_path, tiny_model, corpus)
    assert [f.name for f in shard_files(tmp_path)] == ["shard-000000.parquet"]
    assert not json.loads((tmp_path / "meta.json").read_text())["complete"]
    first = shard_files(tmp_path)[0].stat().st_mtime_ns

    written.clear()
    monkeypatch.setattr("lightning_app.embed.writer.write_shard",
                        lambda path, *args: (written.append(path.name), real_write(path, *args)))
    embed(tmp_path, tiny_model, corpus)
    assert written == ["shard-000001.parquet", "shard-000002.parquet"]  # shard 0 kept, not redone
    assert shard_files(tmp_path)[0].stat().st_mtime_ns == first
    pd.testing.assert_frame_equal(read_output(tmp_path), read_output(embedded))
    assert json.loads((tmp_path / "meta.json").read_text())["complete"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_gloo_processes_write_the_same_rows_as_one(tmp_path, tiny_model, corpus, embedded):
    embed(tmp_path, tiny_model, corpus, "--devices=2", "--strategy=ddp_spawn")
    frame = read_output(tmp_path)
    assert frame["row"].tolist() == list(range(130))
    expected = read_output(embedded)
    assert frame["label"].tolist() == expected["label"].tolist()
    np.testing.assert_allclose(np.stack(frame["embedding"].to_numpy()), np.stack(expected["embedding"].to_numpy()),
                               atol=1e-5)


def bad(capsys, tmp_path, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", *args])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]  # other lines: model-loading progress
    assert errors == lines[-1:], lines
    return lines[-1]


def test_bad_input_stops_with_one_line_before_any_work(tmp_path, tiny_model, bert_b, corpus, embedded, capsys):
    out = str(tmp_path / "out")
    common = [f"--source={corpus}", "--text_field=body"]
    assert bad(capsys, tmp_path, f"--model={tiny_model}", f"--source={corpus}", "--text_field=content",
               f"--output={out}").startswith("error: text_field: 'content' is not a column of")
    assert bad(capsys, tmp_path, "--model=no-such-org/no-such-model", *common, f"--output={out}").startswith(
        "error: model: cannot load 'no-such-org/no-such-model'")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert bad(capsys, tmp_path, f"--model={tiny_model}", *common, f"--output={blocker}/sub") == (
        f"error: output: cannot write to {blocker}/sub ({blocker} is not a writable folder)")
    assert bad(capsys, tmp_path, f"--model={tiny_model}", *common, f"--output={blocker}") == (
        f"error: output: expected a folder, but {blocker} is a file")
    assert bad(capsys, tmp_path, f"--model={tiny_model}", *common, f"--output={out}", "--map=pca") == (
        "error: map: expected one of tsne, umap, got 'pca'")
    assert bad(capsys, tmp_path, f"--model={tiny_model}", *common, f"--output={out}", "--layer=7").startswith(
        "error: layer: expected an integer in 0..2")
    assert bad(capsys, tmp_path, f"--model={tiny_model}", *common, f"--output={out}", "--map_threads=0") == (
        "error: map_threads: expected -1 (every core) or an integer >= 1, got 0")
    assert bad(capsys, tmp_path, f"--model={tiny_model}", *common, f"--output={out}", "--precision=16-mixed") == (
        "error: precision: expected one of auto, 32, 32-true, bf16-mixed, bf16-true, got '16-mixed'")
    assert not os.path.exists(out)  # nothing created by a refused run
    before = {f.name: f.stat().st_mtime_ns for f in shard_files(embedded)}
    message = bad(capsys, tmp_path, f"--model={bert_b}", *common, "--label_field=topic", f"--output={embedded}",
                  f"--max_length={MAX_LENGTH}", "--shard_size=64", "--precision=32")
    assert message.startswith(f"error: output: {embedded} holds embeddings made with other settings: model")
    assert "revision" in message
    assert {f.name: f.stat().st_mtime_ns for f in shard_files(embedded)} == before


def test_umap_without_umap_learn_says_how_to_install(tmp_path, tiny_model, corpus, capsys, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_umap(name, *args, **kwargs):
        if name == "umap":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_umap)
    assert bad(capsys, tmp_path, f"--model={tiny_model}", f"--source={corpus}", f"--output={tmp_path / 'o'}",
               "--map=umap") == "error: map: umap needs umap-learn: pip install 'lightning-app-embeddings[umap]'"
