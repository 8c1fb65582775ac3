"""The mteb 2.x encoder: lightning_app's Encoder with batching, truncation, a choice of layer and a weight-hash revision.

mteb keeps results per model name and revision. The revision here is a hash of the weights, so a
result cached for one checkpoint is never reported for another; encoding settings that differ from
the defaults (layer, max_length, pooling, normalize, precision) go into mteb's ``experiment_kwargs``, which
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

from lightning_app.errors import ConfigError
from lightning_app.model.encoder import Encoder
from lightning_app.model.load import check_layer, check_max_length, load_encoder, weights_revision
from lightning_app.model.precision import autocast, resolve_precision
from lightning_app.packaged import is_packaged
from lightning_app.probes.embed import embed_layers, evaluating

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import PromptType
    from torch.utils.data import DataLoader

DEFAULT_MAX_LENGTH = 384  # tokens per text: the paper's evaluation length
DEFAULT_SETTINGS = {"layer": None, "max_length": DEFAULT_MAX_LENGTH, "pooling": "mean",
                    "normalize": False, "precision": "32-true"}
# bf16-true would cast the weights, and so change the weight hash results are filed under.
PRECISIONS = ("auto", "32", "32-true", "bf16-mixed")


def model_name(model: str) -> str:
    """mteb's ``org/name`` for a model: hub ids as given, ``packaged/<name>``, ``local/<folder or file stem>``."""
    if is_packaged(model):
        return "packaged/" + model.split(":", 1)[1]
    path = Path(model)
    if path.exists():
        path = path.resolve()
        return "local/" + re.sub(r"[^\w.=-]", "_", path.stem if path.is_file() else path.name)
    return model if "/" in model else f"hub/{model}"


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
        max_length: tokens kept per text (longer texts are truncated).
        layer: None = last layer; N = hidden state N (0 = embeddings).
        device: e.g. ``cpu``, ``cuda``, ``cuda:1``; None keeps the encoder where it is.
        all_layers: compute and cache every layer (for ``at_layer`` views).
        precision: auto (bf16-mixed where the device multiplies bf16 natively, else 32-true), 32,
            32-true or bf16-mixed (bf16 autocast; weights stay float32).
    """

    def __init__(self, encoder: Encoder, tokenizer: Any, name: str, *, batch_size: int = 32,
                 max_length: int = DEFAULT_MAX_LENGTH, layer: int | None = None,
                 device: str | None = None, all_layers: bool = False, precision: str = "32-true") -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size: expected a positive integer, got {batch_size!r}")
        check_max_length(max_length, encoder, tokenizer)
        if device is not None:
            try:
                encoder.to(torch.device(device))
            except (RuntimeError, AssertionError) as error:
                raise ConfigError(f"device: cannot use {device!r} ({error})") from None
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.max_length = max_length
        self.all_layers = all_layers
        self.layer = check_layer(layer, encoder.num_layers)
        self.precision = resolve_precision(precision, self._device_type, PRECISIONS)
        self._cache: dict[bytes, np.ndarray] = {}
        self._state: dict[str, Any] = {"fingerprint": None, "revision": None}

    @classmethod
    def load(cls, model: str, *, pooling: str | None = None, **options: Any) -> MtebEncoder:
        """Build from a hub id, local folder or ``packaged:<name>``; ``options`` as in the constructor."""
        encoder, tokenizer = load_encoder(model, pooling)
        return cls(encoder, tokenizer, model_name(model), **options)

    def at_layer(self, layer: int | None) -> MtebEncoder:
        """A view at another layer sharing the model, revision and cache; needs ``all_layers``."""
        if not self.all_layers:
            raise ValueError("at_layer needs an MtebEncoder built with all_layers=True")
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.layer = check_layer(layer, self.encoder.num_layers)
        return view

    @property
    def _device_type(self) -> str:
        return next(self.encoder.parameters()).device.type

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
        """The encoding settings that change embeddings: layer, max_length, pooling, normalize, precision."""
        return {"layer": self.layer, "max_length": self.max_length, "pooling": self.encoder.pooling,
                "normalize": self.encoder.normalize, "precision": self.precision}

    @property
    def mteb_model_meta(self) -> ModelMeta:
        experiment = {k: v for k, v in self.settings.items() if v != DEFAULT_SETTINGS[k]}
        return ModelMeta.create_empty(overwrites=dict(
            name=self.name, revision=self.revision, framework=["PyTorch"],
            n_parameters=sum(p.numel() for p in self.encoder.parameters()),
            embed_dim=self.encoder.backbone.config.hidden_size, max_tokens=self.max_length,
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
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length, verbose=False)["input_ids"]
        last_only = not self.all_layers and self.layer is None
        with evaluating(self.encoder), autocast(self.precision, self._device_type):
            out = embed_layers(self.encoder, ids, self.tokenizer.pad_token_id, self.batch_size, last_only=last_only)
        if not self.all_layers and self.layer is not None:
            out = out[self.layer:self.layer + 1]
        return out.transpose(0, 1).float().cpu().numpy()
