"""LayerProbe and LayerDrift: units, the frozen prefix through configs/last_layers.yaml, and DDP."""

import atexit
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from lightning_app.cli import main
from lightning_app.errors import ConfigError
from lightning_app.model.module import ContrastiveModule
from lightning_app.model.teardown import DestroyProcessGroupAtExit
from lightning_app.probes.board import accuracy_figure
from lightning_app.probes.callbacks import LayerProbe
from lightning_app.probes.corpus import ProbeCorpus
from lightning_app.probes.drift import LayerDrift
from lightning_app.probes.embed import embed_layers
from lightning_app.probes.tags import layer_tag

ROOT = Path(__file__).resolve().parents[2]


def test_layer_parameters_follow_the_hidden_states(tiny_model):
    encoder = ContrastiveModule(tiny_model).encoder
    groups = encoder.layer_parameters()
    assert len(groups) == encoder.num_layers + 1
    grouped = {id(p) for group in groups for p in group}
    assert grouped == {id(p) for p in encoder.parameters() if p.requires_grad}  # all but the unused pooler
    assert any(p is encoder.backbone.embeddings.word_embeddings.weight for p in groups[0])


def test_drift_is_the_relative_change_of_each_layer(tiny_model):
    module = ContrastiveModule(tiny_model)
    drift = LayerDrift()
    drift.initial = [[p.detach().clone() for p in group] for group in module.encoder.layer_parameters()]
    assert drift.drift(module) == [0.0, 0.0, 0.0]
    block = module.encoder.layer_parameters()[2]
    with torch.no_grad():
        block[0].mul_(1.5)  # moves by 0.5 * ||p0||
    expected = 0.5 * block[0].norm().item() / 1.5 / torch.stack([p.norm() for p in drift.initial[2]]).norm().item()
    values = drift.drift(module)
    assert values[:2] == [0.0, 0.0] and values[2] == pytest.approx(expected, rel=1e-5)


def test_layer_tags_sort_as_text():
    assert layer_tag("drift", 3, 6) == "drift/layer_03"
    assert layer_tag("probe/x/knn_acc", 7, 120) == "probe/x/knn_acc/layer_007"


def test_figure_is_an_rgb_image():
    image = accuracy_figure("bbcnews", torch.tensor([0.8, 0.9, 0.95]), torch.tensor([0.8, 0.85, 0.9]), 30, 10)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0


def test_embed_layers_batches_by_length_and_keeps_input_order(tiny_model, tokenizer):
    encoder = ContrastiveModule(tiny_model).encoder.eval()
    texts = ["short", "a much longer text about markets and shares", "mid length text", "x y"]
    ids = tokenizer(texts, truncation=True, max_length=16)["input_ids"]
    batched = embed_layers(encoder, ids, tokenizer.pad_token_id, batch_size=3)
    assert batched.shape == (encoder.num_layers + 1, 4, 32)
    for i, one in enumerate(ids):
        alone = embed_layers(encoder, [one], tokenizer.pad_token_id)
        torch.testing.assert_close(batched[:, i], alone[:, 0], atol=1e-5, rtol=1e-4)
    last = embed_layers(encoder, ids, tokenizer.pad_token_id, batch_size=3, last_only=True)
    torch.testing.assert_close(last[0], batched[-1], atol=1e-5, rtol=1e-4)


def scalar_series(log_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_drift_is_exactly_zero_for_the_frozen_prefix_of_last_layers_config(tmp_path, tiny_model):
    main(["fit", "--config", str(ROOT / "configs/last_layers.yaml"), f"--trainer.default_root_dir={tmp_path}",
          f"--trainer.logger.init_args.save_dir={tmp_path}", f"--model.model={tiny_model}", "--model.lr=1e-3",
          "--model.frozen_layers=1", "--trainer.max_steps=3", "--trainer.val_check_interval=3",
          "--data.batch_size=8", "--data.max_length=32", "--data.num_workers=0",
          "--probe.corpora=[{max_documents: 100}]", "--probe.max_length=32"])  # the probe at test size
    series = scalar_series(tmp_path / "last_layers" / "version_0")
    for frozen in ("drift/layer_00", "drift/layer_01"):
        assert series[frozen] == [(0, 0.0), (1, 0.0), (2, 0.0), (3, 0.0)], frozen
    assert series["drift/layer_02"][0] == (0, 0.0)
    assert all(value > 0 for _, value in series["drift/layer_02"][1:])


class ProbeResults(L.Callback):
    """Saves each rank's step-0 accuracies and last-layer probe embeddings, and the training mode
    the module is in right after LayerProbe's step-0 probe; under DDP, also whether the process group
    was still up when the worker's Python began to shut down (an ``atexit`` handler registered before
    ``DestroyProcessGroupAtExit``'s, so it runs after it)."""

    def __init__(self, folder):
        self.folder = folder

    def setup(self, trainer, pl_module, stage):
        if dist.is_initialized():
            path = Path(self.folder) / f"rank{trainer.global_rank}-of-{trainer.world_size}.exit"
            atexit.register(lambda: path.write_text(f"group up at exit: {dist.is_initialized()}"))

    def on_train_start(self, trainer, pl_module):
        self.modes = {module.training for module in pl_module.modules()}

    def on_train_end(self, trainer, pl_module):
        probe = next(c for c in trainer.callbacks if isinstance(c, LayerProbe))
        torch.save({"baseline": probe.baseline, "last_layer": probe.last_layer, "modes": self.modes},
                   Path(self.folder) / f"rank{trainer.global_rank}-of-{trainer.world_size}.pt")


def probe_fit(model_dir, bbc_jsonl, folder, devices):
    corpus = ProbeCorpus(name="mine", source=bbc_jsonl, text_field="body", label_field="topic", max_documents=221)
    probe = LayerProbe([corpus], k=5, max_length=32, geometry_pairs=8, projector=False)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        callbacks=[probe, ProbeResults(folder), DestroyProcessGroupAtExit()])
    batch = {"input_ids": torch.randint(1000, 2000, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long),
             "docs_skipped": torch.tensor(0)}
    trainer.fit(ContrastiveModule(model_dir, lr=1e-3), DataLoader([batch] * devices, batch_size=None))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_ranks_probe_a_shard_each_and_agree_with_one_process(tmp_path, tiny_model, bbc_jsonl):
    probe_fit(tiny_model, bbc_jsonl, tmp_path, devices=1)
    probe_fit(tiny_model, bbc_jsonl, tmp_path, devices=2)
    single, *ranks = (torch.load(tmp_path / name) for name in ("rank0-of-1.pt", "rank0-of-2.pt", "rank1-of-2.pt"))
    # Each worker destroyed its gloo group before Python's shutdown, where gloo's threads can abort it.
    assert [(tmp_path / f"rank{r}-of-2.exit").read_text() for r in (0, 1)] == ["group up at exit: False"] * 2
    assert single["modes"] == {True}  # the probe ran in eval mode and gave training mode back
    step, embeddings = single["last_layer"]["mine"]
    assert step == 0 and embeddings.shape == (221, 32)  # an odd count: rank 1's shard is padded
    for rank in ranks:
        assert torch.equal(rank["baseline"]["mine"], ranks[0]["baseline"]["mine"])
        torch.testing.assert_close(rank["baseline"]["mine"], single["baseline"]["mine"])
        torch.testing.assert_close(rank["last_layer"]["mine"][1], embeddings, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("folds", [1, -2])
def test_layer_probe_rejects_one_fold(folds):
    with pytest.raises(ConfigError, match="probe.cv_folds: expected 0 \\(off\\) or at least 2"):
        LayerProbe(cv_folds=folds)
