"""Two gloo processes with gathered negatives compute the gradients of one process on the whole batch."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_app.model.module import ContrastiveModule
from lightning_app.model.teardown import DestroyProcessGroupAtExit
from tests.helpers import GradientsTo, save_tiny_model


def batches(tokenizer):
    texts = [f"text number {i} about topic {i % 3}" for i in range(8)]
    views = [t.upper() for t in texts]
    rank_rows = lambda r: texts[4 * r:4 * r + 4] + views[4 * r:4 * r + 4]  # noqa: E731
    encode = lambda rows: dict(tokenizer(rows, padding="max_length", max_length=16, return_tensors="pt"))  # noqa: E731
    whole = encode(texts + views)
    return [encode(rank_rows(0)), encode(rank_rows(1))], whole


def gradients(model_dir, tmp_path, name, data, devices, gather=True):
    module = ContrastiveModule(model_dir, gather_negatives=gather, lr=1e-3)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[GradientsTo(tmp_path / name), DestroyProcessGroupAtExit()])
    for batch in data:
        batch["docs_skipped"] = torch.tensor(0)
    trainer.fit(module, DataLoader(data, batch_size=None))
    return torch.load(tmp_path / name)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gathered_negatives_match_one_process_on_the_concatenated_batch(tmp_path, tokenizer):
    model_dir = save_tiny_model(tmp_path / "model", tokenizer, dropout=0.0)
    per_rank, whole = batches(tokenizer)
    single = gradients(model_dir, tmp_path, "single.pt", [whole], devices=1)
    gathered = gradients(model_dir, tmp_path, "ddp.pt", per_rank, devices=2)
    local = gradients(model_dir, tmp_path, "local.pt", per_rank, devices=2, gather=False)
    assert single.keys() == gathered.keys()
    for name in single:
        torch.testing.assert_close(gathered[name], single[name], atol=1e-5, rtol=1e-4)
    assert any((local[n] - single[n]).abs().max() > 1e-4 for n in single)
