"""Exact resume: a run killed and resumed from its last checkpoint ends where an uninterrupted
run ends, weights and log; checkpoints are written atomically and an unreadable one is refused up front."""

import json
import os
from pathlib import Path

import pytest
import torch
from lightning import Callback
from safetensors.torch import load_file

from lightning_app.cli import main
from lightning_app.model.load import read_checkpoint
from lightning_app.cli.preemption import AtomicCheckpointIO
from tests.helpers import ROOT, assert_same_log, scalars

STEPS = 12
# The probe at test size: 100 BBC documents at the runs' 48 tokens (the configs: 500 at 128, most of
# a tiny run's time).
PROBE = ["--probe.corpora=[{max_documents: 100}]", "--probe.max_length=48"]


class CrashAt(Callback):
    """Fails the run at the end of training step ``step`` (after the checkpoint of an earlier step)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"crash at step {self.step}")


def fit(config: str, run_dir: Path, model: str, *extra: str) -> None:
    main(["fit", "--config", str(ROOT / "configs" / config), f"--trainer.default_root_dir={run_dir}",
          f"--trainer.logger.init_args.save_dir={run_dir}", "--trainer.logger.init_args.version=0",
          f"--model.model={model}", "--model.lr=1e-3", f"--trainer.max_steps={STEPS}",
          "--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false",
          "--data.batch_size=8", "--data.max_length=48", "--data.shuffle_buffer=200", *PROBE, *extra])


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {k.removeprefix("encoder.backbone."): v for k, v in read_checkpoint(checkpoint)["state_dict"].items()}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("config, workers", [("crop.yaml", 1), ("dropout.yaml", 0)])
def test_killed_and_resumed_run_ends_with_the_uninterrupted_weights(config, workers, tmp_path, tiny_model):
    name = config.removesuffix(".yaml")
    fit(config, tmp_path / "whole", tiny_model, f"--data.num_workers={workers}")
    crash = json.dumps({"class_path": "tests.test_resume.CrashAt", "init_args": {"step": 11}})
    with pytest.raises(RuntimeError, match="crash at step 11"):
        fit(config, tmp_path / "resumed", tiny_model, f"--data.num_workers={workers}", f"--trainer.callbacks+={crash}")
    checkpoints = tmp_path / "resumed" / name / "version_0" / "checkpoints"
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == 10
    at_checkpoint = weights(checkpoints / "step000010.ckpt")  # replaced by step000012.ckpt (save_top_k: 1)
    fit(config, tmp_path / "resumed", tiny_model, f"--data.num_workers={workers}",
        f"--ckpt_path={checkpoints / 'last.ckpt'}")

    whole = load_file(tmp_path / "whole" / name / "version_0" / "export" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / name / "version_0" / "export" / "model.safetensors")
    difference = max((whole[k] - resumed[k]).abs().max().item() for k in whole)
    print(f"{name}: max weight difference after a resume: {difference:.3g}")
    assert difference <= 1e-6
    assert max((whole[k] - at_checkpoint[k]).abs().max().item() for k in whole) > 1e-4  # the resumed steps trained

    uninterrupted = scalars(tmp_path / "whole" / name / "version_0", "train/loss")
    series = scalars(tmp_path / "resumed" / name / "version_0", "train/loss")
    assert [step for step, _ in series] == list(range(STEPS))
    assert [loss for _, loss in series] == pytest.approx([loss for _, loss in uninterrupted], abs=1e-5)
    assert_same_log(tmp_path / "resumed" / name / "version_0", tmp_path / "whole" / name / "version_0")


def test_a_truncated_checkpoint_is_refused_with_one_line_and_left_untouched(tmp_path, tiny_model, capsys):
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}, "global_step": 3}, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:2000])
    before = checkpoint.read_bytes()
    with pytest.raises(SystemExit) as done:
        fit("crop.yaml", tmp_path / "runs", tiny_model, "--data.num_workers=0", f"--ckpt_path={checkpoint}")
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2
    assert err[-1].startswith(f"error: ckpt_path: checkpoint '{checkpoint}' cannot be read")
    assert "expected a complete Lightning .ckpt file" in err[-1]
    assert checkpoint.read_bytes() == before
    assert not (tmp_path / "runs" / "crop" / "version_0" / "checkpoints").exists()


def test_a_save_that_dies_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, target)
    before = target.read_bytes()

    def die_midway(checkpoint, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise OSError("killed during the save")

    monkeypatch.setattr(torch, "save", die_midway)
    with pytest.raises(OSError, match="killed during the save"):
        io.save_checkpoint({"step": 2}, target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.ckpt"]


@pytest.mark.slow
def test_a_run_resumed_after_its_last_periodic_checkpoint_links_last_to_its_final_step(tmp_path, tiny_model):
    """Resumed from step 10 with no periodic save left before the end (step 12): the end of fit
    still writes step000012.ckpt and points last.ckpt at it (not a separate file of its own)."""
    checkpoints = tmp_path / "crop" / "version_0" / "checkpoints"
    fit("crop.yaml", tmp_path, tiny_model, "--data.num_workers=0", "--trainer.max_steps=10")
    assert os.readlink(checkpoints / "last.ckpt") == "step000010.ckpt"
    fit("crop.yaml", tmp_path, tiny_model, "--data.num_workers=0", f"--ckpt_path={checkpoints / 'last.ckpt'}")
    assert os.readlink(checkpoints / "last.ckpt") == f"step{STEPS:06d}.ckpt"
    assert read_checkpoint(checkpoints / "last.ckpt")["global_step"] == STEPS


def test_the_log_is_cut_back_to_a_checkpoints_resume_point(tmp_path):
    """What was logged after the journalled point (in the same file and in a file begun later) is
    removed; the resumed run's own file is kept; the journal's later points go, a last line cut short
    by a kill too."""
    from torch.utils.tensorboard import SummaryWriter

    from lightning_app.cli.continuation import JOURNAL, cut_back, journal_point

    first = SummaryWriter(tmp_path)
    for step in range(3):
        first.add_scalar("loss", float(step), step)
    first.flush()
    journal_point(tmp_path, ["mark-a"])
    first.add_scalar("loss", 30.0, 3)  # after the checkpoint: done again by the resumed run
    first.close()
    later = SummaryWriter(tmp_path, filename_suffix=".later")
    later.add_scalar("loss", 40.0, 4)
    later.close()
    journal_point(tmp_path, ["mark-b"])
    with open(tmp_path / JOURNAL, "a") as journal:
        journal.write('{"marks": ["mark-c"], "fi')  # a line cut short by a kill
    resumed = SummaryWriter(tmp_path, filename_suffix=".resumed")
    own = Path(resumed.file_writer.event_writer._file_name).name

    cut_back(tmp_path, "mark-a", own)
    resumed.add_scalar("loss", 3.0, 3)
    resumed.close()
    assert sorted(scalars(tmp_path, "loss")) == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)]
    assert [json.loads(line)["marks"] for line in (tmp_path / JOURNAL).read_text().splitlines()] == [["mark-a"]]
    cut_back(tmp_path, "mark-unknown", own)  # a point never reached: the files stay whole
    assert sorted(scalars(tmp_path, "loss")) == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)]
