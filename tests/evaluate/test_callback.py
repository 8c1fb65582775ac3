import pytest
from lightning import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_app.data.datamodule import ContrastiveDataModule
from lightning_app.data.views import SentenceCrops
from lightning_app.evaluate.callback import MtebCallback
from lightning_app.evaluate.report import block_means
from lightning_app.model.module import ContrastiveModule


def test_block_means_and_mean_of_block_means():
    scores = {"a": 0.2, "b": 0.4, "c": 0.9}
    means = block_means(scores, {"a": "Clustering", "b": "Clustering", "c": "STS"})
    assert means == pytest.approx({"Clustering": 0.3, "STS": 0.9, "mean": 0.6})


def test_callback_logs_block_means_at_start_and_every_n_steps(tmp_path, tiny_model, bbc_jsonl):
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = Trainer(accelerator="cpu", max_steps=4, logger=logger, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=[MtebCallback(tasks="LeeDocumentSimilarity", every_n_steps=2, max_length=64)])
    data = ContrastiveDataModule(source=bbc_jsonl, text_field="body", view=SentenceCrops(), tokenizer=tiny_model,
                                 batch_size=4, max_length=32, num_workers=0)
    trainer.fit(ContrastiveModule(tiny_model, lr=1e-3), data)
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    for tag in ("mteb/STS", "mteb/mean"):
        series = events.Scalars(tag)
        assert [e.step for e in series] == [0, 2, 4]
        assert all(-1 <= e.value <= 1 for e in series)
    assert len(list((tmp_path / "run" / "version_0" / "mteb").rglob("LeeDocumentSimilarity.json"))) == 3


def test_unknown_task_fails_before_training(tmp_path, tiny_model, bbc_jsonl):
    from lightning_app.errors import ConfigError

    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      callbacks=[MtebCallback(tasks="NoSuchTask")])
    data = ContrastiveDataModule(source=bbc_jsonl, text_field="body", tokenizer=tiny_model, num_workers=0)
    with pytest.raises(ConfigError, match="NoSuchTask"):
        trainer.fit(ContrastiveModule(tiny_model), data)


def test_a_resumed_fit_does_not_evaluate_its_start_again(monkeypatch):
    """The stopped run evaluated the start; the resumed one evaluates only at its next ``every_n_steps``."""
    from types import SimpleNamespace

    callback, evaluated = MtebCallback(tasks="LeeDocumentSimilarity"), []
    monkeypatch.setattr(callback, "_evaluate", lambda trainer, module: evaluated.append(trainer.ckpt_path))
    callback.on_train_start(SimpleNamespace(ckpt_path="runs/crop/version_0/checkpoints/last.ckpt"), None)
    assert evaluated == []
    callback.on_train_start(SimpleNamespace(ckpt_path=None), None)
    assert evaluated == [None]
