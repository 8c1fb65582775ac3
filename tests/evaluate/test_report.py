"""Score tables, the mteb run into an output folder, hub tasks without network, and the command."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import copy  # noqa: E402
import json  # noqa: E402

import datasets  # noqa: E402
import huggingface_hub  # noqa: E402
import mteb  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from mteb.mocks.mock_tasks.classification import MockClassificationTask  # noqa: E402
from mteb.mocks.mock_tasks.clustering import MockClusteringTask  # noqa: E402
from mteb.mocks.mock_tasks.reranking import MockRerankingTask  # noqa: E402
from mteb.mocks.mock_tasks.retrieval import MockRetrievalTask  # noqa: E402
from mteb.mocks.mock_tasks.sts import MockSTSTask  # noqa: E402

from lightning_app.errors import ConfigError  # noqa: E402
from lightning_app.evaluate.command import mteb_command, parse_layer  # noqa: E402
from lightning_app.evaluate.mteb_encoder import MtebEncoder  # noqa: E402
from lightning_app.evaluate.report import (  # noqa: E402
    Run,
    evaluate_tasks,
    format_rows,
    score_rows,
    tables,
    task_info,
    to_markdown,
    to_text,
)
from lightning_app.evaluate.tasks import LeeDocumentSimilarity  # noqa: E402

INFO = {  # task -> (block, metric), deliberately not in block order
    "STS15": ("STS", "cosine_spearman"), "ArguAna": ("Retrieval", "ndcg_at_10"),
    "Arxiv": ("Clustering", "v_measure"), "Reddit": ("Clustering", "v_measure"),
    "STS16": ("STS", "cosine_spearman"), "SciDocsRR": ("Reranking", "map"),
    "Pair": ("PairClassification", "ap"),
}
MODEL = {"STS15": 0.80, "ArguAna": 0.40, "Arxiv": 0.30, "Reddit": 0.50, "STS16": 0.70,
         "SciDocsRR": 0.75, "Pair": 0.60}
BASELINE = {name: score - 0.1 for name, score in MODEL.items()}


def by_name(rows):
    return {(row.block, row.name): row.values for row in rows}


def test_block_means_are_the_mean_of_their_tasks_and_blocks_come_in_paper_order():
    rows = score_rows([MODEL], INFO)
    assert [row.block for row in rows if row.name == "mean"] == [
        "Clustering", "Reranking", "Retrieval", "STS", "PairClassification"]
    values = by_name(rows)
    assert values[("Clustering", "mean")] == [pytest.approx(0.40)]
    assert values[("STS", "mean")] == [pytest.approx(0.75)]
    assert values[("Retrieval", "mean")] == [pytest.approx(0.40)]
    assert values[("all", "mean of block means")] == [pytest.approx(np.mean([0.4, 0.75, 0.4, 0.75, 0.6]))]
    assert rows[0].name == "Arxiv" and rows[0].metric == "v_measure"


def test_missing_score_leaves_its_block_mean_empty_rather_than_partial():
    values = by_name(score_rows([{k: v for k, v in MODEL.items() if k != "STS16"}], INFO))
    assert values[("STS", "STS16")] == [None]
    assert values[("STS", "mean")] == [None] and values[("all", "mean of block means")] == [None]
    assert values[("Clustering", "mean")] == [pytest.approx(0.40)]


def test_side_by_side_table_with_signed_difference_column():
    runs = [Run("model", "m", "org/m", "abc", [MODEL]), Run("baseline", "b", "org/b", "def", [BASELINE])]
    (title, lines), = tables(runs, INFO)
    assert lines[0] == ["block", "task", "metric", "model", "baseline", "difference"]
    arxiv = next(line for line in lines if line[1] == "Arxiv")
    assert arxiv[3:] == ["30.00", "20.00", "+10.00"]
    assert lines[-1][3:] == ["58.00", "48.00", "+10.00"]
    markdown = to_markdown(lines)
    assert "| **all** | **mean of block means** |  | **58.00** | **48.00** | **+10.00** |" in markdown
    assert markdown.splitlines()[1] == "|:--|:--|:--|--:|--:|--:|"
    assert "mean of block means" in to_text(lines)


def test_layer_tables_have_one_column_per_layer_and_a_difference_table():
    layers = [{name: score + 0.01 * i for name, score in MODEL.items()} for i in range(3)]
    runs = [Run("model", "m", "org/m", "abc", layers), Run("baseline", "b", "org/b", "def", layers[::-1])]
    sections = tables(runs, INFO)
    assert [title for title, _ in sections] == [
        "model org/m by layer", "baseline org/b by layer", "model - baseline by layer"]
    assert sections[0][1][0][3:] == ["emb", "L1", "L2"]
    assert sections[2][1][-1][3:] == ["-2.00", "+0.00", "+2.00"]


def test_format_rows_marks_missing_scores():
    lines = format_rows(["model"], score_rows([{"Arxiv": 0.5}], {"Arxiv": INFO["Arxiv"], "Reddit": INFO["Reddit"]}))
    assert [line[3] for line in lines[1:]] == ["50.00", "-", "-", "-"]


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("all", "all"), ("0", 0), (" 3 ", 3), (2, 2)])
def test_parse_layer(value, expected):
    assert parse_layer(value) == expected


@pytest.mark.parametrize("value", ["last", "-1", "1.5", True])
def test_parse_layer_rejects_other_values(value):
    with pytest.raises(ConfigError, match="^layer: "):
        parse_layer(value)


def test_every_block_runs_through_mteb_into_the_table(bert_a, tmp_path):
    """mteb's in-memory mock tasks: retrieval and reranking send queries and documents separately."""
    tasks = [MockRetrievalTask(), MockClassificationTask(), MockRerankingTask(), MockSTSTask(),
             MockClusteringTask()]
    scores = evaluate_tasks(MtebEncoder.load(bert_a), tasks, tmp_path)
    info = task_info(tasks)
    assert [block for block, _ in info.values()] == [
        "Retrieval", "Classification", "Reranking", "STS", "Clustering"]
    assert all(0 <= score <= 1 for name, score in scores.items() if info[name][0] != "STS")
    rows = score_rows([scores], info)
    means = {row.block: row.values[0] for row in rows if row.name == "mean"}
    assert list(means) == ["Clustering", "Reranking", "Retrieval", "STS", "Classification"]
    assert means == {block: pytest.approx(scores[name]) for name, (block, _) in info.items()}
    assert rows[-1].values[0] == pytest.approx(np.mean(list(scores.values())))


def missing_hub_task():
    """STS16 pointed at a dataset that exists nowhere, so no cache on any machine can have it."""
    task = copy.deepcopy(mteb.get_task("STS16"))
    task.metadata = task.metadata.model_copy(update={"dataset": {
        "path": "lightning-app-tests/no-such-dataset", "revision": "0" * 40}})
    return task


def test_hub_task_without_network_fails_in_one_line_and_keeps_output(bert_a, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    (tmp_path / "notes.txt").write_text("keep me")
    encoder = MtebEncoder.load(bert_a)
    evaluate_tasks(encoder, [LeeDocumentSimilarity()], tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError) as error:
        evaluate_tasks(encoder, [LeeDocumentSimilarity(), missing_hub_task()], tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert "STS16" in message and "lightning-app-tests/no-such-dataset" in message and "HF_HOME" in message
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert set(before) <= {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}


def test_command_writes_side_by_side_report_and_reuses_results(bert_a, bert_b, tmp_path, capsys):
    mteb_command(model=bert_a, tasks="LeeDocumentSimilarity", output=str(tmp_path), max_length=64,
                 precision="32", baseline=bert_b)
    report = (tmp_path / "report.md").read_text()
    assert "| model | baseline | difference |" in report and "LeeDocumentSimilarity" in report
    assert "device cpu, precision 32-true (32)" in report
    assert "mean of block means" in capsys.readouterr().out
    results = sorted(tmp_path.glob("results/*/*/experiments/max_length_64/LeeDocumentSimilarity.json"))
    assert len(results) == 2  # one per model revision
    scores = [json.loads(p.read_text())["scores"]["test"][0]["main_score"] for p in results]
    for score in scores:
        assert f"{100 * score:.2f}" in report
    stamps = [p.stat().st_mtime_ns for p in results]
    mteb_command(model=bert_a, tasks="LeeDocumentSimilarity", output=str(tmp_path), max_length=64, precision="32")
    assert [p.stat().st_mtime_ns for p in results] == stamps  # read back, not re-run


def test_command_layer_all_writes_a_task_by_layer_table(bert_a, tmp_path):
    mteb_command(model=bert_a, tasks="LeeDocumentSimilarity", output=str(tmp_path), layer="all", precision="32")
    report = (tmp_path / "report.md").read_text()
    assert "by layer" in report and "| emb | L1 | L2 |" in report
    layer_folders = {p.parent.name for p in tmp_path.glob("results/*/*/experiments/*/LeeDocumentSimilarity.json")}
    assert layer_folders == {"layer_0", "layer_1"}  # the last layer is the default folder
    assert list(tmp_path.glob("results/*/*/LeeDocumentSimilarity.json"))
