import pytest
import torch

from lightning_app.errors import ConfigError
from lightning_app.model.encoder import Encoder, pool, transformer_layers
from lightning_app.model.module import ContrastiveModule
from tests.helpers import save_tiny_model


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    assert pool(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]
    assert pool(hidden, torch.tensor([[1, 1, 0]]), "cls").tolist() == [[1.0, 1.0]]


@pytest.mark.parametrize("kind", ["bert", "roberta", "mpnet"])
def test_frozen_prefix_for_each_layout(tmp_path, tokenizer, kind):
    encoder = Encoder(save_tiny_model(tmp_path, tokenizer, kind), frozen_layers=1)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all(".layer.1." in n for n in trainable)
    assert not any("embeddings" in n or ".layer.0." in n or "pooler" in n for n in trainable)
    assert all(p.requires_grad for n, p in encoder.named_parameters() if ".layer.1." in n)
    full = Encoder(str(tmp_path), frozen_layers=0)
    assert {n for n, p in full.named_parameters() if not p.requires_grad} == {
        n for n, _ in full.named_parameters() if "pooler" in n}


def test_frozen_parameters_stay_bit_identical(tiny_model, tokenizer):
    module = ContrastiveModule(tiny_model, frozen_layers=1, lr=1e-2)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    optimizer = torch.optim.Adam(module.trainable_parameters(), lr=1e-2)
    batch = tokenizer(["one text here", "another text", "one text there", "another one"], padding=True,
                      return_tensors="pt")
    for _ in range(3):
        a, b = module(batch["input_ids"], batch["attention_mask"]).chunk(2)
        from lightning_app.model.loss import info_nce
        info_nce(a, b)[0].backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in module.named_parameters():
        if param.requires_grad:
            assert not torch.equal(param, before[name]), name
        else:
            assert torch.equal(param, before[name]), name


def test_layer_embeddings_come_from_one_forward_pass(tiny_model, tokenizer):
    encoder = Encoder(tiny_model).eval()
    batch = tokenizer(["a short text", "a somewhat longer text here"], padding=True, return_tensors="pt")
    layers = encoder.layer_embeddings(batch["input_ids"], batch["attention_mask"])
    assert layers.shape == (3, 2, 32)
    assert torch.allclose(layers[-1], encoder(batch["input_ids"], batch["attention_mask"]), atol=1e-6)


def test_encoder_trains_with_dropout_on(tiny_model):
    encoder = Encoder(tiny_model)
    assert encoder.training and encoder.backbone.training


def test_gradient_checkpointing_recomputes_each_block_with_the_same_gradients(tiny_model, tokenizer):
    batch = tokenizer(["a first text of a few words", "another text, a little longer than the first one"],
                      padding=True, return_tensors="pt")
    runs = []
    for checkpointing in (False, True):
        encoder = Encoder(tiny_model, gradient_checkpointing=checkpointing)  # training mode, dropout 0.1
        calls = []
        for layer in transformer_layers(encoder.backbone):  # inside the block: its attention
            next(layer.children()).register_forward_hook(lambda *args, calls=calls: calls.append(1))
        torch.manual_seed(0)
        encoder(batch["input_ids"], batch["attention_mask"]).pow(2).sum().backward()
        runs.append((len(calls), {n: p.grad for n, p in encoder.named_parameters() if p.grad is not None}))
    (plain_calls, plain), (checkpointed_calls, checkpointed) = runs
    assert (plain_calls, checkpointed_calls) == (2, 4)  # 2 blocks; checkpointed, each runs again in backward
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():  # the recomputed blocks draw the same dropout masks
        torch.testing.assert_close(checkpointed[name], grad, rtol=0, atol=1e-7)
    assert ContrastiveModule(tiny_model, gradient_checkpointing=True).encoder.backbone.is_gradient_checkpointing


def test_gradient_checkpointing_of_a_model_without_it_is_named(tiny_model, monkeypatch):
    from transformers import BertModel

    monkeypatch.setattr(BertModel, "supports_gradient_checkpointing", False)
    with pytest.raises(ConfigError, match=r"^model.gradient_checkpointing: BertModel does not support activation "
                                          r"checkpointing; set it to false$"):
        Encoder(tiny_model, gradient_checkpointing=True)


@pytest.mark.parametrize("frozen", [-1, 3])
def test_frozen_layers_out_of_range(tiny_model, frozen):
    with pytest.raises(ConfigError, match=r"model.frozen_layers: expected an integer in 0..2"):
        Encoder(tiny_model, frozen_layers=frozen)


@pytest.mark.parametrize("option,value,message", [
    ("temperature", 0.0, "model.temperature: expected > 0"),
    ("temperature", -0.05, "model.temperature: expected > 0"),
    ("lr", 0.0, "model.lr: expected > 0"),
])
def test_bad_module_options(tiny_model, option, value, message):
    with pytest.raises(ConfigError, match=message):
        ContrastiveModule(tiny_model, **{option: value})


def test_random_init_with_config_overrides(tiny_model):
    overrides = {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
    torch.manual_seed(0)
    first = Encoder(tiny_model, pretrained=False, config_overrides=overrides)
    torch.manual_seed(0)
    again = Encoder(tiny_model, pretrained=False, config_overrides=overrides)
    pretrained = Encoder(tiny_model)
    assert first.num_layers == 1 and first.backbone.config.hidden_size == 16
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)  # the seed fixes the random weights
    random_init = Encoder(tiny_model, pretrained=False)
    assert not torch.equal(random_init.backbone.encoder.layer[0].attention.self.query.weight,
                           pretrained.backbone.encoder.layer[0].attention.self.query.weight)
    ids = torch.randint(1000, 2000, (2, 6))
    assert first(ids, torch.ones_like(ids)).shape == (2, 16)


def test_bad_config_overrides(tiny_model):
    with pytest.raises(ConfigError, match="'hidden_sise' is not a field"):
        Encoder(tiny_model, pretrained=False, config_overrides={"hidden_sise": 16})
    with pytest.raises(ConfigError, match="do not fit the pretrained weights"):
        Encoder(tiny_model, config_overrides={"hidden_size": 16, "num_attention_heads": 2})


def test_checkpoint_of_a_random_init_model_with_overrides_loads_back(tmp_path, tiny_model):
    from lightning_app.model.load import encoder_from_checkpoint

    overrides = {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
    module = ContrastiveModule(tiny_model, pretrained=False, config_overrides=overrides)
    path = tmp_path / "random.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    encoder, hp = encoder_from_checkpoint(path)
    assert hp["config_overrides"] == overrides and encoder.num_layers == 1
    for name, value in module.encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[name], value), name
