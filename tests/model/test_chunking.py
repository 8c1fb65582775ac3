"""The in-batch padding cut gives the plain padded forward's embeddings, loss and gradients."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_app.errors import ConfigError
from lightning_app.model.chunking import chunked_embeddings, sorted_chunks
from lightning_app.model.loss import info_nce
from lightning_app.model.module import ContrastiveModule
from tests.helpers import GradientsTo, save_tiny_model


def shuffled_batch(tokenizer, pairs: int = 6) -> dict:
    """2 * pairs right-padded rows whose lengths are neither sorted nor equal."""
    lengths = [9, 2, 14, 5, 11, 3, 7, 13, 1, 10, 4, 8][:2 * pairs]
    texts = [f"row {i} " + "word " * n for i, n in enumerate(lengths)]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    batch.pop("token_type_ids", None)
    return {**batch, "docs_skipped": torch.tensor(0)}


def test_chunks_hold_every_row_once_sorted_by_length_within_the_budget(tokenizer):
    mask = shuffled_batch(tokenizer)["attention_mask"]
    lengths = mask.sum(1)
    chunks = sorted_chunks(mask, tokens_per_chunk=40)
    rows = torch.cat([r for r, _ in chunks])
    assert sorted(rows.tolist()) == list(range(mask.shape[0]))
    assert lengths[rows].tolist() == sorted(lengths.tolist(), reverse=True)
    assert len(chunks) > 2
    for chunk_rows, width in chunks:
        assert width == int(lengths[chunk_rows].max())
        assert len(chunk_rows) * width <= 40 or len(chunk_rows) == 1
    # a budget below the longest row still makes progress: one row per chunk
    assert [len(r) for r, _ in sorted_chunks(mask, tokens_per_chunk=1)] == [1] * mask.shape[0]


def test_chunked_embeddings_equal_the_padded_forward_row_by_row(tmp_path, tokenizer):
    model = ContrastiveModule(save_tiny_model(tmp_path / "m", tokenizer, dropout=0.0)).encoder
    batch = shuffled_batch(tokenizer)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    plain = model(ids, mask)
    for budget in (1, 30, 64, 10_000):
        chunked = chunked_embeddings(model, ids, mask, budget)
        torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-5)
        # the same rows pair up and the same rows are negatives: the logits match entry by entry
        a, b = chunked.chunk(2)
        pa, pb = plain.chunk(2)
        torch.testing.assert_close(a @ b.T, pa @ pb.T, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(info_nce(a, b)[0], info_nce(pa, pb)[0], atol=1e-5, rtol=1e-5)


def step_gradients(model_dir, tmp_path, name, batch, **options):
    module = ContrastiveModule(model_dir, lr=1e-3, **options)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[GradientsTo(tmp_path / name)])
    trainer.fit(module, DataLoader([batch], batch_size=None))
    return torch.load(tmp_path / name), module.contrastive_step(batch)["loss"]


def test_padding_cut_gives_the_plain_forwards_loss_and_gradients_in_a_lightning_step(tmp_path, tokenizer):
    model_dir = save_tiny_model(tmp_path / "model", tokenizer, dropout=0.0)
    batch = shuffled_batch(tokenizer)
    plain, plain_loss = step_gradients(model_dir, tmp_path, "plain.pt", batch, tokens_per_chunk=None)
    cut, cut_loss = step_gradients(model_dir, tmp_path, "cut.pt", batch, tokens_per_chunk=30)
    cached, _ = step_gradients(model_dir, tmp_path, "cached.pt", batch, cache_chunk_size=3)
    assert plain.keys() == cut.keys() and len(plain) > 10
    torch.testing.assert_close(cut_loss, plain_loss, atol=1e-5, rtol=1e-5)
    for name in plain:
        torch.testing.assert_close(cut[name], plain[name], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cached[name], plain[name], atol=1e-5, rtol=1e-5)


def test_tokens_per_chunk_is_checked(tiny_model):
    with pytest.raises(ConfigError, match="model.tokens_per_chunk: expected >= 1 tokens or null, got 0"):
        ContrastiveModule(tiny_model, tokens_per_chunk=0)
