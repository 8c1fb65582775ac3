"""End to end through the ``lightning`` command: fit, logs, checkpoints, export and bad input."""

import re
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_app.cli import main
from lightning_app.model.load import load_encoder
from tests.helpers import ROOT, scalars


def fit_args(run_dir, *extra) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs/crop.yaml"), f"--trainer.default_root_dir={run_dir}",
            f"--trainer.logger.init_args.save_dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model):
    """A 30-step run of configs/crop.yaml on BBC with the tiny encoder, through the command's entry
    function in this process (the console script itself starts in test_cluster's DDP run)."""
    run_dir = tmp_path_factory.mktemp("run")
    main(fit_args(run_dir, f"--model.model={tiny_model}", "--model.lr=1e-3", "--trainer.max_steps=30",
                  "--data.batch_size=8", "--data.max_length=64", "--data.num_workers=0"))
    return run_dir / "crop" / "version_0"


@pytest.mark.slow
def test_fit_writes_checkpoints_and_tensorboard_logs(tiny_run):
    assert (tiny_run / "checkpoints" / "last.ckpt").exists()
    assert (tiny_run / "config.yaml").exists()
    for tag in ("train/loss", "train/acc", "train/embedding_std", "lr-Adam", "train/device/samples_per_sec",
                "train/device/items_per_sec"):
        assert scalars(tiny_run, tag), tag
    assert [step for step, _ in scalars(tiny_run, "train/loss")] == list(range(30))


@pytest.mark.slow
def test_loss_falls_over_a_short_run(tiny_run):
    val = [value for _, value in scalars(tiny_run, "val/loss")]
    train = [value for _, value in scalars(tiny_run, "train/loss")]
    assert len(val) == 3 and val[-1] < val[0]
    assert sum(train[-5:]) < sum(train[:5])


@pytest.mark.slow
def test_learning_rate_warms_up_then_decays(tiny_run):
    lr = [value for _, value in scalars(tiny_run, "lr-Adam")]
    peak = lr.index(max(lr))
    assert max(lr) == pytest.approx(1e-3, rel=0.05) and 1 <= peak <= 4
    assert all(a >= b for a, b in zip(lr[peak:], lr[peak + 1:])) and lr[-1] < 0.1 * max(lr)


@pytest.mark.slow
def test_probe_logs_every_layer_from_step_0_drift_the_figure_and_the_projector(tiny_run):
    events = EventAccumulator(str(tiny_run), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    steps = lambda tag: [e.step for e in events.Scalars(tag)]  # noqa: E731
    for layer in ("00", "01", "02"):  # the tiny encoder: embeddings + 2 layers
        assert steps(f"probe/bbcnews/knn_acc/layer_{layer}") == [0, 10, 20, 30]
        assert steps(f"drift/layer_{layer}") == list(range(31))
        assert events.Scalars(f"drift/layer_{layer}")[0].value == 0.0 < events.Scalars(f"drift/layer_{layer}")[-1].value
    assert "probe/bbcnews/knn_acc/layer_03" not in tags["scalars"]
    last = [(e.step, e.value) for e in events.Scalars("probe/bbcnews/knn_acc")]
    assert last == [(e.step, e.value) for e in events.Scalars("probe/bbcnews/knn_acc/layer_02")]
    assert all(0.0 <= value <= 1.0 for _, value in last)
    for tag in ("probe/bbcnews/alignment", "probe/bbcnews/uniformity"):
        assert steps(tag) == [0, 10, 20, 30], tag
    assert [image.step for image in events.Images("probe/bbcnews/knn_acc_by_layer")] == [0, 10, 20, 30]
    assert 'tensor_name: "probe/bbcnews:00030"' in (tiny_run / "projector_config.pbtxt").read_text()
    projected = next(tiny_run.glob("00030/*/tensors.tsv")).read_text().splitlines()
    labels = next(tiny_run.glob("00030/*/metadata.tsv")).read_text().splitlines()
    assert len(projected) == 500 and labels[0] == "label\ttext" and len(labels) == 501
    assert {row.split("\t")[0] for row in labels[1:]} == {"business", "entertainment", "politics", "sports", "tech"}


@pytest.mark.slow
def test_best_probe_checkpoint_has_a_flat_file_name(tiny_run):
    best = [p.name for p in (tiny_run / "checkpoints").rglob("best-*")]
    assert len(best) == 1 and re.fullmatch(r"best-step0000[123]0-knn_acc\d\.\d{3}\.ckpt", best[0]), best


def embeddings(encoder, tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return encoder(batch["input_ids"], batch["attention_mask"])


@pytest.mark.slow
def test_export_reproduces_the_module_embeddings(tiny_run, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    texts = ["Shares rose sharply after the results.", "The striker scored twice in the final."]
    trained, tokenizer = load_encoder(str(tiny_run / "checkpoints" / "last.ckpt"))
    expected = embeddings(trained, tokenizer, texts)
    exported = tiny_run / "export"
    main(["export", str(tiny_run / "checkpoints" / "last.ckpt"), str(tmp_path / "again")])
    for folder in (exported, tmp_path / "again"):
        torch.testing.assert_close(embeddings(load_encoder(str(folder))[0], tokenizer, texts), expected)
        hf = AutoModel.from_pretrained(folder)
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = hf(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1)
        torch.testing.assert_close((hidden * mask).sum(1) / mask.sum(1), expected, atol=1e-5, rtol=1e-4)
        sentence_model = SentenceTransformer(str(folder), device="cpu")
        torch.testing.assert_close(sentence_model.encode(texts, convert_to_tensor=True), expected, atol=1e-5, rtol=1e-4)


def bad_input_cases(tmp_path, tiny_model):
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "Too short."}\n' * 5)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    other = tmp_path / "other.jsonl"
    other.write_text('{"body": "x", "title": "y"}\n')
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text('{"text": "x", "category": "y"}\n')
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(f'{{"text": "document {i}", "topic": {i % 3}}}\n' for i in range(10)))
    probe = lambda path: [f'--probe.corpora=[{{"name": "mine", "source": "{path}", "label_field": "topic"}}]']  # noqa: E731
    return [
        (["--data.source", str(tmp_path / "missing.jsonl")], "data.source: file not found: '"),
        (["--data.source", str(tmp_path / "*.parquet")], "data.source: no file matches the glob '"),
        (["--data.source", str(other)], "text_field: 'text' is not a column of '"),
        (["--data.source", str(empty)], "is empty"),
        (["--data.source", str(short)], "yields a pair"),
        (["--model.frozen_layers", "9"], "model.frozen_layers: expected an integer in 0..2"),
        (["--model.temperature", "0"], "model.temperature: expected > 0, got 0.0"),
        (probe(unlabelled), "probe corpus 'mine': label_field: 'topic' is not a column of '"),
        (probe(labelled), "(10 sampled, test_fraction=0.1); expected at least k+1 = 11 in the train split"),
    ]


def test_bad_input_stops_with_one_clear_line_and_keeps_earlier_files(tmp_path, tiny_model, capsys):
    run_dir = tmp_path / "runs"
    earlier = run_dir / "crop" / "version_0" / "checkpoints" / "last.ckpt"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier checkpoint")
    for extra, message in bad_input_cases(tmp_path, tiny_model):
        with pytest.raises(SystemExit) as done:
            main(fit_args(run_dir, f"--model.model={tiny_model}", "--data.num_workers=0", *extra))
        err = capsys.readouterr().err.strip().splitlines()
        assert done.value.code == 2, extra
        assert err[-1].startswith("error: ") and message in err[-1], (extra, err[-3:])
    assert earlier.read_bytes() == b"an earlier checkpoint"


@pytest.mark.slow
def test_module_entry_point_shows_help():
    done = subprocess.run([sys.executable, "-m", "lightning_app", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "lightning fit --config configs/crop.yaml" in done.stdout
    assert "lightning mteb --help" in done.stdout


# (command and options, a config file's text or None, what the error line says)
CROP = str(ROOT / "configs/crop.yaml")
OLD_SPELLINGS = [
    (["embed", "--model=m", "--corpus=x.jsonl", "--output=out"], None, "--corpus is now --source"),
    (["embed", "--model=m", "--output=out"], "corpus: x.jsonl\n", "corpus is now source"),
    (["mteb", "--model=m", "--max_seq_length", "64"], None, "--max_seq_length is now --max_length"),
    (["mteb", "--model=m"], "max_seq_length: 64\n", "max_seq_length is now max_length"),
    (["reproduce", "--corpus", "x.jsonl"], None, "--corpus is now --source"),
    (["reproduce", "--mteb_max_seq_length=64"], None, "--mteb_max_seq_length is now --mteb.max_length"),
    (["reproduce", "--budget.probe_max_length=64"], None, "--budget.probe_max_length is now --probe.max_length"),
    (["reproduce", "--mteb_tasks=offline"], None, "--mteb_tasks is now --mteb.tasks"),
    (["reproduce"], "corpus: x.jsonl\n", "corpus is now source"),
    (["reproduce"], "budget:\n  probe_every: 5\n", "budget.probe_every is now probe.every"),
    (["reproduce"], "mteb_max_seq_length: 64\n", "mteb_max_seq_length is now mteb.max_length"),
    (["fit", "--config", CROP, "--mteb.max_seq_length=64"], None, "--mteb.max_seq_length is now --mteb.max_length"),
    (["fit", "--config", CROP], "mteb:\n  max_seq_length: 64\n", "mteb.max_seq_length is now mteb.max_length"),
]


@pytest.mark.parametrize(("args", "config", "message"), OLD_SPELLINGS)
def test_an_old_option_spelling_is_refused_naming_the_new_one(args, config, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if config is not None:
        (tmp_path / "old.yaml").write_text(config)
        args = [*args, "--config", "old.yaml"]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message} (see: lightning {args[0]} --help)"]
    assert [path.name for path in tmp_path.iterdir()] == (["old.yaml"] if config is not None else [])
