"""The in-domain probe: held-out documents of the training corpus, their per-layer label-free signals
in a tiny fit, the seeded dropout views, the end-of-fit verdict, and bad input as one line."""

import json
from pathlib import Path

import pytest
import torch

from lightning_app.cli import main
from lightning_app.data.pairs import held_out, stable_hash
from lightning_app.data.views import Dropout, SentenceCrops, TokenCrops
from lightning_app.errors import ConfigError
from lightning_app.model.encoder import Encoder
from lightning_app.probes.callbacks import LayerProbe
from lightning_app.probes.corpus import ProbeCorpus, load_probe_corpus
from lightning_app.probes.embed import embed_layers, seeded_dropout
from lightning_app.probes.heldout import VIEW_TYPES, probe_views
from lightning_app.probes.interval import knn_cv_correct
from lightning_app.probes.verdict import SIGNALS
from tests.helpers import make_datamodule, scalars

ROOT = Path(__file__).resolve().parents[2]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def fit_args(folder: Path, model: str, source: str, *extra: str) -> list[str]:
    """A few steps of configs/crop.yaml with a tiny encoder on ``source`` (``body`` texts), no workers."""
    return ["fit", "--config", str(ROOT / "configs/crop.yaml"), "--probe.projector=false", "--probe.geometry_pairs=0",
            "--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
            "--trainer.callbacks=[]",
            f"--trainer.default_root_dir={folder}", f"--trainer.logger.init_args.save_dir={folder}",
            f"--model.model={model}", "--model.lr=1e-3", f"--data.source={source}", "--data.text_field=body",
            "--data.batch_size=8", "--data.max_length=64", "--data.num_workers=0", "--data.val_fraction=0.2", *extra]


@pytest.fixture(scope="module")
def labelled_corpus(tmp_path_factory, bbc_texts) -> str:
    """300 BBC articles as jsonl (``body``, ``topic``): the training corpus and its own labelled probe."""
    rows = [{"body": text, "topic": topic} for text, topic in bbc_texts[::7][:300]]
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "bbc.jsonl", rows)


@pytest.fixture(scope="module")
def indomain_run(tmp_path_factory, tiny_model, labelled_corpus):
    """The log folder and printed output of a 4-step fit probing its own labelled corpus and 24 held-out documents."""
    folder = tmp_path_factory.mktemp("indomain")
    probe = (f'--probe.corpora=[{{name: mine, source: "{labelled_corpus}", text_field: body, label_field: topic, '
             f'max_documents: 120}}]')
    return folder / "crop" / "version_0", fit_args(folder, tiny_model, labelled_corpus, probe,
                                                   "--probe.indomain_documents=24")


def test_every_view_signal_and_layer_is_logged_at_step_0_and_at_each_validation(indomain_run, labelled_corpus,
                                                                                  capsys):
    log_dir, args = indomain_run
    main(args)
    printed = capsys.readouterr().out
    for view in VIEW_TYPES:
        for signal in SIGNALS:
            for layer in ("00", "01", "02"):
                series = scalars(log_dir, f"probe/indomain/{view}/{signal}/layer_{layer}")
                assert [step for step, _ in series] == [0, 2, 4], (view, signal, layer)
        for step, value in scalars(log_dir, f"probe/indomain/{view}/retrieval_top1/layer_02"):
            assert 1 / 24 <= value <= 1
    assert "  mine: 10-fold kNN on the same 120 documents, step 0 -> step 4: " in printed
    assert f"  mine is your training corpus ({labelled_corpus}), labelled" in printed
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if "label-free signals of the last layer on 24 held-out" in line)
    assert [line.split(":")[0] for line in lines[header + 1:header + 4]] == [f"    {view}" for view in VIEW_TYPES]
    assert "  your corpus: judged with labels by mine above" in printed


def test_held_out_documents_are_never_training_documents(bbc_jsonl):
    dm = make_datamodule(bbc_jsonl, view=SentenceCrops(), text_field="body", val_fraction=0.1)
    texts = dm.held_out_texts(1000)
    training = [doc["text"] for doc in dm.train_pairs.documents]
    assert texts and all(held_out(text, 0.1) for text in texts) and len(set(texts)) == len(texts)
    assert not {stable_hash(text) for text in texts} & {stable_hash(text) for text in training}
    assert len(texts) + len(training) == 300 and dm.held_out_texts(5) == texts[:5]
    assert make_datamodule(bbc_jsonl, text_field="body", val_fraction=0).held_out_texts(1000) == []


def test_every_view_type_is_probed_whatever_the_run_trains_with():
    own = TokenCrops(chunk_tokens=100)
    views = probe_views(own, body=62)
    assert list(views) == ["sentence_crops", "token_crops", "dropout"] and views["token_crops"] is own
    defaults = probe_views(Dropout(whole_document=True), body=62)
    assert defaults["dropout"].whole_document and defaults["token_crops"].chunk_tokens == 124
    assert type(defaults["sentence_crops"]) is SentenceCrops


def test_dropout_views_differ_are_seeded_and_leave_the_generator_and_modes_as_they_were(tiny_model, tokenizer):
    encoder = Encoder(tiny_model).eval()
    ids = [tokenizer("a crop of one held-out document")["input_ids"]] * 2  # the two dropout views
    state = torch.get_rng_state()
    with seeded_dropout(encoder, 42):
        first = embed_layers(encoder, ids, tokenizer.pad_token_id)
    with seeded_dropout(encoder, 42):
        again = embed_layers(encoder, ids, tokenizer.pad_token_id)
    assert not torch.equal(first[-1, 0], first[-1, 1]) and torch.equal(first, again)
    assert torch.equal(torch.get_rng_state(), state) and not any(module.training for module in encoder.modules())


@pytest.mark.parametrize("documents", [1, -1])
def test_bad_indomain_documents_is_one_line(documents):
    with pytest.raises(ConfigError, match=r"^probe.indomain_documents: expected 0 \(off\) or at least 2 held-out"):
        LayerProbe(indomain_documents=documents)
    with pytest.raises(ConfigError, match="^probe.corpora: the name 'indomain' is the in-domain signals'"):
        LayerProbe([ProbeCorpus(name="indomain")])


def test_a_validation_slice_too_small_for_retrieval_stops_before_training(tmp_path, tiny_model, labelled_corpus,
                                                                          capsys):
    args = fit_args(tmp_path, tiny_model, labelled_corpus, "--probe.corpora=[]", "--data.val_fraction=0.002")
    with pytest.raises(SystemExit) as done:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and err[-1].startswith("error: probe.indomain_documents: the validation slice of '")
    assert "retrieval needs at least 2" in err[-1] and not (tmp_path / "crop").exists()


def test_a_hand_labelled_sample_gets_an_interval_and_one_class_is_one_line(tmp_path, bbc_texts):
    rows = [{"text": text, "label": topic} for text, topic in bbc_texts[::20][:100]]
    corpus = load_probe_corpus(ProbeCorpus(name="mine", source=write_jsonl(tmp_path / "mine.jsonl", rows)), 10, 0.1, 42)
    assert len(corpus.texts) == 100 and len(knn_cv_correct(torch.randn(100, 8), corpus.labels)) == 100
    one = write_jsonl(tmp_path / "one.jsonl", [{"text": f"document {i}", "label": "a"} for i in range(100)])
    with pytest.raises(ConfigError, match=r"^probe corpus 'mine': label_field 'label' of '.*' has 1 class\(es\) "
                                          r"among 100 labelled documents; expected at least 2$"):
        load_probe_corpus(ProbeCorpus(name="mine", source=one), 10, 0.1, 42)
