from types import SimpleNamespace

import pytest
import torch

from lightning_app.model import attention
from lightning_app.model.encoder import Encoder
from lightning_app.model.module import ContrastiveModule
from tests.helpers import save_tiny_model


def padded_batch(tokenizer) -> dict:
    texts = ["a first text of a few words", "another text, a little longer than the first one, with a clause",
             "short", "the fourth text of this batch is the longest of them all, by a few words at least"]
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def training_step(model: str, batch: dict, **options) -> tuple[torch.Tensor, dict, list]:
    """Loss, gradients and the shapes/dtypes autograd kept, of one seeded contrastive step (dropout on)."""
    module = ContrastiveModule(model, **options)
    module.trainer = SimpleNamespace(world_size=1, global_rank=0)  # one process: no gathered negatives
    kept = []

    def pack(tensor):
        kept.append((tuple(tensor.shape), tensor.dtype))
        return tensor

    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = module.contrastive_step(batch)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}, kept


@pytest.mark.parametrize("kind,frozen", [("bert", 0), ("roberta", 0), ("bert", 1)])
def test_lean_attention_trains_bitwise_like_sdpa_and_keeps_less(tmp_path, tokenizer, kind, frozen):
    model, batch = save_tiny_model(tmp_path, tokenizer, kind), padded_batch(tokenizer)
    loss, grads, kept = training_step(model, batch, attn_implementation="sdpa", frozen_layers=frozen)
    lean_loss, lean_grads, lean_kept = training_step(model, batch, frozen_layers=frozen)  # the default
    assert torch.equal(lean_loss, loss)
    assert grads.keys() == lean_grads.keys() and grads
    for name, grad in grads.items():  # same masks, same operations in the same order: every bit
        assert torch.equal(lean_grads[name], grad), name
    rows, width = batch["input_ids"].shape  # each view's rows go through the encoder: (rows, heads, T, T)
    square = lambda shapes, dtype: sum(shape[-2:] == (width, width) and d == dtype for shape, d in shapes)  # noqa: E731
    trained = 2 - frozen  # layers whose attention runs with gradients
    assert square(lean_kept, torch.bool) == trained  # one boolean dropout mask per layer
    assert square(kept, torch.float32) - square(lean_kept, torch.float32) == 2 * trained  # noise, dropped: gone


def test_the_default_is_lean_only_where_the_model_supports_it(tmp_path, tokenizer, tiny_model):
    assert Encoder(tiny_model).backbone.config._attn_implementation == attention.NAME
    for chosen in ("sdpa", "eager"):
        assert Encoder(tiny_model, attn_implementation=chosen).backbone.config._attn_implementation == chosen
    mpnet = Encoder(save_tiny_model(tmp_path, tokenizer, "mpnet"))  # its attention is its own
    assert mpnet.backbone.config._attn_implementation != attention.NAME


def test_without_gradients_or_dropout_sdpa_runs(tiny_model, tokenizer, monkeypatch):
    calls = []
    library = attention.sdpa_attention_forward
    monkeypatch.setattr(attention, "sdpa_attention_forward", lambda *a, **k: calls.append(1) or library(*a, **k))
    encoder, batch = Encoder(tiny_model), padded_batch(tokenizer)
    encoder(**batch).sum().backward()  # training with dropout: the lean path, 2 layers
    assert calls == []
    with torch.no_grad():
        lean_free = encoder(**batch)
    encoder.eval()
    eval_out = encoder(**batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: sdpa's own casts
        encoder.train()(**batch).float().sum().backward()
    assert len(calls) == 6 and lean_free.shape == eval_out.shape
    reference = Encoder(tiny_model, attn_implementation="sdpa").eval()
    assert torch.equal(eval_out, reference(**batch))
