"""Bad input to every command: one ``error:`` line on stderr, exit status 2, before any training
step, and a run folder that was there before is left byte for byte as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_app.cli import main
from lightning_app.model.load import read_checkpoint
from tests.helpers import ROOT, Launched, save_tiny_model



@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer, tiny_model) -> dict[str, str]:
    """Models, corpora and checkpoints, good and bad, shared by the cases."""
    folder = tmp_path_factory.mktemp("inputs")
    paths = {"bert": tiny_model, "folder": str(folder)}
    for kind in ("roberta", "mpnet"):  # positions numbered from padding_idx + 1 = 2: 130 - 2 = 128 tokens
        paths[kind] = save_tiny_model(folder / kind, tokenizer, kind=kind, positions=130)
    (folder / "not-a-model").mkdir()
    (folder / "not-a-model" / "notes.txt").write_text("no config.json here")
    files = {"short.jsonl": '{"text": "Too short."}\n' * 5, "empty.jsonl": "",
             "other.jsonl": '{"body": "x", "title": "y"}\n', "unlabelled.jsonl": '{"text": "x", "category": "y"}\n',
             "broken.jsonl": '{"text": "A first record."}\n{"text": "A second one."}\n{"text": "cut short\n',
             "labelled.jsonl": "".join(f'{{"text": "document {i}", "topic": {i % 3}}}\n' for i in range(10))}
    for name, text in files.items():
        (folder / name).write_text(text)
        paths[name] = str(folder / name)
    torch.save({"state_dict": {"w": torch.ones(1000)}, "global_step": 3}, folder / "truncated.ckpt")
    (folder / "truncated.ckpt").write_bytes((folder / "truncated.ckpt").read_bytes()[:2000])
    torch.save({"state_dict": {"w": torch.ones(3)}, "global_step": 3}, folder / "foreign.ckpt")
    paths.update({name: str(folder / name) for name in ("truncated.ckpt", "foreign.ckpt")})
    return paths


def probe(corpus: str, *more: str) -> list[str]:
    return [f'--probe.corpora=[{{"name": "mine", "source": "{corpus}", "label_field": "topic"}}]', *more]


# (command, arguments given the inputs and the run folder, the message the error line holds)
CASES = {
    # fit: the corpus
    "fit-missing-source": ("fit", lambda p, r: ["--data.source", f"{p['folder']}/missing.jsonl"], "data.source: file not found: '"),
    "fit-glob": ("fit", lambda p, r: ["--data.source", f"{p['folder']}/*.parquet"], "data.source: no file matches the glob '"),
    "fit-text-field": ("fit", lambda p, r: ["--data.source", p["other.jsonl"]], "text_field: 'text' is not a column of '"),
    "fit-empty": ("fit", lambda p, r: ["--data.source", p["empty.jsonl"]], "is empty"),
    "fit-malformed-early": ("fit", lambda p, r: ["--data.source", p["broken.jsonl"]],
                            "data.source: cannot read '{broken.jsonl}': JSON parse error"),
    "fit-no-pairs": ("fit", lambda p, r: ["--data.source", p["short.jsonl"]], "yields a pair"),
    # fit: the model
    "fit-not-a-model": ("fit", lambda p, r: ["--model.model", f"{p['folder']}/not-a-model"],
                        "model.model: '{folder}/not-a-model' is not a model folder (no config.json)"),
    "fit-gradient-checkpointing": ("fit", lambda p, r: ["--model.gradient_checkpointing", "maybe"],
                                   "model.gradient_checkpointing: Expected a <class 'bool'>. Got value: maybe"),
    "fit-missing-model": ("fit", lambda p, r: ["--model.model", f"{p['folder']}/nowhere"], "model.model: cannot load '"),
    "fit-frozen-layers": ("fit", lambda p, r: ["--model.frozen_layers", "9"], "model.frozen_layers: expected an integer in 0..2"),
    "fit-temperature": ("fit", lambda p, r: ["--model.temperature", "0"], "model.temperature: expected > 0, got 0.0"),
    "fit-chunk": ("fit", lambda p, r: ["--model.cache_chunk_size", "0"], "model.cache_chunk_size: expected >= 1"),
    # fit: lengths against the position table (BERT: 520; RoBERTa and MPNet: 130 - (padding_idx + 1))
    "fit-max-length": ("fit", lambda p, r: ["--data.max_length", "2000", "--data.view", "lightning_app.data.views.TokenCrops",
                                            "--data.view.ratio_min", "0.9", "--data.view.ratio_max", "1.0"],
                       "data.max_length: expected at most 520 tokens (the position limit of '{bert}'), got 2000"),
    "fit-roberta-offset": ("fit", lambda p, r: ["--model.model", p["roberta"], "--data.max_length", "129"],
                           "data.max_length: expected at most 128 tokens (the position limit of '{roberta}'), got 129"),
    "fit-mpnet-offset": ("fit", lambda p, r: ["--model.model", p["mpnet"], "--data.max_length", "129"],
                         "data.max_length: expected at most 128 tokens"),
    "fit-probe-length": ("fit", lambda p, r: probe(p["labelled.jsonl"], "--probe.max_length=600"),
                         "probe.max_length: expected at most 520 tokens"),
    "fit-roberta-probe-length": ("fit", lambda p, r: ["--model.model", p["roberta"], "--data.max_length", "64",
                                                      *probe(p["labelled.jsonl"], "--probe.max_length=129")],
                                 "probe.max_length: expected at most 128 tokens"),
    "fit-mteb-length": ("fit", lambda p, r: ["--mteb.tasks=LeeDocumentSimilarity", "--mteb.max_length=600"],
                        "mteb.max_length: expected at most 520 tokens"),
    # fit: constructor checks of views, callbacks and the loss, and parse errors
    "fit-view-chars": ("fit", lambda p, r: ["--data.view.min_chars", "300", "--data.view.max_chars", "100"],
                       "data.view (SentenceCrops): min_chars..max_chars: expected 0 <= min_chars <= max_chars, got 300..100"),
    "fit-view-ratio": ("fit", lambda p, r: ["--data.view", "lightning_app.data.views.TokenCrops", "--data.view.ratio_min", "0.9",
                                            "--data.view.ratio_max", "0.5"], "data.view (TokenCrops): ratio_min..ratio_max: expected"),
    "fit-view-chunk": ("fit", lambda p, r: ["--data.view", "lightning_app.data.views.TokenCrops", "--data.view.chunk_tokens", "0"],
                       "data.view (TokenCrops): chunk_tokens: expected >= 1, got 0"),
    "fit-view-span": ("fit", lambda p, r: ["--data.view", "lightning_app.data.views.TokenCrops"],
                      "data.view.init_args.chunk_tokens: expected chunk_tokens <= 252 at data.max_length 128, "
                      "or data.max_length >= 130 (the longest TokenCrops span, ratio_max 0.5 x chunk_tokens 256 = 128 tokens"),
    "fit-callback": ("fit", lambda p, r: ["--mteb.every_n_steps=0"], "mteb.every_n_steps: expected >= 1, got 0"),
    "fit-probe-corpus": ("fit", lambda p, r: probe(p["unlabelled.jsonl"]), "probe corpus 'mine': label_field: 'topic' is not a column of '"),
    "fit-probe-small": ("fit", lambda p, r: probe(p["labelled.jsonl"]), "expected at least k+1 = 11 in the train split"),
    "fit-batch-1": ("fit", lambda p, r: ["--data.batch_size", "1"],
                    "data.batch_size: expected a contrastive batch of at least 2 pairs (the other pairs are each pair's "
                    "negatives), got 1 pair(s) x 1 device(s)"),
    "fit-batch-0": ("fit", lambda p, r: ["--data.batch_size", "0"], "data.batch_size: expected >= 1, got 0"),
    "fit-batch-type": ("fit", lambda p, r: ["--data.batch_size", "many"], "data.batch_size: Expected a <class 'int'>. Got value: many"),
    "fit-unknown-option": ("fit", lambda p, r: ["--data.batchsize", "8"], "unrecognized arguments: --data.batchsize 8"),
    "fit-truncated-ckpt": ("fit", lambda p, r: ["--ckpt_path", p["truncated.ckpt"]],
                           "ckpt_path: checkpoint '{truncated.ckpt}' cannot be read"),
    "fit-missing-ckpt": ("fit", lambda p, r: ["--ckpt_path", f"{p['folder']}/none.ckpt"], "ckpt_path: checkpoint not found: '"),
    # mteb
    "mteb-not-a-model": ("mteb", lambda p, r: ["--model", f"{p['folder']}/not-a-model"], "model: '{folder}/not-a-model' is not a model folder"),
    "mteb-missing-ckpt": ("mteb", lambda p, r: ["--model", f"{p['folder']}/none.ckpt"], "model: checkpoint not found: '"),
    "mteb-baseline": ("mteb", lambda p, r: ["--model", p["bert"], "--baseline", f"{p['folder']}/not-a-model"],
                      "baseline: '{folder}/not-a-model' is not a model folder"),
    "mteb-roberta-length": ("mteb", lambda p, r: ["--model", p["roberta"], "--max_length", "129"],
                            "max_length: expected an integer in 1..128"),
    "mteb-layer": ("mteb", lambda p, r: ["--model", p["bert"], "--layer", "7"], "layer: expected an integer in 0..2"),
    "mteb-tasks": ("mteb", lambda p, r: ["--model", p["bert"], "--tasks", "nonsense-set"], "nonsense"),
    "mteb-output-file": ("mteb", lambda p, r: ["--model", p["bert"], "--output", f"{r}/crop/version_0/config.yaml"],
                         "output: expected a folder, but"),
    "mteb-batch-type": ("mteb", lambda p, r: ["--model", p["bert"], "--batch_size", "many"], "batch_size: Expected a <class 'int'>"),
    # export
    "export-missing": ("export", lambda p, r: [f"{p['folder']}/none.ckpt", f"{r}/crop/version_0/export"], "checkpoint not found: '"),
    "export-truncated": ("export", lambda p, r: [p["truncated.ckpt"], f"{r}/crop/version_0/export"], "cannot be read"),
    "export-foreign": ("export", lambda p, r: [p["foreign.ckpt"], f"{r}/crop/version_0/export"],
                       "was not written by lightning_app's ContrastiveModule"),
    "export-unknown-option": ("export", lambda p, r: [p["foreign.ckpt"], f"{r}/x", "--max_tokens", "3"], "unrecognized arguments"),
    # reproduce
    "reproduce-settings": ("reproduce", lambda p, r: ["--settings=[crops, cropz]"], "settings: expected some of"),
    "reproduce-seeds": ("reproduce", lambda p, r: ["--seeds=[1, 1]"], "seeds: expected distinct"),
    "reproduce-not-a-model": ("reproduce", lambda p, r: [f"--model={p['folder']}/not-a-model"], "model: '{folder}/not-a-model' is not a model"),
    "reproduce-length": ("reproduce", lambda p, r: ["--budget.max_length=600"], "budget.max_length: expected at most 520 tokens"),
    "reproduce-roberta-length": ("reproduce", lambda p, r: [f"--model={p['roberta']}", "--budget.max_length=64",
                                                            "--probe.max_length=129"],
                                 "probe.max_length: expected at most 128 tokens"),
    "reproduce-token-span": ("reproduce", lambda p, r: ["--budget.max_length=64"],
                             "data.view.init_args.chunk_tokens ({root}/configs/token_crop.yaml): expected chunk_tokens <= 124 "
                             "at budget.max_length 64, or budget.max_length >= 128"),
    "reproduce-mteb-length": ("reproduce", lambda p, r: ["--mteb.max_length=521"], "mteb.max_length: expected at most 520"),
    "reproduce-source": ("reproduce", lambda p, r: [f"--source={p['folder']}/none.jsonl"], "data.source: file not found: '"),
    "reproduce-steps": ("reproduce", lambda p, r: ["--budget.steps=0"], "budget.steps: expected >= 1, 'epoch' or null (the recipe's), got 0"),
    "reproduce-val-fraction": ("reproduce", lambda p, r: ["--budget.val_fraction=1"], "budget.val_fraction: expected 0 <= val_fraction < 1, got 1"),
    "reproduce-output-file": ("reproduce", lambda p, r: [f"--output={r}/crop/version_0/config.yaml"], "output: expected a folder, but"),
}


def command_line(command: str, extra: list[str], inputs: dict[str, str], runs: Path) -> list[str]:
    """The case's command over the tiny BERT, writing (if it wrote anything) into ``runs``."""
    if command == "fit":
        return ["fit", "--config", str(ROOT / "configs/crop.yaml"), f"--trainer.default_root_dir={runs}",
                f"--trainer.logger.init_args.save_dir={runs}", "--trainer.logger.init_args.version=0",
                f"--model.model={inputs['bert']}", "--data.num_workers=0", "--trainer.max_steps=4", *extra]
    if command == "mteb":
        return ["mteb", "--tasks=LeeDocumentSimilarity", f"--output={runs}", *extra]
    if command == "reproduce":
        return ["reproduce", f"--model={inputs['bert']}", f"--output={runs}", "--budget.steps=2", *extra]
    return [command, *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_the_run_folder_is_untouched(case, inputs, tmp_path, capsys):
    command, arguments, message = CASES[case]
    runs = tmp_path / "runs"  # an earlier run, as fit leaves it
    version = runs / "crop" / "version_0"
    (version / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {"encoder.w": torch.arange(4.0)}, "global_step": 10}, version / "checkpoints" / "step000010.ckpt")
    (version / "checkpoints" / "last.ckpt").symlink_to("step000010.ckpt")
    (version / "config.yaml").write_text("seed_everything: 42\n")
    (version / "events.out.tfevents.1.host").write_bytes(b"\x00earlier events")
    (version / "export").mkdir()
    (version / "export" / "model.safetensors").write_bytes(b"earlier weights")
    before = snapshot(runs)

    with pytest.raises(SystemExit) as done:
        main(command_line(command, arguments(inputs, runs), inputs, runs))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error:")]
    assert done.value.code == 2, err[-5:]
    assert len(errors) == 1 and err[-1] == errors[0], err[-5:]
    for name, value in {**inputs, "root": str(ROOT)}.items():
        message = message.replace("{" + name + "}", value)
    assert message in errors[0], errors[0]
    assert snapshot(runs) == before
    assert read_checkpoint(version / "checkpoints" / "last.ckpt")["global_step"] == 10


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_malformed_record_deep_in_a_large_corpus_stops_the_run_naming_file_and_line(tmp_path, tiny_model, bbc_texts):
    """A broken JSON line past the reader's first 10 MB blocks: the run trains until the stream
    reaches it, then stops with one line naming the file and line; its checkpoints stay whole."""
    corpus = tmp_path / "large.jsonl"
    good = [json.dumps({"text": text}) for text, _ in bbc_texts[:120]]
    # 30 MB of documents without a pair (no sentence of 100-250 characters): read, then skipped.
    filler = [json.dumps({"text": f"Note {i}. " + "A short line. " * 70}) for i in range(30_000)]
    lines = [*good, *filler, '{"text": "a record cut short', *good[:5]]
    corpus.write_text("\n".join(lines) + "\n")
    assert corpus.stat().st_size > 25 << 20
    run_dir = tmp_path / "runs"
    # `python -m lightning_app` as a process of its own (forked from the fork server: tests.helpers.Launched)
    done = Launched(command_line("fit", [
        f"--data.source={corpus}", "--data.num_workers=1", "--data.batch_size=4", "--data.shuffle_buffer=50",
        "--data.val_documents=8", "--data.max_length=48", "--trainer.max_steps=200",
        "--trainer.enable_progress_bar=false"], {"bert": tiny_model}, run_dir))
    code, stderr = done.finish(timeout=500), done.output()[1]
    err = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error:")]
    assert code == 2, stderr[-3000:]
    assert len(errors) == 1 and err[-1] == errors[0], err[-5:]
    assert errors[0].startswith(f"error: data.source: a malformed record in '{corpus}' line {len(good) + len(filler) + 1} (")
    assert "dataloader worker 0" in errors[0] and "resume from the last checkpoint" in errors[0]
    checkpoints = run_dir / "crop" / "version_0" / "checkpoints"
    reached = read_checkpoint(checkpoints / "last.ckpt")["global_step"]
    assert reached >= 10 and reached % 10 == 0  # the periodic checkpoints before the record, whole
    print(f"stopped by the malformed record; last.ckpt at step {reached}")
