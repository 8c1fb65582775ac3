import json
import statistics
from collections import Counter

import pytest

from lightning_app.data.sources import open_corpus
from lightning_app.errors import ConfigError

ROWS = [{"body": f"Document number {i}.", "topic": "a" if i % 2 else "b"} for i in range(6)]


def write(folder, fmt: str) -> str:
    import pandas as pd

    path = folder / f"corpus.{fmt}"
    frame = pd.DataFrame(ROWS)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "json":
        path.write_text(json.dumps(ROWS))
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path)
    return str(path)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_local_formats_stream_text_and_label(tmp_path, fmt):
    stream = open_corpus(write(tmp_path, fmt), text_field="body", label_field="topic")
    assert list(stream) == [{"text": r["body"], "label": r["topic"]} for r in ROWS]


def test_txt_files_folder_and_glob(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text(f"Line one of {i}.\nLine two of {i}.")
    by_document = list(open_corpus(str(tmp_path / "*.txt")))
    assert [d["text"] for d in by_document] == [f"Line one of {i}.\nLine two of {i}." for i in range(3)]
    assert len(list(open_corpus(str(tmp_path), sample_by="line"))) == 6


def test_packaged_corpus_has_all_articles_and_topics():
    docs = list(open_corpus("packaged:bbcnews", label_field="label"))
    assert len(docs) == 2225
    assert {d["label"] for d in docs} == {"business", "entertainment", "politics", "sports", "tech"}


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"data.source: file not found: '.*nope.jsonl'"):
        open_corpus(str(tmp_path / "nope.jsonl"))


def test_glob_that_matches_nothing(tmp_path):
    with pytest.raises(ConfigError, match=r"no file matches the glob '.*\*.parquet'"):
        open_corpus(str(tmp_path / "*.parquet"))


def test_missing_text_field_lists_the_columns(tmp_path):
    with pytest.raises(ConfigError, match=r"text_field: 'text' is not a column .* columns are \['body', 'topic'\]"):
        open_corpus(write(tmp_path, "jsonl"))


def test_missing_label_field(tmp_path):
    with pytest.raises(ConfigError, match=r"label_field: 'label' is not a column"):
        open_corpus(write(tmp_path, "jsonl"), text_field="body", label_field="label")


def test_empty_corpus(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(ConfigError, match=r"corpus '.*empty.jsonl' is empty"):
        open_corpus(str(path))


def test_unknown_file_type(tmp_path):
    path = tmp_path / "corpus.xml"
    path.write_text("<a/>")
    with pytest.raises(ConfigError, match=r"files ending in \['.xml'\]"):
        open_corpus(str(path))


def test_packaged_news_articles_are_labelled_by_outlet():
    documents = list(open_corpus("packaged:newsarticles", label_field="label"))
    outlets = {doc["label"] for doc in documents}
    assert len(documents) == 3824
    assert len(outlets) == 9 and {"aljazeera.com", "bbc.co.uk", "tass.com"} <= outlets
    assert not any(doc["label"].startswith("www.") for doc in documents)
    assert sum(not doc["text"].strip() for doc in documents) == 1  # one article of the archive is empty


def test_packaged_house_of_commons_speeches_are_labelled_by_party():
    documents = list(open_corpus("packaged:houseofcommons", label_field="label"))
    parties = Counter(doc["label"] for doc in documents)
    assert len(documents) == 920  # of 1,000: the chair's and 7 small parties' 80 speeches left out
    assert parties == {"Con": 442, "Lab": 398, "LibDem": 58, "SNP": 22}
    assert statistics.median(len(doc["text"]) for doc in documents) == 464
    assert all(doc["text"].strip() for doc in documents)


def test_packaged_model_is_not_a_corpus():
    with pytest.raises(ConfigError, match="not a corpus of documents"):
        open_corpus("packaged:minilm")
