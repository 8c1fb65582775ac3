from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_app.errors import ConfigError
from lightning_app.model.encoder import Encoder
from lightning_app.model.gradcache import cached_embeddings
from lightning_app.model.module import ContrastiveModule
from tests.helpers import GradientsTo, save_tiny_model


def ragged_batch(tokenizer, pairs: int = 5) -> dict:
    """2 * pairs rows of different lengths, right-padded like the collator's batches."""
    texts = [f"text {i} " + "word " * (3 * i) for i in range(pairs)]
    views = [f"another view {i} " + "token " * (7 - i) for i in range(pairs)]
    batch = dict(tokenizer(texts + views, padding=True, return_tensors="pt"))
    batch.pop("token_type_ids", None)
    return {**batch, "docs_skipped": torch.tensor(0)}


def step_gradients(model_dir, tmp_path, name, batch, chunk):
    module = ContrastiveModule(model_dir, cache_chunk_size=chunk, lr=1e-3)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[GradientsTo(tmp_path / name)])
    trainer.fit(module, DataLoader([batch], batch_size=None))
    return torch.load(tmp_path / name)


def test_cached_loss_gives_the_plain_loss_gradients_in_a_lightning_step(tmp_path, tokenizer):
    model_dir = save_tiny_model(tmp_path / "model", tokenizer, dropout=0.0)
    batch = ragged_batch(tokenizer)
    plain = step_gradients(model_dir, tmp_path, "plain.pt", batch, chunk=None)
    cached = step_gradients(model_dir, tmp_path, "cached.pt", batch, chunk=3)
    assert plain.keys() == cached.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], atol=1e-5, rtol=1e-5)


def test_second_forward_replays_the_first_forwards_dropout(tiny_model, tokenizer):
    batch = ragged_batch(tokenizer)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    encoder = Encoder(tiny_model)  # dropout 0.1, in training mode

    def gradients(embed):
        encoder.zero_grad()
        torch.manual_seed(7)
        embeddings = embed()
        (embeddings ** 2).sum().backward()
        return embeddings.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    def chunked():  # draws the dropout masks of the cached first pass: the same chunks, cut to their longest row
        widths = [int(mask[i:i + 4].sum(1).max()) for i in range(0, 10, 4)]
        return torch.cat([encoder(ids[i:i + 4, :w], mask[i:i + 4, :w]) for i, w in zip(range(0, 10, 4), widths)])

    reference, expected = gradients(chunked)
    cached, got = gradients(lambda: cached_embeddings(encoder, ids, mask, 4))
    plain, _ = gradients(lambda: encoder(ids, mask))
    torch.testing.assert_close(cached, reference)
    assert not torch.allclose(plain, reference)  # dropout is active: masks depend on the draws
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-5)


def test_cache_chunk_size_is_checked(tiny_model):
    with pytest.raises(ConfigError, match="model.cache_chunk_size: expected >= 1"):
        ContrastiveModule(tiny_model, cache_chunk_size=0)
    module = ContrastiveModule(tiny_model, cache_chunk_size=4)
    module._trainer = SimpleNamespace(world_size=2)
    with pytest.raises(ConfigError, match="model.cache_chunk_size: the cached loss runs on one device only"):
        module.setup("fit")
