"""The mteb 2.x encoder: lightning_app's Encoder with batching, truncation, a choice of layer and a weight-hash revision.

mteb keeps results per model name and revision. The revision here is a hash of the weights, so a
result cached for one checkpoint is never reported for another; encoding settings that differ from
the defaults (layer, max_seq_length, pooling, normalize) go into mteb's ``experiment_kwargs``, which
files them in their own ``experiments/<settings>`` folder.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ScoringFunction

from lightning_app.checks import position_limit
from lightning_app.errors import ConfigError
from lightning_app.export import load_encoder
from lightning_app.model.encoder import Encoder
from lightning_app.packaged import is_packaged
from lightning_app.probes.embed import embed_layers, evaluating

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import PromptType
    from torch.utils.data import DataLoader

DEFAULT_MAX_SEQ_LENGTH = 384  # the paper's evaluation length
DEFAULT_SETTINGS = {"layer": None, "max_seq_length": DEFAULT_MAX_SEQ_LENGTH, "pooling": "mean",
                    "normalize": False}


def load_model(model: str, pooling: str | None = None) -> tuple[Encoder, Any]:
    """The Encoder and tokenizer for a Lightning .ckpt, an exported folder, a hub id or
    ``packaged:<name>``; ``pooling`` None keeps the checkpoint's or folder's own."""
    return load_encoder(model, pooling)


def model_name(model: str) -> str:
    """mteb's ``org/name`` for a model: hub ids as given, ``packaged/<name>``, ``local/<folder or file stem>``."""
    if is_packaged(model):
        return "packaged/" + model.split(":", 1)[1]
    path = Path(model)
    if path.exists():
        path = path.resolve()
        return "local/" + re.sub(r"[^\w.=-]", "_", path.stem if path.is_file() else path.name)
    return model if "/" in model else f"hub/{model}"


def weights_revision(module: torch.nn.Module) -> str:
    """12 hex digits of a SHA-256 over every state_dict entry's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()[:12]


def token_limit(encoder: Encoder, tokenizer: Any) -> int:
    """The most tokens per text: the smaller of the position table's limit and the tokenizer's maximum."""
    limits = (position_limit(encoder.backbone),
              getattr(tokenizer, "model_max_length", None))
    return min((v for v in limits if isinstance(v, int) and v < 1_000_000), default=1_000_000)


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class MtebEncoder(AbsEncoder):
    """Texts -> one pooled embedding each, from the last layer or a chosen one, for ``mteb.evaluate``.

    Embeddings are cached per text (so BBC clustering and classification encode the articles once)
    until the weights change or ``clear_cache`` is called. With ``all_layers`` every layer is
    computed and cached in one forward pass, and ``at_layer(k)`` gives per-layer views that share
    it: memory is texts x (layers + 1) x hidden x 4 bytes, so clear it between large tasks.

    Args:
        encoder: the model; moved to ``device`` if given, put in eval mode while encoding.
        tokenizer: its tokenizer.
        name: mteb model name, ``org/name``.
        batch_size: texts per forward pass.
        max_seq_length: tokens kept per text (longer texts are truncated).
        layer: None = last layer; N = hidden state N (0 = embeddings).
        device: e.g. ``cpu``, ``cuda``, ``cuda:1``; None keeps the encoder where it is.
        all_layers: compute and cache every layer (for ``at_layer`` views).
    """

    def __init__(self, encoder: Encoder, tokenizer: Any, name: str, *, batch_size: int = 32,
                 max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, layer: int | None = None,
                 device: str | None = None, all_layers: bool = False) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size: expected a positive integer, got {batch_size!r}")
        limit = token_limit(encoder, tokenizer)
        if not isinstance(max_seq_length, int) or not 1 <= max_seq_length <= limit:
            raise ConfigError(f"max_seq_length: expected an integer in 1..{limit} (the most tokens "
                              f"this model and tokenizer take), got {max_seq_length!r}")
        if device is not None:
            try:
                encoder.to(torch.device(device))
            except (RuntimeError, AssertionError) as error:
                raise ConfigError(f"device: cannot use {device!r} ({error})") from None
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.all_layers = all_layers
        self.layer = self._check_layer(layer)
        self._cache: dict[bytes, np.ndarray] = {}
        self._state: dict[str, Any] = {"fingerprint": None, "revision": None}

    @classmethod
    def load(cls, model: str, *, pooling: str | None = None, **options: Any) -> MtebEncoder:
        """Build from a hub id, local folder or ``packaged:<name>``; ``options`` as in the constructor."""
        encoder, tokenizer = load_model(model, pooling)
        return cls(encoder, tokenizer, model_name(model), **options)

    def _check_layer(self, layer: int | None) -> int | None:
        """The layer as given, or None for the last one (the same embeddings as ``layer=None``)."""
        count = self.encoder.num_layers
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)
                                  or not 0 <= layer <= count):
            raise ConfigError(f"layer: expected an integer in 0..{count} (0 = embeddings, {count} = "
                              f"last) or None for the last layer, got {layer!r}")
        return None if layer == count else layer

    def at_layer(self, layer: int | None) -> MtebEncoder:
        """A view at another layer sharing the model, revision and cache; needs ``all_layers``."""
        if not self.all_layers:
            raise ValueError("at_layer needs an MtebEncoder built with all_layers=True")
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.layer = self._check_layer(layer)
        return view

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def revision(self) -> str:
        """Hash of the current weights; recomputed (and the cache dropped) after any in-place update."""
        params = self.encoder.state_dict(keep_vars=True).values()
        fingerprint = tuple((id(t), t._version) for t in params)
        if fingerprint != self._state["fingerprint"]:
            self._state.update(fingerprint=fingerprint, revision=weights_revision(self.encoder))
            self._cache.clear()
        return self._state["revision"]

    @property
    def settings(self) -> dict[str, Any]:
        """The encoding settings that change embeddings: layer, max_seq_length, pooling, normalize."""
        return {"layer": self.layer, "max_seq_length": self.max_seq_length,
                "pooling": self.encoder.pooling, "normalize": self.encoder.normalize}

    @property
    def mteb_model_meta(self) -> ModelMeta:
        experiment = {k: v for k, v in self.settings.items() if v != DEFAULT_SETTINGS[k]}
        return ModelMeta.create_empty(overwrites=dict(
            name=self.name, revision=self.revision, framework=["PyTorch"],
            n_parameters=sum(p.numel() for p in self.encoder.parameters()),
            embed_dim=self.encoder.backbone.config.hidden_size, max_tokens=self.max_seq_length,
            similarity_fn_name=ScoringFunction.COSINE, use_instructions=False,
            experiment_kwargs=experiment or None,
        ))

    def encode(self, inputs: DataLoader, *, task_metadata: TaskMetadata, hf_split: str,
               hf_subset: str, prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        """mteb's batches of ``{"text": [...]}`` -> (N, hidden) float32 array."""
        return self.embed([text for batch in inputs for text in batch["text"]])

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), hidden) float32 embeddings at ``self.layer``, computing only uncached texts."""
        if not texts:
            return np.zeros((0, self.encoder.backbone.config.hidden_size), dtype=np.float32)
        _ = self.revision  # drops the cache if the weights changed
        keys = [_text_key(t) for t in texts]
        todo = {k: t for k, t in zip(keys, texts) if k not in self._cache}
        if todo:
            self._cache.update(zip(todo, self._forward(list(todo.values()))))
        row = 0 if not self.all_layers else (self.encoder.num_layers if self.layer is None else self.layer)
        return np.stack([self._cache[k][row] for k in keys])

    def _forward(self, texts: list[str]) -> np.ndarray:
        """(N, rows, hidden): every layer with ``all_layers``, else only ``self.layer``, in eval mode."""
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length, verbose=False)["input_ids"]
        last_only = not self.all_layers and self.layer is None
        with evaluating(self.encoder):
            out = embed_layers(self.encoder, ids, self.tokenizer.pad_token_id, self.batch_size, last_only=last_only)
        if not self.all_layers and self.layer is not None:
            out = out[self.layer:self.layer + 1]
        return out.transpose(0, 1).float().cpu().numpy()
