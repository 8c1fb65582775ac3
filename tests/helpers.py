"""Helpers shared by test modules (plain functions and one callback); fixtures are in conftest.py.

A test module imports from here or from the package, never from another test module.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def save_tiny_model(folder, tokenizer, kind: str = "bert", dropout: float = 0.1, seed: int = 0,
                    positions: int = 520) -> str:
    """A random 2-layer encoder of the given family (``positions``: its position table), saved with the
    packaged tokenizer."""
    from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel, RobertaConfig, RobertaModel

    config_class, model_class = {"bert": (BertConfig, BertModel), "roberta": (RobertaConfig, RobertaModel),
                                 "mpnet": (MPNetConfig, MPNetModel)}[kind]
    config = config_class(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=positions, hidden_dropout_prob=dropout,
                          attention_probs_dropout_prob=dropout)
    torch.manual_seed(seed)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one TensorBoard scalar tag in a run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


TIMING = ("train/time", "validate/time")  # wall-clock seconds; so are the rates (*/device/*, *_per_sec)


def logged(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard folder but the timings, per tag as sorted (step, value) pairs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: sorted((e.step, e.value) for e in events.Scalars(tag)) for tag in events.Tags()["scalars"]
            if tag not in TIMING and "/device/" not in tag and not tag.endswith("_per_sec")}


def assert_same_log(ours: Path, theirs: Path) -> None:
    """Every tag, every step, once, with the uninterrupted run's values."""
    mine, reference = logged(ours), logged(theirs)
    assert sorted(mine) == sorted(reference)
    largest = 0.0
    for tag, points in reference.items():
        assert [step for step, _ in mine[tag]] == [step for step, _ in points], tag
        values = [value for _, value in points]
        assert [value for _, value in mine[tag]] == pytest.approx(values, rel=1e-5, abs=1e-6), tag
        largest = max([largest, *(abs(a - b) for (_, a), b in zip(mine[tag], values))])
    print(f"the log: {len(reference)} tags, {sum(map(len, reference.values()))} points, as uninterrupted "
          f"(largest value difference {largest:.3g})")


def make_datamodule(source, tokenizer_path="packaged:minilm", rank=0, world=1, **kwargs):
    """A ContrastiveDataModule set up for fit as rank ``rank`` of ``world`` (whole-document dropout
    views, batch 4, no workers unless given)."""
    from lightning_app.data.datamodule import ContrastiveDataModule
    from lightning_app.data.views import Dropout

    kwargs = {"view": Dropout(whole_document=True), "batch_size": 4, "num_workers": 0, "val_fraction": 0.2,
              **kwargs}
    dm = ContrastiveDataModule(source=source, tokenizer=tokenizer_path, **kwargs)
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, max_steps=10, accumulate_grad_batches=1)
    dm.setup("fit")
    return dm


def launches(cell: Path) -> int:
    """How many times a grid cell's ``lightning fit`` was started (one line per launch in fit.log)."""
    return sum(line.startswith("$ ") for line in (cell / "fit.log").read_text().splitlines())


class GradientsTo(L.Callback):
    """Saves rank 0's averaged gradients of the first step (DDP has all-reduced them by then)."""

    def __init__(self, path):
        self.path = path

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_rank == 0:
            grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            torch.save(grads, self.path)
