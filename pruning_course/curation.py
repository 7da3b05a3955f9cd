"""Data curation: from a raw text corpus to a training-ready dataset, with ``datasets`` and ``datasketch``.

The lab walks through the stages a pretraining or calibration corpus goes through:

1. **Load** lines of text: :func:`wiki_lines_dataset` (the embedded Wikipedia sample, offline) or
   :func:`hub_text_dataset` (WikiText-103 or any Hub dataset with a ``text`` column, online).
2. **Quality filters**: each one is a pure predicate (``text -> keep?``) plus a ``Dataset.filter`` step
   that returns a :class:`FilterReport` (blank lines, section headers, minimum length, an English
   heuristic, and a perplexity filter under a small model).
3. **Exact deduplication** that stays correct with ``num_proc > 1`` (:func:`exact_dedup`), next to the
   textbook version with a global ``seen`` set (:func:`naive_global_set_dedup`), which is not.
4. **Near-duplicates** with MinHash + LSH (:func:`find_near_duplicates`), measured against planted
   near-copies with known edit rates (:func:`inject_near_duplicates`, :func:`near_dup_precision_recall`,
   :func:`near_dup_threshold_sweep`).
5. **Tokenize and pack** into fixed blocks for pretraining (:func:`tokenize_and_pack`) or keep documents
   apart, padded, for fine-tuning (:func:`tokenize_documents`).
6. **Throughput** of each stage in documents per second, with 1 or more processes (:func:`time_stages`).

Functions handed to ``Dataset.map``/``Dataset.filter`` are module-level functions bound with
:func:`functools.partial`, so they can be sent to worker processes when ``num_proc > 1``.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import datasets

from .errors import InputError
from .data import load_wiki_articles

TEXT = "text"

# --------------------------------------------------------------------------- 1. loading

# gensim's ``filter_wiki`` keeps section headings as their own lines, e.g. "==History==" or "=== Origins ===".
_WIKI_HEADING = re.compile(r"^(={2,6})\s*(.*?)\s*\1\s*$")
# Runs of two or more apostrophes are wiki italics/bold markup (''italic'', '''bold''') left by filter_wiki.
_WIKI_QUOTES = re.compile(r"'{2,}")


def wikitext_lines(title: str, text: str) -> list[str]:
    """One cleaned wiki article as rows in the layout of WikiText's ``text`` column.

    WikiText stores an article as one row per paragraph or heading, each followed by an empty row::

        ""  " = Title = \\n"  ""  " Paragraph one ...\\n"  ""  " = = History = = \\n"  ""  ...

    Protocol (on the output of gensim's ``filter_wiki``, as :func:`pruning_course.data.load_wiki_articles`
    returns it): ``filter_wiki`` keeps headings as lines such as ``==History==``; a heading of level ``k``
    (``k`` equal signs) becomes ``" " + "= " * (k) + name + " =" * k + " \\n"`` after the article title
    (level 1, ``" = Title = \\n"``); every other non-empty line becomes ``" " + line + " \\n"`` with runs
    of two or more apostrophes (wiki bold/italic markup) removed; empty lines in the source are dropped
    and one empty row follows each row, as in WikiText. Unlike WikiText we do not split punctuation into
    separate tokens (no ``@-@``), so the text reads like ordinary prose.
    """
    rows = ["", f" = {title} = \n", ""]
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        heading = _WIKI_HEADING.match(line)
        if heading:
            level = len(heading.group(1))
            name = _WIKI_QUOTES.sub("", heading.group(2)).strip()
            rows.append(" " + "= " * level + name + " =" * level + " \n")
        else:
            rows.append(" " + _WIKI_QUOTES.sub("", line) + " \n")
        rows.append("")
    return rows


def wiki_lines_dataset(max_articles: int | None = None) -> datasets.Dataset:
    """The embedded Wikipedia sample (105 articles, offline) as WikiText-style rows in a ``text`` column.

    See :func:`wikitext_lines` for the exact layout: headings and blank rows are kept, as in WikiText,
    so the quality filters have something to remove. ``max_articles`` keeps the first articles only.
    """
    articles = load_wiki_articles()[:max_articles]
    rows = [row for title, text in articles for row in wikitext_lines(title, text)]
    return datasets.Dataset.from_dict({TEXT: rows})


def hub_text_dataset(path: str, config: str | None = None, split: str = "train", streaming: bool = False):
    """One split of a Hugging Face Hub dataset with a ``text`` column (needs internet the first time).

    Example: ``hub_text_dataset("Salesforce/wikitext", "wikitext-103-raw-v1")``. With ``streaming=True``
    the result is an ``IterableDataset`` that reads rows lazily instead of downloading the whole split.
    Offline, a ``ConnectionError`` says so and points to :func:`wiki_lines_dataset`.
    """
    try:
        dataset = datasets.load_dataset(path, config, split=split, streaming=streaming)
    except (OSError, ConnectionError) as error:  # no connection, offline mode, or no such dataset
        raise ConnectionError(
            f"could not load the Hugging Face dataset {path!r} (config {config!r}, split {split!r}): it needs "
            "internet access the first time, and the name must exist on the Hub. "
            "wiki_lines_dataset() works offline."
        ) from error
    columns = dataset.column_names
    if columns is not None and TEXT not in columns:
        raise InputError(f"dataset {path!r} has no {TEXT!r} column: {columns}")
    return dataset


# --------------------------------------------------------------------------- 2. quality filters


@dataclass
class FilterReport:
    """What one curation step did: rows kept and removed, and up to three removed rows as examples."""

    name: str
    kept: int
    removed: int
    examples_removed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        total = self.kept + self.removed
        share = self.removed / total if total else 0.0
        return f"{self.name}: kept {self.kept:,}, removed {self.removed:,} ({share:.1%})"


def is_blank(text: str) -> bool:
    """True for a row with nothing but whitespace."""
    return not text.strip()


_HEADER_ROW = re.compile(r"^\s*(= )+.*?( =)+\s*$")


def is_section_header(text: str) -> bool:
    """True for a WikiText heading row such as ``" = Title = "`` or ``" = = History = = "``."""
    return bool(_HEADER_ROW.match(text))


def is_long_enough(text: str, min_chars: int = 0, min_words: int = 0) -> bool:
    """True when ``text`` (stripped) has at least ``min_chars`` characters and ``min_words`` words."""
    stripped = text.strip()
    return len(stripped) >= min_chars and len(stripped.split()) >= min_words


# The most frequent English function words: running English text has about 40 % of them,
# text in another language almost none (a few, such as "a" or "in", are shared with other languages).
ENGLISH_STOP_WORDS = frozenset(
    "a about after all also an and any are as at be been but by can could did do does for from had has have "
    "he her his how i if in into is it its may more most no not of on one only or other our out over she so "
    "some such than that the their them then there these they this those through to under up was we were "
    "what when where which while who will with would you".split()
)
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters, in any script


def english_scores(text: str) -> tuple[float, float]:
    """``(ascii_letter_share, stop_word_share)`` of ``text``.

    ``ascii_letter_share``: the share of its letters that are ASCII ``a-z``/``A-Z`` (1.0 without letters);
    ``stop_word_share``: the share of its words that are in :data:`ENGLISH_STOP_WORDS` (0.0 without words).
    """
    letters = [c for c in text if c.isalpha()]
    ascii_share = sum(c.isascii() for c in letters) / len(letters) if letters else 1.0
    words = _WORD.findall(text.lower())
    stop_share = sum(w in ENGLISH_STOP_WORDS for w in words) / len(words) if words else 0.0
    return ascii_share, stop_share


def looks_english(text: str, min_ascii_share: float = 0.9, min_stop_word_share: float = 0.15,
                  min_words: int = 5) -> bool:
    """A simple language heuristic, no model: is ``text`` English prose?

    True when at least ``min_ascii_share`` of the letters are ASCII and at least ``min_stop_word_share``
    of the words are common English function words (see :func:`english_scores`). Rows with fewer than
    ``min_words`` words are too short to judge and count as English (the length filter handles them).
    Lists of names or numbers fail the stop-word test too: that is usually wanted for training text.
    """
    if len(_WORD.findall(text)) < min_words:
        return True
    ascii_share, stop_share = english_scores(text)
    return ascii_share >= min_ascii_share and stop_share >= min_stop_word_share


def text_perplexity(model, tokenizer, text: str, max_tokens: int = 512) -> float:
    """Perplexity of ``model`` on the first ``max_tokens`` tokens of ``text`` (``nan`` under 2 tokens)."""
    import torch

    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"][:max_tokens]
    if len(ids) < 2:
        return float("nan")
    device = next(model.parameters()).device
    with torch.no_grad():
        input_ids = torch.tensor([ids], device=device)
        loss = model(input_ids=input_ids, labels=input_ids).loss
    return float(torch.exp(loss))


def below_perplexity(text: str, model, tokenizer, max_perplexity: float, max_tokens: int = 512) -> bool:
    """True when the model's perplexity on ``text`` is at most ``max_perplexity``.

    Rows with fewer than two tokens cannot be scored and are kept (the other filters handle them).
    """
    perplexity = text_perplexity(model, tokenizer, text, max_tokens)
    return perplexity != perplexity or perplexity <= max_perplexity  # nan != nan: unscored, kept


def apply_filter(dataset: datasets.Dataset, name: str, keep: Callable[[str], bool],
                 num_proc: int | None = None) -> tuple[datasets.Dataset, FilterReport]:
    """``dataset.filter`` with the predicate ``keep`` on the ``text`` column, and a :class:`FilterReport`.

    ``keep`` must be picklable (a module-level function or a ``functools.partial`` of one) when
    ``num_proc > 1``. The removed examples are the first three rows that ``keep`` rejects.
    """
    kept = dataset.filter(keep, input_columns=TEXT, num_proc=num_proc, desc=name)
    removed = len(dataset) - len(kept)
    examples: list[str] = []
    if removed:
        for text in dataset[TEXT]:
            if not keep(text):
                examples.append(text)
                if len(examples) == 3:
                    break
    return kept, FilterReport(name, len(kept), removed, examples)


def _not(predicate: Callable[[str], bool], text: str) -> bool:
    return not predicate(text)


def filter_blank_lines(dataset, num_proc=None):
    """Remove rows that are empty or only whitespace."""
    return apply_filter(dataset, "blank lines", functools.partial(_not, is_blank), num_proc)


def filter_section_headers(dataset, num_proc=None):
    """Remove WikiText heading rows (``" = = History = = "``)."""
    return apply_filter(dataset, "section headers", functools.partial(_not, is_section_header), num_proc)


def filter_min_length(dataset, min_chars: int = 0, min_words: int = 0, num_proc=None):
    """Remove rows shorter than ``min_chars`` characters or ``min_words`` words."""
    keep = functools.partial(is_long_enough, min_chars=min_chars, min_words=min_words)
    return apply_filter(dataset, f"min length ({min_chars} chars, {min_words} words)", keep, num_proc)


def filter_language(dataset, min_ascii_share: float = 0.9, min_stop_word_share: float = 0.15, num_proc=None):
    """Remove rows that :func:`looks_english` rejects."""
    keep = functools.partial(looks_english, min_ascii_share=min_ascii_share, min_stop_word_share=min_stop_word_share)
    return apply_filter(dataset, "language (English heuristic)", keep, num_proc)


def filter_perplexity(dataset, model, tokenizer, max_perplexity: float, max_tokens: int = 512):
    """Remove rows on which ``model`` has a perplexity above ``max_perplexity`` (one process: the model
    stays in this one)."""
    keep = functools.partial(below_perplexity, model=model, tokenizer=tokenizer,
                             max_perplexity=max_perplexity, max_tokens=max_tokens)
    return apply_filter(dataset, f"perplexity <= {max_perplexity:g}", keep, num_proc=None)


def quality_filter(dataset, min_words: int = 5, language: bool = False, num_proc=None):
    """Blank lines, section headers, minimum length, then (``language=True``) the English heuristic.

    Returns the filtered dataset and one :class:`FilterReport` per step.
    """
    reports = []
    for step in (filter_blank_lines, filter_section_headers):
        dataset, report = step(dataset, num_proc=num_proc)
        reports.append(report)
    dataset, report = filter_min_length(dataset, min_words=min_words, num_proc=num_proc)
    reports.append(report)
    if language:
        dataset, report = filter_language(dataset, num_proc=num_proc)
        reports.append(report)
    return dataset, reports


# --------------------------------------------------------------------------- 3. exact deduplication


def normalize_text(text: str) -> str:
    """Lower case, whitespace runs collapsed to one space, stripped: what exact dedup compares."""
    return " ".join(text.lower().split())


def text_hash(text: str) -> str:
    """SHA-1 hex digest of :func:`normalize_text` of ``text``."""
    return hashlib.sha1(normalize_text(text).encode("utf-8")).hexdigest()


def _hash_batch(batch: dict) -> dict:
    return {"hash": [text_hash(text) for text in batch[TEXT]]}


def add_hash_column(dataset: datasets.Dataset, num_proc: int | None = None) -> datasets.Dataset:
    """Add a ``hash`` column (:func:`text_hash` of each row); the hashing runs in parallel."""
    return dataset.map(_hash_batch, batched=True, num_proc=num_proc, desc="hash")


def first_occurrence_indices(hashes: Iterable[str]) -> set[int]:
    """Indices of the first row of each distinct hash: one serial pass, so the answer is global."""
    first: dict[str, int] = {}
    for index, digest in enumerate(hashes):
        first.setdefault(digest, index)
    return set(first.values())


def _indices_kept(_column: list, indices: list[int], keep: frozenset) -> list[bool]:
    """Batched filter function: is each row's (global) index in ``keep``?"""
    return [index in keep for index in indices]


def exact_dedup(dataset: datasets.Dataset, num_proc: int | None = None) -> tuple[datasets.Dataset, FilterReport]:
    """Keep the first occurrence of each normalized text; correct for any ``num_proc``.

    1. hash every row in parallel (:func:`add_hash_column`);
    2. find the first index of each hash in one serial pass over the hash column;
    3. ``Dataset.filter`` by row index against that precomputed set (in parallel: each worker only
       reads the set, so splitting the rows into shards cannot change the answer).
    """
    hashed = add_hash_column(dataset, num_proc)
    keep = frozenset(first_occurrence_indices(hashed["hash"]))
    kept = hashed.filter(functools.partial(_indices_kept, keep=keep), with_indices=True, batched=True,
                         input_columns="hash", num_proc=num_proc, desc="exact dedup").remove_columns("hash")
    removed_indices = sorted(set(range(len(dataset))) - keep)[:3]
    examples = [dataset[i][TEXT] for i in removed_indices]
    return kept, FilterReport("exact dedup", len(kept), len(dataset) - len(kept), examples)


_SEEN: set[str] = set()


def _first_time_seen(text: str) -> bool:
    """The textbook filter function: remembers hashes in the module-level set ``_SEEN``."""
    digest = text_hash(text)
    if digest in _SEEN:
        return False
    _SEEN.add(digest)
    return True


def naive_global_set_dedup(dataset: datasets.Dataset, num_proc: int | None = None) -> datasets.Dataset:
    """The textbook version: ``dataset.filter`` with a global ``seen`` set. Wrong when ``num_proc > 1``.

    In this process (``num_proc=None``) the set sees every row in order and the result equals
    :func:`exact_dedup`. (``datasets`` runs even ``num_proc=1`` in a worker process; with one worker
    the answer is still right, but the module-level set in this process never sees a row.) With
    ``num_proc > 1`` the rows are cut into contiguous shards, each worker process has its own copy of the
    set, and a row whose earlier copy sits in another shard is kept: duplicates across shards survive.
    (It has a second trap: the set outlives the call, so this function clears it first; the textbook
    version, run twice in one process, would remove every row the second time.)
    """
    _SEEN.clear()
    try:
        return dataset.filter(_first_time_seen, input_columns=TEXT, num_proc=num_proc, desc="naive dedup")
    finally:
        _SEEN.clear()


# --------------------------------------------------------------------------- 4. near-duplicates


def shingles(text: str, ngram: int = 3) -> set[str]:
    """The word ``ngram``-grams of :func:`normalize_text` of ``text``; a shorter text is one shingle."""
    words = normalize_text(text).split()
    if len(words) <= ngram:
        return {" ".join(words)}
    return {" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)}


def jaccard(a: str, b: str, ngram: int = 3) -> float:
    """Exact Jaccard similarity of the shingle sets of ``a`` and ``b``."""
    sa, sb = shingles(a, ngram), shingles(b, ngram)
    return len(sa & sb) / len(sa | sb)


def compute_minhashes(texts: Sequence[str], ngram: int = 3, num_perm: int = 128, seed: int = 1) -> list:
    """One ``datasketch.MinHash`` per text over its word ``ngram`` shingles (shared permutations)."""
    from datasketch import MinHash

    shingle_bytes = [[s.encode("utf-8") for s in shingles(text, ngram)] for text in texts]
    return MinHash.bulk(shingle_bytes, num_perm=num_perm, seed=seed)


def near_duplicates_from_minhashes(minhashes: Sequence, threshold: float = 0.8, verify: bool = True) -> dict[int, int]:
    """Keep-first near-duplicate detection over precomputed MinHashes: ``{duplicate index: kept index}``.

    Rows are visited in order. A row is a duplicate when the LSH index of the rows kept so far returns
    a candidate (with ``verify=True``: a candidate whose estimated Jaccard similarity is at least
    ``threshold``, which removes most of LSH's false candidates); it is then matched to the earliest such
    kept row and not indexed. Otherwise it is kept and inserted.
    """
    from datasketch import MinHashLSH

    if not minhashes:
        return {}
    lsh = MinHashLSH(threshold=threshold, num_perm=len(minhashes[0].hashvalues))
    duplicates: dict[int, int] = {}
    for index, signature in enumerate(minhashes):
        candidates = lsh.query(signature)
        if verify:
            candidates = [c for c in candidates if signature.jaccard(minhashes[c]) >= threshold]
        if candidates:
            duplicates[index] = min(candidates)
        else:
            lsh.insert(index, signature)
    return duplicates


def find_near_duplicates(texts: Sequence[str], threshold: float = 0.8, ngram: int = 3, num_perm: int = 128,
                         seed: int = 1, verify: bool = True) -> dict[int, int]:
    """Near-duplicates of ``texts`` by MinHash LSH, keep-first: ``{duplicate index: kept index}``."""
    return near_duplicates_from_minhashes(compute_minhashes(texts, ngram, num_perm, seed), threshold, verify)


def near_dedup(dataset: datasets.Dataset, threshold: float = 0.8, ngram: int = 3, num_perm: int = 128,
               seed: int = 1) -> tuple[datasets.Dataset, FilterReport]:
    """Remove the near-duplicates that :func:`find_near_duplicates` finds, keeping each first occurrence."""
    duplicates = find_near_duplicates(dataset[TEXT], threshold, ngram, num_perm, seed)
    keep = frozenset(set(range(len(dataset))) - set(duplicates))
    kept = dataset.filter(functools.partial(_indices_kept, keep=keep), with_indices=True, batched=True,
                          input_columns=TEXT, desc="near dedup")
    examples = [dataset[i][TEXT] for i in sorted(duplicates)[:3]]
    return kept, FilterReport(f"near dedup (Jaccard >= {threshold:g})", len(kept), len(duplicates), examples)


def edit_words(words: list[str], edit_rate: float, vocabulary: Sequence[str], rng: random.Random) -> list[str]:
    """``words`` with exactly ``round(edit_rate * len(words))`` word edits at distinct positions.

    Each edit is, with equal chances, a substitution by a random ``vocabulary`` word, a deletion, or an
    insertion of a random word before the position.
    """
    n_edits = round(edit_rate * len(words))
    positions = set(rng.sample(range(len(words)), n_edits))
    out: list[str] = []
    for i, word in enumerate(words):
        if i not in positions:
            out.append(word)
            continue
        kind = rng.choice(("substitute", "delete", "insert"))
        if kind == "substitute":
            out.append(rng.choice(vocabulary))
        elif kind == "insert":
            out.extend((rng.choice(vocabulary), word))
    return out


def inject_near_duplicates(texts: Sequence[str], rate: float = 0.05, edit_rate: float = 0.05, seed: int = 0,
                           min_words: int = 10) -> tuple[list[str], dict[int, int]]:
    """Plant near-copies with a known word edit rate: returns ``(texts + copies, {copy index: source index})``.

    ``round(rate * len(texts))`` distinct sources are drawn among the texts with at least ``min_words``
    words; each gets one copy edited by :func:`edit_words` at ``edit_rate``. The copies are appended after
    all the originals in random order, so under keep-first the original is the one kept.
    """
    rng = random.Random(seed)
    eligible = [i for i, text in enumerate(texts) if len(text.split()) >= min_words]
    n_copies = min(round(rate * len(texts)), len(eligible))
    sources = rng.sample(eligible, n_copies)
    vocabulary = sorted({word for i in eligible for word in texts[i].split()})
    out = list(texts)
    truth: dict[int, int] = {}
    for source in sources:
        truth[len(out)] = source
        out.append(" ".join(edit_words(texts[source].split(), edit_rate, vocabulary, rng)))
    return out, truth


def score_near_duplicates(found: dict[int, int], truth: dict[int, int], n_texts: int) -> dict[str, float]:
    """Precision, recall and false-positive rate of the rows flagged as duplicates (``found``).

    A flagged row is a true positive when it is a planted copy (in ``truth``); precision is the share of
    flagged rows that are planted copies, recall the share of planted copies flagged, and ``fp_rate`` the
    share of the other rows (originals) wrongly flagged. Natural near-duplicates already in the corpus
    count as false positives, so run exact dedup first.
    """
    flagged, planted = set(found), set(truth)
    true_positives = len(flagged & planted)
    false_positives = len(flagged - planted)
    negatives = n_texts - len(planted)
    return {
        "precision": true_positives / len(flagged) if flagged else 1.0,
        "recall": true_positives / len(planted) if planted else 1.0,
        "fp_rate": false_positives / negatives if negatives else 0.0,
        "flagged": len(flagged),
        "planted": len(planted),
    }


def near_dup_precision_recall(texts: Sequence[str], truth: dict[int, int], threshold: float = 0.8, ngram: int = 3,
                              num_perm: int = 128, seed: int = 1) -> dict[str, float]:
    """:func:`find_near_duplicates` on ``texts`` scored against the planted copies ``truth``
    (see :func:`score_near_duplicates`)."""
    found = find_near_duplicates(texts, threshold, ngram, num_perm, seed)
    return score_near_duplicates(found, truth, len(texts))


def near_dup_threshold_sweep(texts: Sequence[str], truth: dict[int, int],
                             thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9), ngram: int = 3,
                             num_perm: int = 128, seed: int = 1) -> list[dict[str, float]]:
    """One row ``{threshold, precision, recall, fp_rate, flagged, planted}`` per threshold, for a plot.

    The MinHashes are computed once; only the LSH index is rebuilt for each threshold.
    """
    minhashes = compute_minhashes(texts, ngram, num_perm, seed)
    rows = []
    for threshold in thresholds:
        found = near_duplicates_from_minhashes(minhashes, threshold)
        rows.append({"threshold": threshold, **score_near_duplicates(found, truth, len(texts))})
    return rows


# --------------------------------------------------------------------------- 5. tokenize and pack


def _pack_batch(batch: dict, tokenizer, block_size: int, append_eos: bool) -> dict:
    ids = tokenizer(batch[TEXT], add_special_tokens=False, return_attention_mask=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if append_eos and tokenizer.eos_token_id is not None else []
    stream = [token for document in ids for token in document + eos]
    usable = len(stream) // block_size * block_size  # drop the remainder that does not fill a block
    blocks = [stream[i : i + block_size] for i in range(0, usable, block_size)]
    return {"input_ids": blocks, "labels": [list(block) for block in blocks]}


def tokenize_and_pack(dataset: datasets.Dataset, tokenizer, block_size: int = 128, append_eos: bool = True,
                      num_proc: int | None = None, batch_size: int = 1000) -> datasets.Dataset:
    """Pretraining blocks: tokenize, concatenate, cut into blocks of exactly ``block_size`` tokens.

    As in the Hugging Face ``run_clm`` recipe, one batched ``map`` tokenizes ``batch_size`` rows, joins
    them (with an end-of-text token after each document when ``append_eos``), cuts the stream into
    blocks of ``block_size`` and drops the remainder of each batch. ``labels`` is a copy of ``input_ids``
    (the model shifts them). The output has one row per block, so its length differs from the input's.
    Because the remainder is dropped per batch, and ``num_proc`` changes where batches start, the block
    count can differ by a few between ``num_proc`` values (on the filtered embedded corpus with the tiny
    test tokenizer and ``block_size=128``: 17,396 blocks with one process, 17,395 with two).
    """
    pack = functools.partial(_pack_batch, tokenizer=tokenizer, block_size=block_size, append_eos=append_eos)
    return dataset.map(pack, batched=True, batch_size=batch_size, remove_columns=dataset.column_names,
                       num_proc=num_proc, desc="tokenize and pack")


def _document_batch(batch: dict, tokenizer, max_length: int, pad_id: int) -> dict:
    ids = tokenizer(batch[TEXT], add_special_tokens=False, return_attention_mask=False)["input_ids"]
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for document in ids:
        document = document[:max_length]
        padding = max_length - len(document)
        out["input_ids"].append(document + [pad_id] * padding)
        out["attention_mask"].append([1] * len(document) + [0] * padding)
        out["labels"].append(document + [-100] * padding)  # -100: no loss on padding
    return out


def tokenize_documents(dataset: datasets.Dataset, tokenizer, max_length: int = 128,
                       num_proc: int | None = None) -> datasets.Dataset:
    """Fine-tuning rows: each document on its own, truncated or right-padded to ``max_length`` tokens.

    Columns ``input_ids``, ``attention_mask`` (0 on padding) and ``labels`` (``-100`` on padding, so the
    loss ignores it). The pad id is the tokenizer's, or its end-of-text id when it has none.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encode = functools.partial(_document_batch, tokenizer=tokenizer, max_length=max_length, pad_id=pad_id)
    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, num_proc=num_proc,
                       desc="tokenize documents")


# --------------------------------------------------------------------------- 6. throughput


def time_stages(dataset: datasets.Dataset, stages: dict[str, Callable],
                num_procs: Sequence[int | None] = (None, 2)) -> list[dict]:
    """Time a pipeline: each stage ``stage(dataset, num_proc) -> dataset`` runs on the previous output.

    Returns one row per (num_proc, stage): ``{num_proc, stage, rows_in, rows_out, seconds, docs_per_s}``,
    where ``docs_per_s`` is input rows per second. ``None`` runs a stage in this process (``datasets``
    starts a worker process even for ``num_proc=1``). With more processes each stage pays for starting
    workers and writing shards, so small datasets are often faster with ``num_proc=1``.
    """
    rows = []
    for num_proc in num_procs:
        current = dataset
        for name, stage in stages.items():
            start = time.perf_counter()
            output = stage(current, num_proc)
            seconds = time.perf_counter() - start
            rows.append({"num_proc": num_proc, "stage": name, "rows_in": len(current), "rows_out": len(output),
                         "seconds": seconds, "docs_per_s": len(current) / seconds if seconds else float("inf")})
            current = output
    return rows


def default_stages(tokenizer, block_size: int = 128, min_words: int = 5) -> dict[str, Callable]:
    """The lab's pipeline as :func:`time_stages` stages: filters, exact dedup, tokenize and pack."""
    return {
        "quality filters": lambda ds, n: quality_filter(ds, min_words=min_words, num_proc=n)[0],
        "exact dedup": lambda ds, n: exact_dedup(ds, num_proc=n)[0],
        "tokenize and pack": lambda ds, n: tokenize_and_pack(ds, tokenizer, block_size, num_proc=n),
    }
