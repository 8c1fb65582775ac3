"""What the probes show in TensorBoard: scalars at the optimizer step, the accuracy-by-layer
figure and the projector of the last layer's embeddings."""

from __future__ import annotations

import numpy as np
import torch
from lightning import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_app.probes import tags


def log_at_step(trainer: Trainer, metrics: dict[str, float]) -> None:
    """Log at ``global_step`` (the optimizer steps behind these weights): one x axis for every
    probe, drift and MTEB point."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


def writers(trainer: Trainer) -> list:
    """The TensorBoard ``SummaryWriter`` of each TensorBoard logger of the run."""
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def accuracy_figure(name: str, accuracies: torch.Tensor, baseline: torch.Tensor | None, step: int,
                    k: int) -> np.ndarray:
    """An (H, W, 3) uint8 image: kNN accuracy against layer at ``step``, and at step 0 when given."""
    figure = Figure(figsize=(5, 3.2), dpi=100)
    axes = figure.add_subplot()
    layers = range(len(accuracies))
    if baseline is not None:
        axes.plot(layers, baseline.tolist(), "o--", color="0.55", label="step 0")
    axes.plot(layers, accuracies.tolist(), "o-", color="C0", label=f"step {step}")
    axes.set_xticks(list(layers), tags.layer_names(len(accuracies), prefix=""))
    axes.set_xlabel("layer")
    axes.set_ylabel(f"{k}-NN accuracy")
    axes.set_title(name)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def add_accuracy_figure(trainer: Trainer, name: str, accuracies: torch.Tensor, baseline: torch.Tensor | None,
                        k: int) -> None:
    """The figure of ``accuracy_figure`` as ``probe/<name>/knn_acc_by_layer`` at the current step."""
    targets = writers(trainer)
    if targets:
        image = accuracy_figure(name, accuracies, baseline, trainer.global_step, k)
        for writer in targets:
            writer.add_image(f"{tags.probe_tag(name, tags.KNN)}_by_layer", image, trainer.global_step,
                             dataformats="HWC")


def add_projectors(trainer: Trainer, embeddings: dict[str, tuple[int, torch.Tensor]], corpora: dict) -> None:
    """Each corpus's (step, embeddings) with its labels and opening words in TensorBoard's projector,
    as ``probe/<name>``; ``corpora`` maps a name to its ``LabelledTexts``."""
    for name, (step, values) in embeddings.items():
        corpus = corpora[name]
        rows = [[" ".join(corpus.classes[label].split()), " ".join(text[:80].split())]
                for label, text in zip(corpus.labels.tolist(), corpus.texts)]
        for writer in writers(trainer):
            writer.add_embedding(values, metadata=rows, metadata_header=["label", "text"], tag=f"probe/{name}",
                                 global_step=step)
            writer.flush()
