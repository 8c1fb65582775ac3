"""A Hugging Face encoder with pooling, a frozen prefix of layers and per-layer embeddings."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from lightning_app.errors import ConfigError, first_line
from lightning_app.model import attention
from lightning_app.packaged import resolve_model

Pooling = Literal["mean", "cls"]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling = "mean") -> torch.Tensor:
    """(B, T, H) token states -> (B, H): mean over non-padding tokens, or the first token."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def read_model_config(model: str, option: str, **kwargs) -> PretrainedConfig:
    """The Hugging Face config of a hub id, local folder or ``packaged:`` model; anything else
    (a folder without a model's config.json, a missing path) is one line naming ``option``."""
    path = resolve_model(model)
    if os.path.isfile(path):
        raise ConfigError(f"{option}: '{model}' is a file; expected a model folder (with config.json), "
                          "a hub id or packaged:minilm")
    if os.path.isdir(path) and not (Path(path) / "config.json").is_file():
        raise ConfigError(f"{option}: '{model}' is not a model folder (no config.json); expected a folder "
                          "written by save_pretrained or lightning export, a hub id or packaged:minilm")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"{option}: cannot load '{model}' as a model ({first_line(error)}); expected a "
                          "model folder (with config.json), a hub id or packaged:minilm") from None


def model_config(model: str, config_overrides: dict | None = None, option: str = "model.model",
                 **kwargs) -> PretrainedConfig:
    """The config of a hub id, folder or ``packaged:<name>`` with ``config_overrides`` applied (e.g.
    ``{num_hidden_layers: 4, hidden_size: 256}`` for a smaller random-init model); errors name ``option``."""
    config = read_model_config(model, option, **kwargs)
    for field, value in (config_overrides or {}).items():
        if not hasattr(config, field):
            raise ConfigError(f"model.config_overrides: '{field}' is not a field of {type(config).__name__}")
        setattr(config, field, value)
    return config


def transformer_layers(backbone: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks (``encoder.layer`` in BERT, RoBERTa and MPNet)."""
    count = backbone.config.num_hidden_layers
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ConfigError(f"cannot find the {count} transformer layers of {type(backbone).__name__}")


class Encoder(nn.Module):
    """Token ids -> one pooled embedding per text (or per layer).

    Args:
        model: hub id, local folder, or ``packaged:minilm``.
        pooling: ``mean`` over non-padding tokens (the paper's choice) or ``cls``.
        normalize: L2-normalise the pooled embedding.
        frozen_layers: freeze the embeddings and the first N transformer layers; 0 trains all.
        trust_remote_code: run model code shipped with a hub model (off unless asked for).
        attn_implementation: passed to ``from_pretrained`` (e.g. ``sdpa``, ``eager``); None: the
            library's default, which is ``sdpa``, becomes ``sdpa_lean`` (``model/attention.py``: the
            same results, less memory in CPU training) where the model supports it.
        pretrained: load the weights; False builds the architecture with random weights (a
            random-init baseline, or weights to be loaded from a checkpoint).
        config_overrides: fields of the model's config to change, e.g. ``{num_hidden_layers: 4,
            hidden_size: 256}`` for a smaller random-init model, or ``hidden_dropout_prob``.
        gradient_checkpointing: keep only each block's input in training and recompute the block
            in backward (the library's activation checkpointing; the same dropout masks, so the
            same gradients): less memory, one more forward pass of the blocks.
    """

    def __init__(self, model: str, pooling: Pooling = "mean", normalize: bool = False,
                 frozen_layers: int = 0, trust_remote_code: bool = False,
                 attn_implementation: str | None = None, pretrained: bool = True,
                 config_overrides: dict | None = None, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"pooling: expected 'mean' or 'cls', got {pooling!r}")
        kwargs = {"trust_remote_code": trust_remote_code}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        path = resolve_model(model)
        config = model_config(model, config_overrides, **kwargs)
        if pretrained:
            try:
                self.backbone = AutoModel.from_pretrained(path, config=config, **kwargs)
            except RuntimeError as error:  # shapes changed by the overrides
                raise ConfigError(f"model.config_overrides: {config_overrides} do not fit the pretrained weights "
                                  f"of '{model}' ({first_line(error, 200)}); set model.pretrained: "
                                  "false for a random-init model") from None
        else:
            self.backbone = AutoModel.from_config(config, **kwargs)
        if not attn_implementation and self.backbone.config._attn_implementation == "sdpa" \
                and self.backbone._supports_attention_backend:
            self.backbone.set_attn_implementation(attention.NAME)
        self.pooling = pooling
        self.normalize = normalize
        self.frozen_layers = frozen_layers
        self.freeze(frozen_layers)
        if gradient_checkpointing:
            if not self.backbone.supports_gradient_checkpointing:
                raise ConfigError(f"model.gradient_checkpointing: {type(self.backbone).__name__} does not support "
                                  "activation checkpointing; set it to false")
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.train()  # from_pretrained returns eval mode; training needs the encoder's dropout

    @property
    def num_layers(self) -> int:
        return self.backbone.config.num_hidden_layers

    def freeze(self, frozen_layers: int) -> None:
        """Freeze the embeddings and the first ``frozen_layers`` blocks; the pooler head is unused."""
        if not isinstance(frozen_layers, int) or not 0 <= frozen_layers <= self.num_layers:
            raise ConfigError(f"model.frozen_layers: expected an integer in 0..{self.num_layers} "
                              f"(this model has {self.num_layers} layers), got {frozen_layers!r}")
        self.backbone.requires_grad_(True)
        pooler = getattr(self.backbone, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)
        # Group 0 (embeddings, shared position biases) feeds block 1, so it freezes with any prefix.
        for group in self.layer_parameters()[:frozen_layers + 1] if frozen_layers else []:
            for param in group:
                param.requires_grad_(False)

    def layer_parameters(self) -> list[list[nn.Parameter]]:
        """Parameters grouped like the hidden states: ``[embeddings, block 1, ..., block N]``.

        Group 0 holds everything outside the blocks that feeds block 1 (embeddings, shared position
        biases); the unused pooler head is left out.
        """
        layers = transformer_layers(self.backbone)
        pooler = getattr(self.backbone, "pooler", None)
        elsewhere = {id(p) for p in layers.parameters()}
        elsewhere |= {id(p) for p in pooler.parameters()} if isinstance(pooler, nn.Module) else set()
        embeddings = [p for p in self.backbone.parameters() if id(p) not in elsewhere]
        return [embeddings] + [list(block.parameters()) for block in layers]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._finish(pool(hidden, attention_mask, self.pooling))

    def layer_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(num_layers + 1, B, H): every hidden state (embeddings first) pooled, from one forward pass."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return torch.stack([self._finish(pool(h, attention_mask, self.pooling)) for h in out.hidden_states])

    def __setstate__(self, state: dict) -> None:
        """Unpickled in a fresh process (``ddp_spawn``): transformers 5 returns hidden states only for
        model classes built in this process, so register the backbone's recordable outputs again."""
        super().__setstate__(state)
        try:
            from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
        except ImportError:  # transformers 4 needs no registry
            return
        for module in self.backbone.modules():
            if isinstance(module, PreTrainedModel):
                _CAN_RECORD_REGISTRY[module] = module._can_record_outputs

    def _finish(self, embedding: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(embedding, dim=-1) if self.normalize else embedding


def encoder_options(hparams) -> dict:
    """The ``Encoder`` arguments among a module's hyperparameters (its defaults fill the rest)."""
    return {name: hparams[name] for name in inspect.signature(Encoder).parameters if name in hparams}
