import json
from types import SimpleNamespace

import pytest
import torch

from lightning_app.data.datamodule import ContrastiveDataModule, PairCollator, held_out
from lightning_app.data.views import Dropout, SentenceCrops
from lightning_app.errors import ConfigError


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


def make(source, tokenizer_path="packaged:minilm", rank=0, world=1, **kwargs) -> ContrastiveDataModule:
    kwargs = {"view": Dropout(whole_document=True), "batch_size": 4, "num_workers": 0, "val_fraction": 0.2,
              **kwargs}
    dm = ContrastiveDataModule(source=source, tokenizer=tokenizer_path, **kwargs)
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_see_each_training_document_once(tmp_path, tokenizer, workers):
    source = numbered_corpus(tmp_path)
    seen = []
    for rank in range(2):
        dm = make(source, rank=rank, world=2, num_workers=workers, batch_size=1)
        seen += documents_seen(dm, tokenizer, dm.train_dataloader())
    expected = [i for i in range(200) if not held_out(f"document {i}", 0.2)]
    assert sorted(seen) == expected
    assert 120 < len(expected) < 190


def test_validation_slice_is_disjoint_from_training(tmp_path, tokenizer):
    dm = make(numbered_corpus(tmp_path), batch_size=1)
    train = set(documents_seen(dm, tokenizer, dm.train_dataloader()))
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
    batches = list(dm.train_dataloader())
    assert len(batches) == 10  # all ten long documents give a pair
    assert sum(int(b["docs_skipped"]) for b in batches) == 20 - 2  # short documents after the last pair are not reported


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
