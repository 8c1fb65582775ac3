"""Every way a model arrives, and what the rest of the package asks of a loaded one.

A model is a Lightning ``.ckpt`` written by ``lightning fit``, an exported or
sentence-transformers folder, a hub id or ``packaged:<name>``; checkpoints load without executing
pickled code. Here too: its position and token limits and the hash of its weights (the revision
MTEB results and embeddings are filed under).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from lightning_app.errors import ConfigError, first_line
from lightning_app.model.encoder import Encoder, encoder_options
from lightning_app.packaged import load_tokenizer, resolve_model

MODELS = "a .ckpt written by lightning fit, an exported or sentence-transformers folder, a hub id, or packaged:minilm"


def position_limit(backbone: nn.Module) -> int | None:
    """The most tokens (special tokens included) the backbone's position embeddings take, or None
    when it has no absolute position table (rotary or relative positions).

    RoBERTa, XLM-R and MPNet number positions from ``padding_idx + 1``, so they take
    ``max_position_embeddings - padding_idx - 1`` tokens (514 - 2 = 512).
    """
    embeddings = getattr(backbone, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, nn.Embedding):
        return None
    padding_idx = getattr(embeddings, "padding_idx", None)
    return table.num_embeddings - (padding_idx + 1 if isinstance(padding_idx, int) else 0)


def config_position_limit(config) -> int | None:
    """``position_limit`` of the model a config describes, built on the meta device (no memory, no weights)."""
    from transformers import AutoModel

    with torch.device("meta"):
        return position_limit(AutoModel.from_config(config))


def token_limit(encoder: Encoder, tokenizer) -> int:
    """The most tokens per text: the smaller of the position table's limit and the tokenizer's maximum."""
    limits = (position_limit(encoder.backbone), getattr(tokenizer, "model_max_length", None))
    return min((v for v in limits if isinstance(v, int) and v < 1_000_000), default=1_000_000)


def check_length(option: str, value: int, limit: nn.Module | int | None, model: str) -> None:
    """``value`` tokens fit the model's position table (a backbone, or its limit as a number)."""
    limit = limit if limit is None or isinstance(limit, int) else position_limit(limit)
    if limit is not None and value > limit:
        raise ConfigError(f"{option}: expected at most {limit} tokens (the position limit of '{model}'), got {value}")


def check_max_length(max_length, encoder: Encoder, tokenizer, option: str = "max_length") -> None:
    """``max_length`` is an integer from 1 to the tokens this model and tokenizer take."""
    limit = token_limit(encoder, tokenizer)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length <= limit:
        raise ConfigError(f"{option}: expected an integer in 1..{limit} (the most tokens this model and tokenizer "
                          f"take), got {max_length!r}")


def check_layer(layer, count: int, option: str = "layer") -> int | None:
    """A hidden-state index in 0..count (0 = embeddings) as given, or None for the last layer."""
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= count):
        raise ConfigError(f"{option}: expected an integer in 0..{count} (0 = embeddings, {count} = last) or "
                          f"nothing for the last layer, got {layer!r}")
    return None if layer == count else layer


def weights_revision(module: nn.Module) -> str:
    """12 hex digits of a SHA-256 over every state_dict entry's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()[:12]


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A Lightning checkpoint's contents, loaded without executing pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint not found: '{path}'") from None
    except Exception as error:  # truncated, corrupt, or not a checkpoint at all
        raise ConfigError(f"checkpoint '{path}' cannot be read ({type(error).__name__}: "
                          f"{first_line(error, 200)}); expected a complete Lightning .ckpt file") from None


def encoder_from_checkpoint(path: str | os.PathLike) -> tuple[Encoder, dict]:
    """The trained encoder of a checkpoint written by ``ContrastiveModule``, and its hyperparameters.

    The architecture comes from the base model's config (``hyper_parameters.model``), the weights
    from the checkpoint; nothing is unpickled.
    """
    checkpoint = read_checkpoint(path)
    hp = checkpoint.get("hyper_parameters") or {}
    if "model" not in hp or "state_dict" not in checkpoint:
        raise ConfigError(f"checkpoint '{path}' was not written by lightning_app's ContrastiveModule "
                          "(expected hyper_parameters.model and a state_dict)")
    encoder = Encoder(**{**encoder_options(hp), "pretrained": False})
    prefix = "encoder."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
    return encoder.eval(), hp


def load_encoder(model: str, pooling: str | None = None, trust_remote_code: bool = False,
                 option: str | None = None) -> tuple[Encoder, object]:
    """(Encoder in eval mode, tokenizer) from a Lightning .ckpt, an exported folder, a hub id or
    ``packaged:``; ``pooling`` None keeps the checkpoint's or folder's own. With ``option``, any
    failure to load is one line naming it."""
    try:
        if str(model).endswith(".ckpt"):
            encoder, hp = encoder_from_checkpoint(model)
            tokenizer = load_tokenizer(hp["model"], hp.get("trust_remote_code", False))
            encoder.pooling = pooling or encoder.pooling
        else:
            encoder = Encoder(model, pooling or _folder_pooling(model), trust_remote_code=trust_remote_code)
            tokenizer = load_tokenizer(model, trust_remote_code)
    except Exception as error:  # unknown hub id offline, folder without a model, unreadable checkpoint, ...
        if option is None:
            raise
        raise ConfigError(f"{option}: cannot load '{model}' ({first_line(error, 200)}); expected {MODELS}") from None
    return encoder.eval(), tokenizer


def _folder_pooling(model: str) -> str:
    """The pooling a sentence-transformers folder declares (mean when it declares none)."""
    config = Path(resolve_model(model)) / "1_Pooling" / "config.json"
    if config.exists() and json.loads(config.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"
