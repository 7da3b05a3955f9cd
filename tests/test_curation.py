"""The data-curation lab's building blocks, on small datasets (offline, seconds)."""

from __future__ import annotations

import datasets
import pytest

from pruning_course import curation
from pruning_course.testing import tiny_model, tiny_tokenizer

ENGLISH = "The quick brown fox jumps over the lazy dog while the farmer watches from the window of his house."
GERMAN = "Der schnelle braune Fuchs springt über den faulen Hund, während der Bauer aus dem Fenster schaut."
FRENCH = "Le renard brun rapide saute par-dessus le chien paresseux pendant que le fermier regarde."

PARAGRAPHS = [
    "Pruning removes weights from a neural network so that the model becomes smaller and faster to run.",
    "Magnitude pruning keeps the largest weights of every layer and sets all the other weights to zero.",
    "Wanda multiplies each weight by the norm of its input activation before it ranks the weights.",
    "SparseGPT solves a layer-wise reconstruction problem with the inverse Hessian of the layer inputs.",
    "Structured pruning removes whole attention heads or channels, which speeds up dense hardware.",
    "Calibration data is a small sample of text that is passed through the model to collect activations.",
]


def rows(texts):
    return datasets.Dataset.from_dict({"text": list(texts)})


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


# --------------------------------------------------------------------------- loading


def test_wikitext_layout_keeps_headers_and_blank_rows():
    lines = curation.wikitext_lines("Title", "'''Intro''' text.\n\n==History==\n\n\n=== Early years ===\nMore.")
    assert lines == ["", " = Title = \n", "", " Intro text. \n", "", " = = History = = \n", "",
                     " = = = Early years = = = \n", "", " More. \n", ""]


def test_wiki_lines_dataset_is_offline_and_wikitext_like():
    dataset = curation.wiki_lines_dataset(max_articles=2)
    assert dataset.column_names == ["text"]
    texts = dataset["text"]
    assert texts[1] == " = Anarchism = \n"
    assert " = = History = = \n" in texts
    assert "" in texts


# --------------------------------------------------------------------------- quality filters


def test_predicates():
    assert curation.is_blank("  \n") and not curation.is_blank(" a ")
    assert curation.is_section_header(" = = History = = \n") and curation.is_section_header(" = Title = \n")
    assert not curation.is_section_header(" x = y + z = 3 \n")
    assert curation.is_long_enough(" one two three ", min_words=3)
    assert not curation.is_long_enough("one two", min_words=3)
    assert not curation.is_long_enough("abc", min_chars=4)


def test_language_heuristic_tells_english_from_other_languages():
    assert curation.looks_english(ENGLISH)
    assert not curation.looks_english(GERMAN)
    assert not curation.looks_english(FRENCH)
    russian = "Быстрая коричневая лиса прыгает через ленивую собаку и бежит домой."
    assert not curation.looks_english(russian)
    assert curation.looks_english("Ein Hund.")  # too short to judge: left to the length filter


def test_filters_report_counts_and_examples():
    dataset = rows(["", " = = History = = \n", ENGLISH, "too short", "", GERMAN])
    filtered, reports = curation.quality_filter(dataset, min_words=5, language=True)
    assert filtered["text"] == [ENGLISH]
    assert [(r.name, r.kept, r.removed) for r in reports] == [
        ("blank lines", 4, 2),
        ("section headers", 3, 1),
        ("min length (0 chars, 5 words)", 2, 1),
        ("language (English heuristic)", 1, 1),
    ]
    assert reports[0].examples_removed == ["", ""]
    assert reports[1].examples_removed == [" = = History = = \n"]
    assert reports[3].examples_removed == [GERMAN]
    assert "removed 2" in str(reports[0])


def test_perplexity_filter_with_tiny_model():
    model, tokenizer = tiny_model("llama", seed=0)
    dataset = rows(PARAGRAPHS[:3])
    scores = [curation.text_perplexity(model, tokenizer, text) for text in PARAGRAPHS[:3]]
    cut = sorted(scores)[1]
    filtered, report = curation.filter_perplexity(dataset, model, tokenizer, max_perplexity=cut)
    assert (report.kept, report.removed) == (2, 1)
    assert filtered["text"] == [t for t, s in zip(PARAGRAPHS[:3], scores) if s <= cut]
    assert curation.below_perplexity("", model, tokenizer, max_perplexity=1.0)  # unscorable: kept


# --------------------------------------------------------------------------- exact dedup


def test_exact_dedup_is_the_same_with_one_or_two_processes():
    # Duplicates straddle the two shards that num_proc=2 cuts (first half / second half),
    # and normalization makes case and spacing differences count as duplicates.
    texts = PARAGRAPHS[:4] + [PARAGRAPHS[0].upper(), "  " + PARAGRAPHS[1], PARAGRAPHS[4], PARAGRAPHS[2]]
    dataset = rows(texts)
    serial, report = curation.exact_dedup(dataset, num_proc=1)
    parallel, _ = curation.exact_dedup(dataset, num_proc=2)
    assert serial["text"] == parallel["text"] == PARAGRAPHS[:5]
    assert (report.kept, report.removed) == (5, 3)
    assert report.examples_removed == texts[4:6] + texts[7:8]
    assert serial.column_names == ["text"]


def test_naive_global_set_dedup_fails_with_two_processes():
    dataset = rows(PARAGRAPHS[:4] + PARAGRAPHS[:4])  # shard 0 and shard 1 hold the same four rows
    assert curation.naive_global_set_dedup(dataset, num_proc=1)["text"] == PARAGRAPHS[:4]
    naive_parallel = curation.naive_global_set_dedup(dataset, num_proc=2)
    assert len(naive_parallel) == 8  # each worker had its own `seen` set: no duplicate was removed
    assert len(curation.exact_dedup(dataset, num_proc=2)[0]) == 4


# --------------------------------------------------------------------------- near-duplicates


def test_lsh_finds_a_planted_near_duplicate_and_not_an_unrelated_text():
    original = " ".join(PARAGRAPHS[:3])  # 49 words
    near_copy = original.replace("largest", "biggest")  # one word changed
    assert curation.jaccard(original, near_copy) > 0.85
    texts = [original, PARAGRAPHS[4], near_copy, ENGLISH]
    assert curation.find_near_duplicates(texts, threshold=0.8) == {2: 0}
    dataset, report = curation.near_dedup(rows(texts), threshold=0.8)
    assert dataset["text"] == [original, PARAGRAPHS[4], ENGLISH]
    assert report.removed == 1 and report.examples_removed == [near_copy]


def test_injected_near_duplicates_have_the_known_edit_count():
    texts = [" ".join(PARAGRAPHS[i:i + 2]) for i in range(5)]
    augmented, truth = curation.inject_near_duplicates(texts, rate=0.4, edit_rate=0.1, seed=0)
    assert augmented[:5] == texts and len(augmented) == 7 and set(truth) == {5, 6}
    for copy, source in truth.items():
        assert augmented[copy] != texts[source]
        assert abs(len(augmented[copy].split()) - len(texts[source].split())) <= round(0.1 * len(texts[source].split()))


def test_precision_recall_and_sweep():
    texts = [" ".join(PARAGRAPHS[i:i + 3]) for i in range(4)] + [ENGLISH, GERMAN]
    augmented, truth = curation.inject_near_duplicates(texts, rate=0.5, edit_rate=0.0, seed=1)  # exact copies
    scores = curation.near_dup_precision_recall(augmented, truth, threshold=0.8)
    assert scores["recall"] == 1.0 and scores["precision"] == 1.0 and scores["fp_rate"] == 0.0
    sweep = curation.near_dup_threshold_sweep(augmented, truth, thresholds=(0.5, 0.9))
    assert [row["threshold"] for row in sweep] == [0.5, 0.9]
    assert set(sweep[0]) >= {"threshold", "precision", "recall", "fp_rate"}
    assert curation.score_near_duplicates({6: 0, 1: 0}, {6: 0, 7: 1}, 8) == {
        "precision": 0.5, "recall": 0.5, "fp_rate": 1 / 6, "flagged": 2, "planted": 2}


# --------------------------------------------------------------------------- tokenize and pack


def test_packed_blocks_have_block_size_tokens_and_round_trip_through_disk(tokenizer, tmp_path):
    dataset = rows(PARAGRAPHS * 3)
    packed = curation.tokenize_and_pack(dataset, tokenizer, block_size=32)
    total = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in PARAGRAPHS * 3)
    assert len(packed) == total // 32
    assert packed.column_names == ["input_ids", "labels"]
    assert all(len(ids) == 32 for ids in packed["input_ids"])
    assert packed["labels"] == packed["input_ids"]
    assert packed[0]["input_ids"][:5] == tokenizer(PARAGRAPHS[0], add_special_tokens=False)["input_ids"][:5]
    packed.save_to_disk(str(tmp_path / "packed"))
    reloaded = datasets.load_from_disk(str(tmp_path / "packed"))
    assert reloaded["input_ids"] == packed["input_ids"] and reloaded["labels"] == packed["labels"]


def test_documents_are_truncated_or_padded_with_mask(tokenizer):
    encoded = curation.tokenize_documents(rows(["Pruning.", PARAGRAPHS[0]]), tokenizer, max_length=16)
    short, long = encoded[0], encoded[1]
    n = len(tokenizer("Pruning.", add_special_tokens=False)["input_ids"])
    assert len(short["input_ids"]) == len(long["input_ids"]) == 16
    assert short["attention_mask"] == [1] * n + [0] * (16 - n)
    assert short["labels"][n:] == [-100] * (16 - n)
    assert long["attention_mask"] == [1] * 16 and long["labels"] == long["input_ids"]


# --------------------------------------------------------------------------- throughput


def test_time_stages_reports_each_stage(tokenizer):
    dataset = rows(["", " = = A = = \n"] + PARAGRAPHS + PARAGRAPHS[:2])
    table = curation.time_stages(dataset, curation.default_stages(tokenizer, block_size=16), num_procs=(1,))
    assert [row["stage"] for row in table] == ["quality filters", "exact dedup", "tokenize and pack"]
    assert table[0]["rows_in"] == 10 and table[0]["rows_out"] == 8 and table[1]["rows_out"] == 6
    assert all(row["docs_per_s"] > 0 for row in table)
