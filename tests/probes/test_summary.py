"""The end-of-fit probe summary, the before/after t-SNE image, and exporting the best probe checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_app.cli import main
from lightning_app.errors import ConfigError
from lightning_app.model.export import ExportEncoder
from lightning_app.model.load import encoder_from_checkpoint, load_encoder
from lightning_app.probes.summary import summarize, summary_lines
from lightning_app.probes.tags import change_tags

ROOT = Path(__file__).resolve().parents[2]


def test_summary_says_plainly_when_the_end_is_below_step_0():
    history = {"news": [(0, 0.90), (10, 0.93), (20, 0.88)], "bbc": [(0, 0.80), (10, 0.85), (20, 0.85)]}
    lines = summary_lines(summarize(history), 10, "the last weights (step 20)")
    assert lines[1] == "  news: step 0 0.9000 -> step 20 0.8800 (-0.0200); best 0.9300 at step 10"
    assert lines[2].startswith("  news: training made it worse: the end (0.8800) is below step 0 (0.9000)")
    assert lines[3] == "  bbc: step 0 0.8000 -> step 20 0.8500 (+0.0500); best 0.8500 at step 10"
    assert lines[4] == "  exported: the last weights (step 20)" and len(lines) == 5
    assert "not probed" in summary_lines(summarize({"x": [(10, 0.5)]}), 10, None)[1]


def test_export_encoder_rejects_an_unknown_choice():
    with pytest.raises(ConfigError, match="export.which: expected 'last' or 'best', got 'first'"):
        ExportEncoder(which="first")


@pytest.fixture(scope="module")
def best_run(tmp_path_factory, tiny_model):
    """10 steps of configs/crop.yaml with the tiny encoder, exporting the best probe checkpoint,
    with t-SNE maps; returns (log dir, the fit's arguments)."""
    folder = tmp_path_factory.mktemp("best")
    args = ["fit", "--config", str(ROOT / "configs/crop.yaml"), "--export.which=best", "--probe.tsne=true",
            "--probe.projector=false", "--probe.geometry_pairs=8", "--probe.corpora=[{max_documents: 150}]",
            "--trainer.max_steps=10", "--trainer.val_check_interval=5", f"--trainer.default_root_dir={folder}",
            f"--trainer.logger.init_args.save_dir={folder}", f"--model.model={tiny_model}", "--model.lr=1e-3",
            "--data.batch_size=8", "--data.max_length=64", "--data.num_workers=0"]
    return folder / "crop" / "version_0", args


def test_fit_prints_the_summary_exports_the_best_checkpoint_and_logs_tsne(best_run, capsys):
    log_dir, args = best_run
    main(args)
    printed = capsys.readouterr().out
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    knn = [(e.step, e.value) for e in events.Scalars("probe/bbcnews/knn_acc")]
    assert [step for step, _ in knn] == [0, 5, 10]
    best = max(knn, key=lambda p: (p[1], -p[0]))
    line = next(line for line in printed.splitlines() if line.startswith("  bbcnews: step 0"))
    assert line == (f"  bbcnews: step 0 {knn[0][1]:.4f} -> step 10 {knn[-1][1]:.4f} ({knn[-1][1] - knn[0][1]:+.4f}); "
                    f"best {best[1]:.4f} at step {best[0]}")
    assert ("training made it worse" in printed) == (knn[-1][1] < knn[0][1])
    checkpoint = next((log_dir / "checkpoints").glob("best-*.ckpt"))
    best_saved = max(knn[1:], key=lambda p: (p[1], -p[0]))  # step 0 is probed but never saved
    assert f"step{best_saved[0]:06d}" in checkpoint.name
    assert f"  exported: the best checkpoint by probe/bbcnews/knn_acc ({best_saved[1]:.4f}): {checkpoint}" in printed
    exported, _ = load_encoder(str(log_dir / "export"))
    saved, _ = encoder_from_checkpoint(checkpoint)
    for (name, value), (_, expected) in zip(exported.state_dict().items(), saved.state_dict().items()):
        torch.testing.assert_close(value, expected, msg=name)
    assert "probe/bbcnews/tsne" in events.Tags()["images"]
    # The printed interval, as shares at the final step: the change, its low and its high.
    interval = re.search(r"  bbcnews: 10-fold kNN on the same (\d+) documents, step 0 -> step 10: ([-+][\d.]+) points "
                         r"\(95% interval ([-+][\d.]+) to ([-+][\d.]+)\)", printed)
    assert interval and interval[1] == "150"
    for tag, shown in zip(change_tags("bbcnews"), interval.groups()[1:]):
        (event,) = events.Scalars(tag)
        assert event.step == 10 and f"{100 * event.value:+.1f}" == shown, tag
    change, low, high = (events.Scalars(tag)[0].value for tag in change_tags("bbcnews"))
    assert low <= high and -1 <= change <= 1 and change * 150 == pytest.approx(round(change * 150), abs=1e-3)
    image = events.Images("probe/bbcnews/tsne")[-1]
    assert image.step == 10 and image.width > 2 * image.height * 0.9  # two maps side by side


def test_best_needs_a_monitored_checkpoint(tmp_path, tiny_model, capsys):
    args = ["fit", "--config", str(ROOT / "configs/crop.yaml"), "--export.which=best", "--trainer.callbacks=[]",
            f"--model.model={tiny_model}", "--data.num_workers=0", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=1", f"--trainer.logger.init_args.save_dir={tmp_path}"]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: export.which: 'best' needs a ModelCheckpoint with a monitor "
        "(e.g. monitor: probe/bbcnews/knn_acc, mode: max)")
