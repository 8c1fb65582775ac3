import json
from collections import Counter

import pytest

from lightning_app.errors import ConfigError
from lightning_app.probes.corpus import ProbeCorpus, load_probe_corpus, reservoir_sample


def test_reservoir_sample_is_seeded_uniform_and_in_stream_order():
    first = reservoir_sample(iter(range(1000)), 50, seed=1)
    assert first == reservoir_sample(iter(range(1000)), 50, seed=1) != reservoir_sample(iter(range(1000)), 50, seed=2)
    assert first == sorted(first) and len(set(first)) == 50
    assert reservoir_sample(iter(range(10)), None, seed=1) == list(range(10))
    assert reservoir_sample(iter(range(10)), 20, seed=1) == list(range(10))
    # Every item is kept with probability 50/1000: the late half of a sorted stream gets about half.
    late = sum(sum(x >= 500 for x in reservoir_sample(iter(range(1000)), 50, seed=s)) for s in range(200))
    assert late / (200 * 50) == pytest.approx(0.5, abs=0.03)


def test_a_sample_of_a_topic_sorted_corpus_covers_every_topic(bbc_jsonl):
    spec = ProbeCorpus(name="mine", source=bbc_jsonl, text_field="body", label_field="topic", max_documents=200)
    corpus = load_probe_corpus(spec, k=5, test_fraction=0.1, seed=42)
    assert len(corpus.texts) == len(corpus.labels) == 200
    assert corpus.classes == ["business", "entertainment", "politics", "sports", "tech"]
    assert min(Counter(corpus.labels.tolist()).values()) >= 20
    again = load_probe_corpus(spec, k=5, test_fraction=0.1, seed=42)
    assert again.texts == corpus.texts


def test_missing_label_column_names_the_corpus_option_and_file(bbc_jsonl):
    spec = ProbeCorpus(name="mine", source=bbc_jsonl, text_field="body", label_field="category")
    with pytest.raises(ConfigError) as error:
        load_probe_corpus(spec, k=10, test_fraction=0.1, seed=42)
    message = str(error.value)
    assert message.startswith("probe corpus 'mine': label_field: 'category' is not a column of ")
    assert bbc_jsonl in message and "['body', 'topic']" in message and "\n" not in message


def test_too_few_training_documents_for_k(bbc_jsonl):
    spec = ProbeCorpus(name="mine", source=bbc_jsonl, text_field="body", label_field="topic", max_documents=60)
    expected = r"53 train and 7 test documents \(60 sampled, test_fraction=0.1\); expected at least k\+1 = 56 in the train"
    with pytest.raises(ConfigError, match=expected):
        load_probe_corpus(spec, k=55, test_fraction=0.1, seed=42)
    assert len(load_probe_corpus(spec, k=10, test_fraction=0.1, seed=42).texts) == 60


@pytest.mark.parametrize(("labels", "message"), [
    (["a"] * 30, r"1 class\(es\) among 30 labelled documents; expected at least 2"),
    (["a"] * 29 + ["b"], r"classes \['b'\] .* have 1 document"),
])
def test_degenerate_labels_are_rejected(tmp_path, labels, message):
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps({"text": f"document {i}", "y": y}) + "\n" for i, y in enumerate(labels)))
    with pytest.raises(ConfigError, match=message):
        load_probe_corpus(ProbeCorpus(name="x", source=str(path), label_field="y"), k=1, test_fraction=0.5, seed=0)


def test_bad_name_and_max_documents_are_rejected(bbc_jsonl):
    with pytest.raises(ConfigError, match="name: expected letters"):
        load_probe_corpus(ProbeCorpus(name="a/b", source=bbc_jsonl), k=1, test_fraction=0.1, seed=0)
    with pytest.raises(ConfigError, match="max_documents: expected >= 2"):
        load_probe_corpus(ProbeCorpus(name="a", source=bbc_jsonl, max_documents=1), k=1, test_fraction=0.1, seed=0)
