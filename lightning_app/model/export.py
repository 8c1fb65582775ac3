"""Encoders out of and back into files: Hugging Face + sentence-transformers folders, checkpoints.

An exported folder serves both ``AutoModel.from_pretrained`` and ``SentenceTransformer``: the
weights, config and tokenizer at the top, plus sentence-transformers' ``modules.json``,
``sentence_bert_config.json`` and pooling folder describing the same pooling as training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_app.errors import ConfigError
from lightning_app.model.encoder import Encoder
from lightning_app.model.load import encoder_from_checkpoint, load_encoder, token_limit


def export_encoder(encoder: Encoder, tokenizer, output: str | os.PathLike, max_length: int | None = None) -> Path:
    """Write ``encoder`` and ``tokenizer`` to ``output`` as an HF and sentence-transformers folder
    whose ``max_seq_length`` is ``max_length`` (None: the most tokens the model takes)."""
    max_length = max_length or token_limit(encoder, tokenizer)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    encoder.backbone.save_pretrained(out)
    tokenizer.save_pretrained(out)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if encoder.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length, "do_lower_case": False}))
    (out / "1_Pooling").mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": encoder.backbone.config.hidden_size,
        "pooling_mode_cls_token": encoder.pooling == "cls",
        "pooling_mode_mean_tokens": encoder.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    return out


class ExportEncoder(Callback):
    """At the end of fit, export the encoder to ``<log dir>/export`` (or ``dirpath``).

    Args:
        dirpath: where to write; default: the run's log directory + ``/export``.
        max_length: the sentence-transformers folder's tokens per text; None: the most the model takes.
        which: ``last``: the weights at the end of fit; ``best``: the best checkpoint of the first
            ``ModelCheckpoint`` with a ``monitor`` (e.g. ``probe/bbcnews/knn_acc``), the last
            weights when it saved none.
    """

    def __init__(self, dirpath: str | None = None, max_length: int | None = None,
                 which: Literal["last", "best"] = "last") -> None:
        if which not in ("last", "best"):
            raise ConfigError(f"export.which: expected 'last' or 'best', got {which!r}")
        self.dirpath = dirpath
        self.max_length = max_length
        self.which = which

    @staticmethod
    def _monitoring(trainer: Trainer) -> ModelCheckpoint | None:
        return next((c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)), None)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.which == "best" and stage == "fit" and self._monitoring(trainer) is None:
            raise ConfigError("export.which: 'best' needs a ModelCheckpoint with a monitor "
                              "(e.g. monitor: probe/bbcnews/knn_acc, mode: max)")

    def chosen(self, trainer: Trainer) -> tuple[str | None, str]:
        """(checkpoint to export or None for the live weights, a line saying which)."""
        last = f"the last weights (step {trainer.global_step})"
        if self.which == "last":
            return None, last
        checkpoint = self._monitoring(trainer)
        path = checkpoint.best_model_path if checkpoint else ""
        if not path or not os.path.exists(path):
            return None, f"{last}: no best checkpoint was saved for {checkpoint.monitor if checkpoint else '-'}"
        return path, f"the best checkpoint by {checkpoint.monitor} ({float(checkpoint.best_model_score):.4f}): {path}"

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every rank asks for log_dir: under DDP it is a broadcast from rank 0.
        target = self.dirpath or os.path.join(trainer.log_dir or trainer.default_root_dir, "export")
        if trainer.is_global_zero:
            path, description = self.chosen(trainer)
            encoder = encoder_from_checkpoint(path)[0] if path else pl_module.encoder
            export_encoder(encoder, pl_module.tokenizer, target, self.max_length)
            print(f"exported {description} to {target}")


def export_command(ckpt_path: str, output: str, max_length: int | None = None) -> None:
    """Export a checkpoint's encoder as a Hugging Face and sentence-transformers folder.

    Args:
        ckpt_path: a .ckpt file written by ``lightning fit``.
        output: the folder to write (created if missing; existing files with the same names are replaced).
        max_length: the sentence-transformers folder's tokens per text; default: the most the model takes.
    """
    encoder, tokenizer = load_encoder(ckpt_path)
    print(f"exported {ckpt_path} to {export_encoder(encoder, tokenizer, output, max_length)}")
