import json
import os
from itertools import islice

import pytest
import torch

from lightning_app.data.collate import PairCollator
from lightning_app.data.datamodule import ContrastiveDataModule
from lightning_app.data.pairs import held_out
from lightning_app.data.stream import PairStream
from lightning_app.data.views import SentenceCrops
from lightning_app.errors import ConfigError
from tests.helpers import make_datamodule as make


def numbered_corpus(folder, files: int = 4, per_file: int = 50) -> str:
    """Documents 'document 0 .. N' over several jsonl files (several shards)."""
    for f in range(files):
        with (folder / f"part{f}.jsonl").open("w") as out:
            for i in range(per_file):
                out.write(json.dumps({"text": f"document {f * per_file + i}"}) + "\n")
    return str(folder / "*.jsonl")


def documents_seen(dm: ContrastiveDataModule, tokenizer, loader) -> list[int]:
    seen = []
    for batch in loader:
        half = batch["input_ids"].shape[0] // 2
        for row, mask in zip(batch["input_ids"][:half], batch["attention_mask"][:half]):
            seen.append(int(tokenizer.decode(row[mask.bool()], skip_special_tokens=True).split()[-1]))
    return seen


def first_epoch(stream: PairStream) -> list[dict]:
    """The pairs of the stream's first pass over the corpus."""
    pairs = []
    for pair in stream:
        if stream.position["epoch"] > 0:
            return pairs
        pairs.append(pair)


def numbers(tokenizer, pairs: list[dict]) -> list[int]:
    return [int(tokenizer.decode(pair["a"]).split()[-1]) for pair in pairs]


def test_ranks_see_each_training_document_once_per_epoch(tmp_path, tokenizer):
    source = numbered_corpus(tmp_path)
    seen = []
    for rank in range(2):
        seen += numbers(tokenizer, first_epoch(make(source, rank=rank, world=2).train_pairs))
    expected = [i for i in range(200) if not held_out(f"document {i}", 0.2)]
    assert sorted(seen) == expected
    assert 120 < len(expected) < 190


def test_the_stream_runs_on_into_the_next_epoch_in_a_new_order(tmp_path, tokenizer):
    stream = make(numbered_corpus(tmp_path), shuffle_buffer=30).train_pairs
    epochs = ([], [])
    for pair in islice(stream, 400):
        if stream.position["epoch"] < 2:
            epochs[stream.position["epoch"]].append(pair)
    first, second = numbers(tokenizer, epochs[0]), numbers(tokenizer, epochs[1])
    assert sorted(first) == sorted(second) and first != second


@pytest.mark.parametrize("stop", [1, 29, 30, 95, 170])
def test_a_loaded_stream_state_continues_with_the_next_document(tmp_path, tokenizer, stop):
    source = numbered_corpus(tmp_path)
    whole = numbers(tokenizer, list(islice(make(source, shuffle_buffer=30).train_pairs, 200)))
    stream = make(source, shuffle_buffer=30).train_pairs
    before = numbers(tokenizer, list(islice(stream, stop)))
    resumed = make(source, shuffle_buffer=30).train_pairs
    resumed.load_state_dict(stream.state_dict())
    assert before + numbers(tokenizer, list(islice(resumed, 200 - stop))) == whole


@pytest.mark.parametrize("workers", [1, 2])
def test_the_loader_state_resumes_each_worker_exactly(tmp_path, tokenizer, workers):
    source = numbered_corpus(tmp_path)
    whole = [b["input_ids"] for b in islice(make(source, num_workers=workers).train_dataloader(), 30)]
    loader = make(source, num_workers=workers).train_dataloader()
    before = [b["input_ids"] for b in islice(loader, 17)]
    resumed = make(source, num_workers=workers).train_dataloader()
    resumed.load_state_dict(loader.state_dict())
    after = [b["input_ids"] for b in islice(resumed, 13)]
    assert all(torch.equal(x, y) for x, y in zip(before + after, whole, strict=True))


def test_the_workers_run_at_the_lowest_priority(tmp_path):
    own = os.getpriority(os.PRIO_PROCESS, 0)
    loader = iter(make(numbered_corpus(tmp_path), num_workers=2).train_dataloader())
    next(loader)  # the workers have started and delivered
    workers = [worker.pid for worker in loader._workers]
    assert len(workers) == 2
    assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in workers] == [19, 19]
    assert os.getpriority(os.PRIO_PROCESS, 0) == own  # the trainer keeps its own


def test_validation_slice_is_disjoint_from_training(tmp_path, tokenizer):
    dm = make(numbered_corpus(tmp_path), batch_size=1)
    train = set(numbers(tokenizer, first_epoch(dm.train_pairs)))
    val = set(documents_seen(dm, tokenizer, dm.val_dataloader()))
    assert val and not train & val and len(train | val) == 200


def test_same_seed_same_batches_other_seed_other_batches(bbc_jsonl):
    def batches(seed):
        dm = make(bbc_jsonl, view=SentenceCrops(), text_field="body", seed=seed, shuffle_buffer=64)
        return [b["input_ids"] for _, b in zip(range(3), dm.train_dataloader())]

    first, again, other = batches(1), batches(1), batches(2)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(first, other))


def test_skipped_documents_are_counted(tmp_path):
    long = " ".join(f"This sentence number {i} is long enough to qualify as a crop sentence, surely, "
                    "because it has more than one hundred characters." for i in range(4))
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"text": long if i % 3 == 0 else "Short."}) + "\n" for i in range(30)))
    dm = make(str(path), view=SentenceCrops(), val_fraction=0.0, batch_size=1, shuffle_buffer=1)
    batches = list(islice(dm.train_dataloader(), 10))  # all ten long documents give a pair
    assert sum(int(b["docs_skipped"]) for b in batches) == 20 - 2  # short documents after the last pair come later


def test_corpus_without_any_pair_is_an_error(tmp_path):
    path = tmp_path / "short.jsonl"
    path.write_text("".join(json.dumps({"text": "Too short to crop."}) + "\n" for _ in range(10)))
    with pytest.raises(ConfigError, match=r"none of the first 200 documents of '.*short.jsonl' yields a pair"):
        make(str(path), view=SentenceCrops())


def test_collator_adds_special_tokens_truncates_and_pads(tokenizer):
    collate = PairCollator(tokenizer, max_length=8)
    batch = collate([{"a": [5000, 5001], "b": list(range(2000, 2020)), "skipped": 1},
                     {"a": [6000], "b": [7000, 7001, 7002], "skipped": 2}])
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [
        [cls, 5000, 5001, sep, pad, pad, pad, pad],
        [cls, 6000, sep, pad, pad, pad, pad, pad],
        [cls, 2000, 2001, 2002, 2003, 2004, 2005, sep],
        [cls, 7000, 7001, 7002, sep, pad, pad, pad],
    ]
    assert batch["attention_mask"].sum(1).tolist() == [4, 3, 8, 5]
    assert int(batch["docs_skipped"]) == 3


@pytest.mark.parametrize("option,value,message", [
    ("batch_size", 0, "data.batch_size: expected >= 1"),
    ("length_buckets", 0, "data.length_buckets: expected >= 1"),
    ("val_fraction", 1.0, "data.val_fraction: expected 0 <= val_fraction < 1"),
])
def test_bad_options(option, value, message):
    with pytest.raises(ConfigError, match=message):
        ContrastiveDataModule(**{option: value})
