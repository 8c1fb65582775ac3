"""InfoNCE on cosine similarity with in-batch (and cross-device) negatives."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from lightning_app.errors import ConfigError

TEMPERATURE = 0.05  # the paper's


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ConfigError(f"model.temperature: expected > 0, got {temperature}")


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = TEMPERATURE, symmetric: bool = False,
             a_all: torch.Tensor | None = None, b_all: torch.Tensor | None = None,
             offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE (van den Oord et al. 2018; SimCSE's unsupervised loss) and in-batch top-1 accuracy.

    Row i of ``a`` is pulled to row i of ``b`` and pushed from every other row of ``b_all``:
    ``loss = -mean_i log softmax_j(cos(a_i, b_j) / temperature)[i + offset]``.
    ``a_all``/``b_all`` are the views of all devices (defaults: the local ones) and ``offset`` is
    this device's first row in them. ``symmetric`` averages with the same loss from ``b`` to ``a``.
    """
    check_temperature(temperature)
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    a_all = a if a_all is None else F.normalize(a_all, dim=-1)
    b_all = b if b_all is None else F.normalize(b_all, dim=-1)
    labels = torch.arange(a.shape[0], device=a.device) + offset
    logits = a @ b_all.T / temperature
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.argmax(-1) == labels).float().mean()
    if symmetric:
        loss = (loss + F.cross_entropy(b @ a_all.T / temperature, labels)) / 2
    return loss, accuracy
