"""The end-of-fit verdict: a labelled probe's paired interval, whether it is the training corpus, and
what the label-free signals of the training corpus can and cannot say."""

import torch

from lightning_app.probes.summary import summarize, summary_lines
from lightning_app.probes.verdict import (
    STUDY,
    Rule,
    Study,
    domain_line,
    interval_line,
    judgement_lines,
    same_source,
    signal_lines,
)

SERIES = {f"probe/indomain/sentence_crops/retrieval_top1/layer_0{i}": {0: 0.5 + i / 10, 30: 0.55 + i / 10}
          for i in range(3)}
SERIES["probe/indomain/sentence_crops/effective_rank/layer_02"] = {0: 80.0, 30: 78.5}
SERIES["probe/indomain/dropout/retrieval_top1/layer_02"] = {30: 0.99}  # step 0 not probed


# The signal study as the summary quotes it (tests/test_signal_agreement.py holds STUDY to the published grids).
STUDIED = (f"signal study, docs/results.md: {STUDY.runs} runs on 3 labelled corpora, {STUDY.gains} gains and "
           f"{STUDY.losses} losses beyond the labels' uncertainty; closest: effective rank of token_crops pairs, "
           f"Spearman {STUDY.closest_rho:+.2f} with the labelled change")


def correctness(right: int, gained: int, lost: int, total: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-document kNN outcomes before and after: ``right`` right at both, ``gained``, ``lost``, the rest wrong."""
    before = torch.zeros(total, dtype=torch.bool)
    after = torch.zeros(total, dtype=torch.bool)
    before[:right] = after[:right] = True
    after[right:right + gained] = True
    before[right + gained:right + gained + lost] = True
    return before, after


def test_a_labelled_probe_of_the_training_corpus_gets_a_paired_interval_and_the_verdict():
    before, after = correctness(right=80, gained=10, lost=0)
    line, changed = interval_line("mine", before, after, 10, 30)
    assert changed == 0.1
    details = {"mine": [line, domain_line("mine", "data/mine.jsonl", "topic", "data/mine.jsonl")]}
    trailer = [*signal_lines(SERIES, ["sentence_crops", "dropout"], 120, "data/mine.jsonl"),
               *judgement_lines("mine", ("mine", changed))]
    assert summary_lines(summarize({"mine": [(0, 0.80), (30, 0.90)]}), 10, None, details, trailer) == [
        "probe summary: last-layer 10-NN accuracy at step 0, at the end, and at the best step",
        "  mine: step 0 0.8000 -> step 30 0.9000 (+0.1000); best 0.9000 at step 30",
        "  mine: 10-fold kNN on the same 100 documents, step 0 -> step 30: +10.0 points (95% interval +3.4 to +16.2): "
        "better",
        "  mine is your training corpus (data/mine.jsonl), labelled: it judges the model on your own text (its "
        "documents may include training documents, whose labels training never saw).",
        "  your corpus (data/mine.jsonl): label-free signals of the last layer on 120 held-out documents, "
        "step 0 -> step 30:",
        "    sentence_crops: retrieval top-1 0.700 -> 0.750 (+0.050), effective rank 80.0 -> 78.5 (-1.5)",
        "    dropout: retrieval top-1 0.990 (step 0 not probed)",
        "  your corpus: judged with labels by mine above; no label-free signal met the criterion for a verdict of "
        f"its own ({STUDIED}).",
        "  your corpus: at least 961 labelled documents of it, listed under probe.corpora, would give a 95% interval "
        "of +/- 2 points (10.0% of documents changed outcome on mine; by subsampling two labelled corpora, that "
        "width took 1.3-2.2 times this count).",
    ]


def test_an_interval_that_covers_zero_is_no_detectable_change():
    before, after = correctness(right=80, gained=3, lost=2)
    line, changed = interval_line("mine", before, after, 10, 30)
    assert line.endswith(": +1.0 points (95% interval -4.1 to +6.1): no detectable change") and changed == 0.05
    before, after = correctness(right=70, gained=0, lost=15)
    assert interval_line("mine", before, after, 5, 30)[0].endswith("(95% interval -22.1 to -7.3): worse")


def test_an_out_of_domain_probe_says_so_and_the_training_corpus_gets_no_verdict():
    assert domain_line("bbcnews", "packaged:bbcnews", "label", "papers/*.jsonl") == (
        "  BBC News is not your corpus: it measures how the model changed on news topics, not on papers/*.jsonl.")
    assert domain_line("tickets", "tickets.jsonl", "team", "papers/*.jsonl") == (
        "  tickets (tickets.jsonl) is not data.source: it measures how the model changed on its labels 'team', "
        "which speaks for papers/*.jsonl only if its documents are a sample of it.")
    assert judgement_lines(None, ("bbcnews", 0.05)) == [
        f"  your corpus: no verdict: no label-free signal met the criterion for one without labels ({STUDIED}).",
        "  your corpus: at least 481 labelled documents of it, listed under probe.corpora, would give a 95% interval "
        "of +/- 2 points (5.0% of documents changed outcome on bbcnews; by subsampling two labelled corpora, that "
        "width took 1.3-2.2 times this count).",
    ]


def test_without_a_labelled_probe_the_label_count_rests_on_a_stated_assumption():
    trailer = [*signal_lines({}, [], 0, "papers/*.jsonl"), *judgement_lines(None, None)]
    lines = summary_lines(summarize({}), 10, "the last weights (step 30)", {}, trailer)
    assert lines[:2] == ["probe summary: no labelled probe corpus (probe.corpora is empty)",
                         "  your corpus (papers/*.jsonl): no label-free signals (probe.indomain_documents is 0)"]
    assert lines[3] == ("  your corpus: at least 481 labelled documents of it, listed under probe.corpora, would give a "
                        "95% interval of +/- 2 points (assuming 5% of documents change outcome; by subsampling two "
                        "labelled corpora, that width took 1.3-2.2 times this count).")
    assert lines[2].startswith("  your corpus: no verdict") and lines[4:] == ["  exported: the last weights (step 30)"]


def test_sources_compare_as_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.jsonl").write_text("")
    assert same_source("mine.jsonl", str(tmp_path / "mine.jsonl"))
    assert same_source("packaged:bbcnews", "packaged:bbcnews")
    assert not same_source("packaged:bbcnews", "packaged:newsarticles")


def test_a_supported_signal_gives_the_verdict_by_its_rule_and_the_others_stay_silent():
    rule = Rule("sentence_crops/retrieval_top1", threshold=0.03, direction=1, agreed=27, counted=29)
    worse = Rule("sentence_crops/effective_rank", threshold=-1.0, direction=-1, agreed=20, counted=21)
    unlogged = Rule("token_crops/lexical_overlap", threshold=0.0, direction=1, agreed=25, counted=26)
    study = Study(corpora=("a", "b", "c"), runs=60, gains=20, losses=9, supported=(rule, worse, unlogged),
                  closest=rule.signal, closest_rho=0.8)
    lines = judgement_lines(None, None, SERIES, study=study)
    assert lines[:2] == [
        "  your corpus: retrieval top-1 of sentence_crops pairs changed +0.050: better, by the signal study's rule "
        "(gain when the change is > +0.03; right in 27 of 29 runs on 3 labelled corpora, each corpus left out of "
        "the fit in turn).",
        "  your corpus: effective rank of sentence_crops pairs changed -1.500: better, by the signal study's rule "
        "(gain when the change is < -1; right in 20 of 21 runs on 3 labelled corpora, each corpus left out of the "
        "fit in turn).",
    ]
    assert lines[2].startswith("  your corpus: at least 481 labelled documents") and len(lines) == 3
    higher = Study(corpora=("a", "b", "c"), runs=60, gains=20, losses=9, supported=(Rule(rule.signal, 0.06, 1, 27, 29),),
                   closest=rule.signal, closest_rho=0.8)
    assert ": not better, by the signal study's rule (gain when the change is > +0.06;" in judgement_lines(
        "mine", None, SERIES, study=higher)[0]
    only_dropout = {"probe/indomain/dropout/retrieval_top1/layer_02": {30: 0.99}}  # no step 0: no verdict
    assert judgement_lines(None, None, only_dropout, study=higher)[0].startswith("  your corpus: no verdict: ")
