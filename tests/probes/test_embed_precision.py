"""The probes' embedding inside fit runs at the trainer's precision and stores float32."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from lightning_app.model.load import load_encoder
from lightning_app.probes.embed import embed_layers, gathered_layers

TEXTS = ["Shares rose sharply after the results.", "The striker scored twice in the final.",
         "Parliament passed the budget late on Tuesday night after a long debate."]


def test_gathered_layers_follow_the_trainer_s_precision(tiny_model):
    encoder, tokenizer = load_encoder(tiny_model)
    ids = tokenizer(TEXTS)["input_ids"]
    module = SimpleNamespace(encoder=encoder, tokenizer=tokenizer)

    def at(plugin) -> torch.Tensor:
        return gathered_layers(SimpleNamespace(world_size=1, global_rank=0, precision_plugin=plugin), module, ids, 2)

    full, half = at(Precision()), at(MixedPrecision("bf16-mixed", "cpu"))
    assert full.dtype == half.dtype == torch.float32
    torch.testing.assert_close(full, embed_layers(encoder, ids, tokenizer.pad_token_id, 2))
    assert not torch.allclose(full[1:], half[1:], atol=1e-5)  # the layers ran under bf16 autocast
    assert F.cosine_similarity(full[-1], half[-1], dim=-1).min() > 0.99
