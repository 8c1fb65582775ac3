import random

import pytest

from lightning_app.data.collate import PairCollator
from lightning_app.data.pairs import token_ids
from lightning_app.data.sources import news_articles
from lightning_app.data.views import Dropout, SentenceCrops, TokenCrops, split_sentences
from lightning_app.errors import ConfigError
from lightning_app.packaged import packaged_path


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
    with pytest.raises(ValueError, match="chunk_tokens: expected >= 1, got 0"):
        TokenCrops(chunk_tokens=0)


def test_token_spans_survive_collation_within_the_ratio_of_their_window(bbc_texts, tokenizer):
    """Long BBC and NewsArticles documents: after the collator (128 tokens), each view is still
    10-50% of min(document, chunk_tokens) tokens, uncut."""
    articles = [row["text"] for _, row in zip(range(400), news_articles(packaged_path("packaged:newsarticles")))]
    texts = [text for text, _ in bbc_texts[::10]] + articles[::2]
    view, collate = TokenCrops(chunk_tokens=252), PairCollator(tokenizer, max_length=128)
    view.check_fits(collate.body, 128)
    lengths, long_documents = [], 0
    for i, text in enumerate(texts):
        ids = token_ids(tokenizer, text)
        long_documents += len(ids) > 252
        a, b = view.pair(text, lambda _: ids, random.Random(i))
        batch = collate([{"a": a, "b": b, "skipped": 0}])
        bodies = (batch["attention_mask"].sum(1) - 2).tolist()
        assert bodies == [len(a), len(b)]  # nothing cut
        window = min(len(ids), 252)
        for body in bodies:
            assert 0.1 * window - 1 <= body <= 0.5 * window + 1
        lengths += bodies
    assert long_documents > 100 and max(lengths) > 110


def test_token_spans_of_a_long_document_lie_in_one_window_anywhere_in_it():
    ids = list(range(5000, 6000))
    view, rng = TokenCrops(chunk_tokens=256), random.Random(7)
    starts, ends = [], []
    for _ in range(500):
        a, b = view.pair("ignored", lambda _: ids, rng)
        first, last = min(ids.index(a[0]), ids.index(b[0])), max(ids.index(a[-1]), ids.index(b[-1]))
        assert last - first + 1 <= 256
        for span in (a, b):
            assert 0.1 * 256 - 1 <= len(span) <= 0.5 * 256 + 1
            assert span == ids[ids.index(span[0]):ids.index(span[0]) + len(span)]
        starts.append(first)
        ends.append(last)
    assert min(starts) < 50 and max(ends) > len(ids) - 50  # windows cover the whole document


def test_token_spans_of_a_document_shorter_than_the_window_are_drawn_as_before():
    """A document of at most chunk_tokens tokens is its own window: the same pairs as spans of
    10-50% of the whole document drawn with the same generator."""
    def whole_document_spans(ids, rng):
        spans = []
        for _ in range(2):
            length = max(1, round(rng.uniform(0.1, 0.5) * len(ids)))
            start = rng.randint(0, len(ids) - length)
            spans.append(ids[start:start + length])
        return tuple(spans)

    for n in (2, 17, 255, 256):
        ids = list(range(n))
        for seed in range(20):
            pair = TokenCrops(chunk_tokens=256).pair("x", lambda _: ids, random.Random(seed))
            assert pair == whole_document_spans(ids, random.Random(seed))


@pytest.mark.parametrize("ratio_max", [0.5, 0.3, 1.0])
def test_span_length_check_names_the_largest_window_that_fits(ratio_max):
    too_long = TokenCrops(ratio_max=ratio_max, chunk_tokens=2000)
    with pytest.raises(ConfigError) as refused:
        too_long.check_fits(126, 128)
    message = str(refused.value)
    assert message.startswith("data.view.init_args.chunk_tokens: expected chunk_tokens <= ")
    fits = int(message.split("<= ")[1].split()[0])
    assert f"at data.max_length 128, or data.max_length >= {too_long.longest_span() + 2} " in message
    TokenCrops(ratio_max=ratio_max, chunk_tokens=fits).check_fits(126, 128)
    with pytest.raises(ConfigError):
        TokenCrops(ratio_max=ratio_max, chunk_tokens=fits + 1).check_fits(126, 128)
    # the bound holds for every span drawn from a full window
    view, ids = TokenCrops(ratio_min=0.1, ratio_max=ratio_max, chunk_tokens=fits), list(range(3 * fits))
    rng = random.Random(0)
    assert max(len(span) for _ in range(300) for span in view.pair("x", lambda _: ids, rng)) <= 126
