import random

import pytest

from lightning_app.data.views import Dropout, SentenceCrops, TokenCrops, split_sentences


def test_split_sentences_keeps_quotes_and_breaks_lines():
    text = 'He said "it works." Then it failed! Did it? Yes.\nA new line without a stop\nend.'
    assert split_sentences(text) == ['He said "it works."', "Then it failed!", "Did it?", "Yes.",
                                     "A new line without a stop", "end."]


def test_crops_start_at_every_qualifying_sentence_by_default(bbc_texts):
    view = SentenceCrops()
    for text, _ in bbc_texts[:200]:
        kept = [s for s in split_sentences(text) if 100 <= len(s) <= 250]
        crops = view.crops(text)
        assert len(crops) == max(len(kept) - 1, 0)
        for i, crop in enumerate(crops):
            assert crop == f"{kept[i]} {kept[i + 1]}"


def test_non_overlapping_crops_are_disjoint_groups_of_qualifying_sentences(bbc_texts):
    view = SentenceCrops(overlap=False)
    for text, _ in bbc_texts[:200]:
        kept = [s for s in split_sentences(text) if 100 <= len(s) <= 250]
        crops = view.crops(text)
        assert len(crops) == len(kept) // 2
        for i, crop in enumerate(crops):
            assert crop == f"{kept[2 * i]} {kept[2 * i + 1]}"


def test_three_qualifying_sentences_give_a_pair_only_with_overlapping_crops(tokenizer):
    sentence = "This sentence is long enough to count as one of the qualifying sentences of the crop rule, the {} one."
    text = " ".join(sentence.format(word) for word in ("first", "second", "third"))
    tokenize = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    a, b = SentenceCrops().pair(text, tokenize, random.Random(0))
    assert "second" in tokenizer.decode(a) and "second" in tokenizer.decode(b) and a != b  # they share a sentence
    assert SentenceCrops(overlap=False).pair(text, tokenize, random.Random(0)) is None


def test_pair_is_two_different_crops_and_short_documents_are_skipped(bbc_texts, tokenizer):
    view = SentenceCrops()
    tokenize = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    pairs = 0
    for text, _ in bbc_texts[:100]:
        pair = view.pair(text, tokenize, random.Random(0))
        crops = view.crops(text)
        if len(crops) < 2:
            assert pair is None
            continue
        pairs += 1
        a, b = pair
        assert a != b
        assert tokenizer.decode(a) in {tokenizer.decode(tokenize(c)) for c in crops}
    assert pairs > 90
    assert view.pair("Too short. Really.", tokenize, random.Random(0)) is None


def test_token_spans_lie_within_ratio_bounds_and_inside_the_document():
    view = TokenCrops(ratio_min=0.1, ratio_max=0.5)
    ids = list(range(1000, 1200))
    rng = random.Random(3)
    for _ in range(200):
        a, b = view.pair("ignored", lambda _: ids, rng)
        for span in (a, b):
            assert 0.1 * len(ids) - 1 <= len(span) <= 0.5 * len(ids) + 1
            start = ids.index(span[0])
            assert span == ids[start:start + len(span)]
    assert view.pair("x", lambda _: [7], rng) is None


def test_dropout_gives_the_same_crop_twice(bbc_texts, tokenizer):
    tokenize = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    text = bbc_texts[0][0]
    a, b = Dropout().pair(text, tokenize, random.Random(1))
    assert a == b and tokenizer.decode(a) in {tokenizer.decode(tokenize(c)) for c in SentenceCrops().crops(text)}
    whole, _ = Dropout(whole_document=True).pair(text, tokenize, random.Random(1))
    assert whole == tokenize(text)


def test_same_generator_state_gives_the_same_pairs(bbc_texts):
    view = SentenceCrops()
    words = lambda s: [hash(w) % 1000 for w in s.split()]  # noqa: E731
    first = [view.pair(t, words, random.Random(5)) for t, _ in bbc_texts[:50]]
    again = [view.pair(t, words, random.Random(5)) for t, _ in bbc_texts[:50]]
    other = [view.pair(t, words, random.Random(6)) for t, _ in bbc_texts[:50]]
    assert first == again and first != other


@pytest.mark.parametrize("kwargs", [{"min_chars": 300, "max_chars": 100}, {"sentences_per_crop": 0}])
def test_bad_crop_options(kwargs):
    with pytest.raises(ValueError, match="expected"):
        SentenceCrops(**kwargs)


def test_bad_token_ratios():
    with pytest.raises(ValueError, match="ratio_min..ratio_max"):
        TokenCrops(ratio_min=0.6, ratio_max=0.5)
