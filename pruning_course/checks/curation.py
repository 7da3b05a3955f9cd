"""Graded checks of notebook 12 (the data-curation lab: filters, exact and near-duplicate removal, packing).

Every check calls the learner's function on seeded synthetic texts (made-up words, so nothing depends on
the corpus or the quick/full mode), compares the result with the package (:mod:`pruning_course.curation`)
and, when they differ, recomputes the classic wrong variants to say which mistake the learner's result
matches: a global ``seen`` set under ``num_proc=2``, keeping the last copy, character shingles instead
of word n-grams, an LSH index that also holds the removed rows, a packed remainder, and so on.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Callable, Sequence

import datasets

from .. import curation
from . import CheckFailed, call, diagnose, fail, graded_check, passed

__all__ = [
    "check_is_section_header",
    "check_is_long_enough",
    "check_exact_dedup",
    "check_minhash_of",
    "check_lsh_near_duplicates",
    "check_pack_batch",
]


# ---------------------------------------------------------------------------------------------
# helpers: seeded made-up text, quiet datasets
# ---------------------------------------------------------------------------------------------

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "so", "vi", "de", "pa", "zu", "re", "bo", "li", "fa", "ge",
              "hu", "ni", "to", "we", "sa", "ko", "me", "di")


def _vocabulary(seed: int, size: int = 600) -> list[str]:
    """``size`` distinct made-up lower-case words (two or three syllables)."""
    __tracebackhide__ = True
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))))
    return sorted(words)


def _words(rng: random.Random, vocabulary: Sequence[str], n: int) -> list[str]:
    __tracebackhide__ = True
    return [rng.choice(vocabulary) for _ in range(n)]


def _messy(rng: random.Random, words: Sequence[str]) -> str:
    """``words`` as a WikiText-like row with capitals and irregular whitespace: what normalization undoes."""
    __tracebackhide__ = True
    out = []
    for i, word in enumerate(words):
        r = rng.random()
        out.append(word.capitalize() if r < 0.25 else word.upper() if r < 0.3 else word)
        if i < len(words) - 1:
            out.append(rng.choice((" ", " ", " ", "  ", "\t", " \n ")))
    return " " + "".join(out) + " \n"


@contextlib.contextmanager
def _quiet_datasets():
    """No progress bars and no warnings from ``datasets`` (nbgrader zeroes a test cell that writes to stderr)."""
    __tracebackhide__ = True
    bars = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


def _show(text: str, limit: int = 60) -> str:
    __tracebackhide__ = True
    shown = text if len(text) <= limit else text[: limit - 3] + "..."
    return repr(shown)


# ---------------------------------------------------------------------------------------------
# 1. quality filters: section headers and minimum length
# ---------------------------------------------------------------------------------------------


def _header_cases() -> list[tuple[str, str]]:
    """(row, why) pairs; the expected answer is the package's :func:`curation.is_section_header`."""
    __tracebackhide__ = True
    return [
        (" = Valkyria Chronicles III = \n", "the article title, a level-1 heading"),
        (" = = History = = \n", "a level-2 heading (the source's '==History==')"),
        (" The equation x = y + z = 3 holds for every x . \n", "an ordinary paragraph that contains '='"),
        (" = = = Early years = = = \n", "a level-3 heading"),
        ("", "a blank row"),
        (" \n", "a row with only whitespace"),
        (" = = Reception and legacy = = \n", "a level-2 heading of several words"),
        (" = x + 1 is the successor of x \n", "a paragraph that starts with '=' but does not end with it"),
        (" In 1990 he said : \" this is = fine \" = \n", "a paragraph that ends with '=' but does not start with it"),
        ("= Title =", "a heading without the WikiText spaces and newline around it"),
        (" = = = = Deep section = = = = \n", "a level-4 heading"),
        (" 2 + 2 = 4 \n", "a short equation"),
    ]


@graded_check
def check_is_section_header(is_section_header: Callable) -> None:
    """Check ``is_section_header(text) -> bool`` against :func:`curation.is_section_header` on WikiText rows:
    headings of levels 1 to 4 (``" = = History = = \\n"``), blank rows, and paragraphs with ``=`` inside."""
    __tracebackhide__ = True
    name = "is_section_header"
    cases = _header_cases()
    answers = []
    for text, _why in cases:
        result = call(is_section_header, text, name=name, returns="True or False (a bool)")
        if not isinstance(result, bool):
            hint = " (re.match returns a Match object or None: wrap it in bool(...))" if result is None or isinstance(
                result, re.Match) else ""
            fail(f"{name}({text!r}) returned {type(result).__name__}, not True or False{hint}. Dataset.filter needs a "
                 "bool for every row.")
        answers.append(result)
    expected = [curation.is_section_header(text) for text, _ in cases]
    if answers == expected:
        passed(f"{name} recognises WikiText headings of every level and leaves paragraphs with '=' alone")
        return
    texts = [text for text, _ in cases]
    variants = [
        ([("=" in t) for t in texts],
         "your function answers True for every row that contains '='. A heading row STARTS and ENDS with '=' "
         "(\" = = History = = \\n\"); paragraphs with equations contain '=' too"),
        ([t.strip().startswith("=") for t in texts],
         "your function only looks at the start of the row. A heading starts AND ends with '=' (after stripping "
         "the whitespace): ' = x + 1 is the successor of x' is a paragraph"),
        ([t.strip().endswith("=") for t in texts],
         "your function only looks at the end of the row. A heading starts AND ends with '='"),
        ([t.startswith("=") and t.endswith("=") for t in texts],
         "your function does not strip the row first: WikiText rows start with a space and end with ' \\n' "
         "(\" = Title = \\n\"), so check text.strip()"),
        ([t.strip().startswith("= ") and not t.strip().startswith("= =") and t.strip().endswith(" =") for t in texts],
         "your function only recognises level-1 headings (the title). WikiText writes deeper headings with more "
         "'= ': \" = = History = = \\n\" (level 2), \" = = = Early years = = = \\n\" (level 3)"),
    ]
    diagnose(variants, lambda variant: answers == variant)
    i = next(i for i, (a, e) in enumerate(zip(answers, expected)) if a != e)
    text, why = cases[i]
    fail(f"{name}({text!r}) returned {answers[i]}, expected {expected[i]}: the row is {why}. A heading row, once "
         "stripped, starts with '= ' and ends with ' =' (one '= ' per level).")


def _length_cases() -> list[tuple[str, int, int]]:
    """(text, min_chars, min_words) at and around the thresholds, with leading/trailing whitespace."""
    __tracebackhide__ = True
    rng = random.Random(41)
    vocabulary = _vocabulary(41)
    cases = []
    for n_words in (1, 4, 5, 6, 9):
        words = _words(rng, vocabulary, n_words)
        text = " " + "  ".join(words) + " \n"  # double spaces inside: split(" ") sees empty strings
        stripped = text.strip()
        for min_chars, min_words in ((0, n_words), (0, n_words + 1), (len(stripped), 0), (len(stripped) + 1, 0),
                                     (len(stripped), n_words), (len(stripped) + 1, n_words - 1),
                                     (len(stripped) - 1, n_words + 1), (len(text) - 1, 0)):
            cases.append((text, min_chars, max(min_words, 0)))
    cases += [("", 0, 0), ("", 1, 0), (" \n", 0, 1), ("word", 4, 1), ("\tone two\n", 7, 2)]
    return cases


@graded_check
def check_is_long_enough(is_long_enough: Callable) -> None:
    """Check ``is_long_enough(text, min_chars=0, min_words=0) -> bool``: the stripped text has at least
    ``min_chars`` characters AND at least ``min_words`` whitespace-separated words (thresholds inclusive)."""
    __tracebackhide__ = True
    name = "is_long_enough"
    cases = _length_cases()
    answers = []
    for text, min_chars, min_words in cases:
        result = call(is_long_enough, text, min_chars=min_chars, min_words=min_words, name=name, returns="True or False (a bool)")
        if not isinstance(result, bool):
            fail(f"{name}({text!r}, min_chars={min_chars}, min_words={min_words}) returned {type(result).__name__}, "
                 "not True or False. Dataset.filter needs a bool for every row.")
        answers.append(result)
    expected = [curation.is_long_enough(t, c, w) for t, c, w in cases]
    if answers == expected:
        passed(f"{name} counts the characters of the stripped row and its words, thresholds inclusive")
        return

    def rule(chars, words, ok):
        __tracebackhide__ = True
        return [ok(chars(t), c, words(t), w) for t, c, w in cases]

    stripped_chars = lambda t: len(t.strip())  # noqa: E731
    split_words = lambda t: len(t.split())  # noqa: E731
    both = lambda ch, c, wo, w: ch >= c and wo >= w  # noqa: E731
    variants = [
        (rule(len, split_words, both),
         "you count the characters of the row as it is, with its leading space and trailing newline. Count "
         "len(text.strip())"),
        (rule(stripped_chars, lambda t: len(t.strip().split(" ")), both),
         "you count words with split(' '), which also counts the empty strings between two spaces ('a  b' gives "
         "['a', '', 'b']). Use text.split() with no argument: it splits on any run of whitespace"),
        (rule(len, lambda t: len(t.split(" ")), both),
         "you count characters with the surrounding whitespace and words with split(' '). Strip the row, and "
         "use text.split() (any run of whitespace) to count words"),
        (rule(stripped_chars, split_words, lambda ch, c, wo, w: ch > c and wo > w),
         "a row with exactly min_chars characters or exactly min_words words must be kept: the thresholds are "
         "inclusive (>=, not >)"),
        (rule(stripped_chars, split_words, lambda ch, c, wo, w: ch >= c or wo >= w),
         "you keep a row when EITHER condition holds; it must have at least min_chars characters AND at least "
         "min_words words"),
        (rule(stripped_chars, split_words, lambda ch, c, wo, w: wo >= w),
         "you ignore min_chars: the row must also have at least min_chars characters (after stripping)"),
        (rule(stripped_chars, split_words, lambda ch, c, wo, w: ch >= c),
         "you ignore min_words: the row must also have at least min_words words"),
    ]
    diagnose(variants, lambda variant: answers == variant)
    i = next(i for i, (a, e) in enumerate(zip(answers, expected)) if a != e)
    text, min_chars, min_words = cases[i]
    fail(f"{name}({text!r}, min_chars={min_chars}, min_words={min_words}) returned {answers[i]}, expected "
         f"{expected[i]}: the stripped row has {len(text.strip())} characters and {len(text.split())} words.")


# ---------------------------------------------------------------------------------------------
# 2. exact deduplication that survives num_proc > 1
# ---------------------------------------------------------------------------------------------


def _dedup_datasets() -> tuple[list[str], list[str]]:
    """Two lists of rows with duplicates up to case and whitespace, inside and across the two halves
    that ``num_proc=2`` hands to two workers; the second list shares rows with the first."""
    __tracebackhide__ = True
    rng = random.Random(42)
    vocabulary = _vocabulary(42)
    p = [" " + " ".join(_words(rng, vocabulary, rng.randint(8, 14))) + " \n" for _ in range(9)]
    first = [
        p[0], p[1], p[0], p[2], p[1].upper(), p[3],               # worker 1: rows 0-5
        p[2].replace(" ", "   "), p[4], p[0], p[5], p[3].strip(),    # worker 2: rows 6-11
        " " + p[4].strip().replace(" ", "  ", 1).capitalize() + "\n",
    ]
    second = [p[6], p[0], p[7], p[5].strip(), p[6], p[8], p[0].title(), p[7]]
    return first, second


def _dedup_keep(texts: Sequence[str], key: Callable[[str], str], last: bool = False) -> list[str]:
    __tracebackhide__ = True
    order = range(len(texts) - 1, -1, -1) if last else range(len(texts))
    seen, kept = set(), []
    for i in order:
        k = key(texts[i])
        if k not in seen:
            seen.add(k)
            kept.append(i)
    return [texts[i] for i in sorted(kept)]


def _contiguous_shards(n: int, num_shards: int) -> list[range]:
    """The row ranges ``Dataset.shard(num_shards, i, contiguous=True)`` gives each worker."""
    __tracebackhide__ = True
    div, mod = divmod(n, num_shards)
    bounds, start = [], 0
    for i in range(num_shards):
        end = start + div + (1 if i < mod else 0)
        bounds.append(range(start, end))
        start = end
    return bounds


def _per_worker_dedup(texts: Sequence[str], num_proc: int) -> list[str]:
    """What a global ``seen`` set gives under ``num_proc`` workers: each worker dedups only its own shard."""
    __tracebackhide__ = True
    out = []
    for shard in _contiguous_shards(len(texts), num_proc):
        out += _dedup_keep([texts[i] for i in shard], curation.normalize_text)
    return out


def _run_dedup(exact_dedup: Callable, texts: Sequence[str], num_proc: int | None) -> list[str]:
    __tracebackhide__ = True
    name = "exact_dedup"
    dataset = datasets.Dataset.from_dict({curation.TEXT: list(texts)})
    with _quiet_datasets():
        result = call(exact_dedup, dataset, num_proc=num_proc, name=name, returns="the deduplicated datasets.Dataset")
    if isinstance(result, tuple) and result and isinstance(result[0], datasets.Dataset):
        fail(f"{name} returned a tuple; return only the deduplicated Dataset (the package's exact_dedup also "
             "returns a report, your exercise does not)")
    if not isinstance(result, datasets.Dataset):
        fail(f"{name} should return a datasets.Dataset (the result of dataset.filter), got {type(result).__name__}")
    if sorted(result.column_names) != [curation.TEXT]:
        extra = [c for c in result.column_names if c != curation.TEXT]
        if curation.TEXT not in result.column_names:
            fail(f"{name} returned a dataset without the 'text' column (columns: {result.column_names})")
        fail(f"{name} returned the extra column(s) {extra}: remove the helper column once you are done "
             f"(dataset.remove_columns({extra[0]!r})), so that the output has the input's columns")
    return list(result[curation.TEXT])


def _diagnose_dedup(result: list[str], texts: list[str], num_proc: int | None, seen_before: set[str], where: str) -> None:
    __tracebackhide__ = True
    with _quiet_datasets():  # the package's exact_dedup is the reference
        kept, _ = curation.exact_dedup(datasets.Dataset.from_dict({curation.TEXT: list(texts)}))
    reference = list(kept[curation.TEXT])
    if result == reference:
        return
    if num_proc and num_proc > 1 and result == _per_worker_dedup(texts, num_proc):
        fail(f"{where}: your result is what a global `seen` set gives with num_proc={num_proc}. Dataset.filter "
             f"cuts the rows into {num_proc} contiguous shards and runs each in its own worker PROCESS, each with its "
             "own copy of the set, so a row whose first copy sits in another shard survives. Hash the rows "
             "(a map that adds a 'hash' column), find the first index of each hash in ONE pass over that column, "
             "then filter by index (with_indices=True) against that precomputed set.")
    missing = [t for t in reference if t not in result]
    if missing and all(curation.normalize_text(t) in seen_before for t in missing) and set(result) <= set(reference):
        fail(f"{where}: you removed {_show(missing[0])}, whose first copy is in THIS dataset, because an EARLIER "
             "call of your function saw it: your `seen` set outlives the call (a module-level set is created once). "
             "Compute the first occurrences inside the function, from the hash column of this dataset.")
    variants = [
        (_dedup_keep(texts, curation.normalize_text, last=True),
         "you keep the LAST copy of each duplicate; keep the first occurrence (the earliest row)"),
        (_dedup_keep(texts, lambda t: t),
         "you compare the raw text: rows that differ only in case or whitespace stay. Hash the normalized text "
         "(curation.text_hash, i.e. SHA-1 of normalize_text: lower case, whitespace runs collapsed, stripped)"),
        (_dedup_keep(texts, lambda t: t.strip()),
         "you only strip the rows: rows that differ in case or inner whitespace stay. Hash normalize_text(text) "
         "(curation.text_hash)"),
        (_dedup_keep(texts, lambda t: t.lower()),
         "you lowercase but do not collapse whitespace: rows that differ only in spacing stay. Use "
         "normalize_text (curation.text_hash)"),
        (_dedup_keep(texts, lambda t: " ".join(t.split())),
         "you collapse whitespace but do not lowercase: rows that differ only in case stay. Use normalize_text "
         "(curation.text_hash)"),
    ]
    counts: dict[str, int] = {}
    for t in texts:
        counts[curation.normalize_text(t)] = counts.get(curation.normalize_text(t), 0) + 1
    variants.append(([t for t in texts if counts[curation.normalize_text(t)] == 1],
                     "you removed EVERY copy of a duplicated row, the first one too; keep the first occurrence"))
    diagnose(variants, lambda variant: result == variant, where)
    if sorted(result) == sorted(reference):
        fail(f"{where}: you keep the right rows but not in the dataset's order; keep the original order (filter the "
             "dataset, do not rebuild it from a set).")
    i = next((i for i, (a, b) in enumerate(zip(result, reference)) if a != b), min(len(result), len(reference)))
    yours = _show(result[i]) if i < len(result) else "nothing"
    expected = _show(reference[i]) if i < len(reference) else "nothing"
    fail(f"{where}: you keep {len(result)} of {len(texts)} rows, the reference keeps {len(reference)} (the first "
         f"occurrence of each normalized text, in order). Kept row {i} is {yours}, expected {expected}.")


@graded_check
def check_exact_dedup(exact_dedup: Callable) -> None:
    """Check ``exact_dedup(dataset, num_proc=None) -> Dataset``: the first occurrence of every normalized text,
    in order, the same in one process and with ``num_proc=2`` (:func:`curation.exact_dedup`)."""
    __tracebackhide__ = True
    first, second = _dedup_datasets()
    seen: set[str] = set()
    # num_proc=None runs in this process (a module-level set then lives on between calls); 2 runs two workers
    for texts, num_proc, label in ((first, None, "first dataset"), (second, None, "second dataset"),
                                   (first, 2, "first dataset")):
        where = (f"on the {label} ({len(texts)} rows, duplicates differing in case and whitespace) with "
                 f"num_proc={num_proc}")
        result = _run_dedup(exact_dedup, texts, num_proc)
        _diagnose_dedup(result, texts, num_proc, seen, where)
        seen |= {curation.normalize_text(t) for t in texts}
    with _quiet_datasets():
        package, _ = curation.exact_dedup(datasets.Dataset.from_dict({curation.TEXT: first}))
    if package[curation.TEXT] != _dedup_keep(first, curation.normalize_text):  # the check's own consistency
        raise CheckFailed("internal error: the check's reference disagrees with pruning_course.curation.exact_dedup")
    passed("exact_dedup keeps the first occurrence of each normalized text, identically in one process and with "
           "num_proc=2")


# ---------------------------------------------------------------------------------------------
# 3. MinHash signatures and LSH with a keep-first policy
# ---------------------------------------------------------------------------------------------


def _minhash(shingle_set: set[str], num_perm: int, seed: int):
    __tracebackhide__ = True
    from datasketch import MinHash

    signature = MinHash(num_perm=num_perm, seed=seed)
    signature.update_batch([s.encode("utf-8") for s in shingle_set])
    return signature


def _word_ngrams(words: list[str], n: int, joiner: str = " ", drop_last: bool = False) -> set[str]:
    __tracebackhide__ = True
    if len(words) <= n:
        return {joiner.join(words)}
    stop = len(words) - n + (0 if drop_last else 1)
    return {joiner.join(words[i : i + n]) for i in range(stop)}


def _char_ngrams(text: str, k: int) -> set[str]:
    __tracebackhide__ = True
    return {text[i : i + k] for i in range(max(len(text) - k + 1, 1))}


def _minhash_cases() -> list[tuple[str, int, int, int]]:
    __tracebackhide__ = True
    rng = random.Random(43)
    vocabulary = _vocabulary(43)
    return [
        (_messy(rng, _words(rng, vocabulary, 30)), 3, 128, 1),
        (_messy(rng, _words(rng, vocabulary, 22)), 2, 64, 1),
        (_messy(rng, _words(rng, vocabulary, 25)), 5, 32, 7),
        (" Hello  World \n", 3, 128, 1),
        (_messy(rng, _words(rng, vocabulary, 12)), 4, 16, 3),
    ]


def _diagnose_minhash(values, text: str, ngram: int, num_perm: int, seed: int, where: str) -> None:
    __tracebackhide__ = True
    import numpy as np

    def same(signature) -> bool:
        __tracebackhide__ = True
        return np.array_equal(values, signature.hashvalues)

    normalized = curation.normalize_text(text)
    words = normalized.split()
    if bool((values == np.uint64((1 << 32) - 1)).all()):
        short = len(words) <= ngram
        fail(f"{where}: your MinHash is empty (every value is the initial 2^32 - 1): no shingle was added. "
             + ("This text has no more words than ngram: it is ONE shingle, all its words joined (as "
                "curation.shingles does)." if short else "Call m.update(shingle.encode('utf-8')) for every shingle."))
    if seed != 1 and same(_minhash(curation.shingles(text, ngram), num_perm, 1)):
        fail(f"{where}: your signature uses seed 1 where seed={seed} was asked: pass it on, "
             "MinHash(num_perm=num_perm, seed=seed). The seed picks the hash permutations; signatures are only "
             "comparable when they share it.")
    for other_seed in (0, 42):
        if other_seed != seed and same(_minhash(curation.shingles(text, ngram), num_perm, other_seed)):
            fail(f"{where}: your signature uses seed {other_seed}; use the seed argument (default 1, as the package).")
    variants = []
    for n in range(1, 9):
        if n != ngram:
            variants.append((_word_ngrams(words, n), f"your shingles are word {n}-grams; use ngram={ngram} words"))
    for k in sorted({ngram, 3, 4, 5, 2, 1, 6, 7, 8, 9}):
        variants.append((_char_ngrams(normalized, k),
                         f"your shingles are CHARACTER {k}-grams. The package (and this lab) shingles by WORD n-grams: "
                         f"the {ngram}-word windows of normalize_text(text).split()"))
        variants.append((_char_ngrams(text, k), f"your shingles are character {k}-grams of the raw text; use word "
                         f"{ngram}-grams of normalize_text(text)"))
    variants += [
        (_word_ngrams(text.split(), ngram),
         "your shingles are not lowercased: normalize the text first (curation.normalize_text lowercases and "
         "collapses whitespace), as the package does, so 'The' and 'the' are the same word"),
        (_word_ngrams(text.lower().split(" "), ngram),
         "you split on single spaces: runs of spaces, tabs and newlines leave empty or glued 'words'. Use "
         "normalize_text(text).split()"),
        (_word_ngrams(text.split(" "), ngram),
         "your shingles are neither lowercased nor split on whitespace runs: use normalize_text(text).split()"),
        (_word_ngrams(text.strip().lower().split(" "), ngram),
         "you split on single spaces: runs of spaces, tabs and newlines leave empty or glued 'words'. Use "
         "normalize_text(text).split()"),
        (_word_ngrams(words, ngram, drop_last=True),
         f"off by one: your last {ngram}-gram is missing. A text of L words has L - {ngram} + 1 windows: "
         f"range(len(words) - {ngram} + 1)"),
        (_word_ngrams(words, ngram, joiner=""),
         "you join the words of a shingle without a separator; join them with one space (' '.join), as "
         "curation.shingles does, so that your signatures match the package's"),
        (_word_ngrams(words, ngram, joiner="_"),
         "you join the words of a shingle with '_'; join them with one space (' '.join), as curation.shingles does"),
        ({str(tuple(s.split(" "))) for s in _word_ngrams(words, ngram)},
         "you hash str(tuple_of_words); hash the words joined by one space (' '.join(...).encode('utf-8')), as "
         "curation.shingles does"),
    ]
    if len(words) > ngram:
        variants.append(({" ".join(words)}, "you add the whole text as one shingle; add every word n-gram"))
    diagnose(variants, lambda shingle_set: same(_minhash(shingle_set, num_perm, seed)), where)
    first = int(np.argmax(values != _minhash(curation.shingles(text, ngram), num_perm, seed).hashvalues))
    fail(f"{where}: your signature differs from the package's (curation.compute_minhashes) first at position "
         f"{first}. Expected: MinHash(num_perm, seed) updated with every word {ngram}-gram of normalize_text(text), "
         "each joined with single spaces and encoded as UTF-8.")


@graded_check
def check_minhash_of(minhash_of: Callable) -> None:
    """Check ``minhash_of(text, ngram=3, num_perm=128, seed=1) -> datasketch.MinHash``: the signature of the word
    ``ngram``-grams of the normalized text, equal to :func:`curation.compute_minhashes` for the same inputs."""
    __tracebackhide__ = True
    import numpy as np
    from datasketch import MinHash

    name = "minhash_of"
    for text, ngram, num_perm, seed in _minhash_cases():
        where = f"for the text {_show(text, 40)} with ngram={ngram}, num_perm={num_perm}, seed={seed}"
        try:
            result = call(minhash_of, text, ngram=ngram, num_perm=num_perm, seed=seed, name=name, returns="a datasketch.MinHash")
        except CheckFailed as error:
            if "encoded before hashing" in str(error):
                raise CheckFailed(f"{error}\n{where}: MinHash.update takes bytes: m.update(shingle.encode('utf-8')).") \
                    from None
            raise
        if isinstance(result, np.ndarray):
            fail(f"{where}: {name} returned a numpy array; return the datasketch.MinHash object itself (LSH needs it)")
        if not isinstance(result, MinHash):
            fail(f"{where}: {name} should return a datasketch.MinHash, got {type(result).__name__}")
        values = np.asarray(result.hashvalues)
        if len(values) != num_perm:
            fail(f"{where}: your MinHash has {len(values)} permutations; pass num_perm on: "
                 "MinHash(num_perm=num_perm, seed=seed). LSH and jaccard() need signatures of the same length.")
        reference = curation.compute_minhashes([text], ngram, num_perm, seed)[0]
        if not np.array_equal(values, reference.hashvalues):
            _diagnose_minhash(values, text, ngram, num_perm, seed, where)
    passed(f"{name} equals the package's MinHash of word n-gram shingles (normalized text) for every ngram, "
           "num_perm and seed tried")


def _substituted(words: list[str], positions: Sequence[int], vocabulary: Sequence[str], rng: random.Random) -> list[str]:
    __tracebackhide__ = True
    out = list(words)
    for p in positions:
        out[p] = rng.choice([w for w in vocabulary[:50] if w != words[p]])
    return out


def _lsh_texts() -> list[str]:
    """Made-up documents with planted near-copies at controlled Jaccard similarities (3-word shingles):
    a close copy, a chain A -> B -> C where C is close to B but not to A, a row close to two kept rows,
    and pairs just below 0.8 that LSH sometimes returns as candidates."""
    __tracebackhide__ = True
    rng = random.Random(44)
    vocabulary = _vocabulary(44)
    length = 120  # 118 three-word shingles; k well separated substitutions: J = (118 - 3k) / (118 + 3k)
    slots = list(range(2, length - 2, 7))  # positions 7 apart: the shingles of two edits never overlap

    def doc():
        __tracebackhide__ = True
        return _words(rng, vocabulary[50:], length)

    def edit(words, k):
        __tracebackhide__ = True
        return _substituted(words, sorted(rng.sample(slots, k)), vocabulary, rng)

    texts: list[list[str]] = []
    a = doc()
    texts += [a, doc(), edit(a, 1)]                          # 2 ~ 0 (J 0.95)
    for _ in range(4):  # LSH is probabilistic: each of the next two situations is planted four times
        x = doc()
        chosen = sorted(rng.sample(slots, 6))
        y = _substituted(x, chosen, vocabulary, rng)         # J(x, y) 0.74: both kept
        z = list(x)
        for p in chosen[:3]:
            z[p] = y[p]                                      # J(z, x) = J(z, y) = 0.855: z ~ x, the earlier one
        texts += [x, y, z]
        source = doc()
        b1 = _substituted(source, sorted(rng.sample(slots[: len(slots) // 2], 3)), vocabulary, rng)
        b2 = _substituted(b1, sorted(rng.sample(slots[len(slots) // 2 :], 3)), vocabulary, rng)
        texts += [source, doc(), b1, b2]                     # b1 ~ source (0.855); b2 ~ b1 (0.855), not source (0.74)
    for _ in range(8):                                       # pairs below 0.8: J 0.78 and 0.74
        base = doc()
        texts += [base, edit(base, rng.choice((5, 6)))]
    texts += [doc(), edit(a, 2)]                             # a late copy of 0 (J 0.90)
    return [" ".join(words) for words in texts]


def _lsh_variant(minhashes, threshold: float, *, verify: bool = True, insert_all: bool = False, pick=min,
                 reverse: bool = False) -> dict[int, int]:
    __tracebackhide__ = True
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=len(minhashes[0].hashvalues))
    order = range(len(minhashes) - 1, -1, -1) if reverse else range(len(minhashes))
    found: dict[int, int] = {}
    for i in order:
        candidates = lsh.query(minhashes[i])
        if verify:
            candidates = [c for c in candidates if minhashes[i].jaccard(minhashes[c]) >= threshold]
        if candidates:
            found[i] = pick(candidates)
        if insert_all or not candidates:
            lsh.insert(i, minhashes[i])
    return found


def _diagnose_lsh(result: dict, minhashes, threshold: float, where: str) -> None:
    __tracebackhide__ = True
    reference = curation.near_duplicates_from_minhashes(minhashes, threshold)
    if result == reference:
        return
    if any(k == v for k, v in result.items()):
        i = next(k for k, v in result.items() if k == v)
        fail(f"{where}: row {i} is reported as a duplicate of itself: you insert a row before querying. Query the "
             "index with the row's MinHash FIRST; insert it only when no kept row matches.")
    variants = [
        ({v: k for k, v in reference.items()},
         "your dict is reversed: the keys must be the DUPLICATES (the later rows, removed) and the values the kept "
         "rows they copy: {duplicate index: kept index}"),
        (_lsh_variant(minhashes, threshold, verify=False),
         "you trust every LSH candidate. LSH returns candidates whose bands collide, including some pairs below "
         "the threshold; keep only the candidates c with minhash.jaccard(minhashes[c]) >= threshold"),
        (_lsh_variant(minhashes, threshold, insert_all=True),
         "you insert every row into the index, duplicates too: a row similar only to an already REMOVED duplicate "
         "is then removed although nothing similar to it is kept. Insert a row only when it is kept (no match)"),
        (_lsh_variant(minhashes, threshold, insert_all=True, verify=False),
         "you insert every row into the index, duplicates too, and trust every LSH candidate. Insert a row only "
         "when it is kept, and keep only candidates with estimated Jaccard >= threshold"),
        (_lsh_variant(minhashes, threshold, pick=max),
         "a row that matches several kept rows must point to the EARLIEST of them (min of the candidates); yours "
         "points to the latest"),
        (_lsh_variant(minhashes, threshold, reverse=True),
         "you keep the LAST copy: visit the rows in order, so that the first occurrence is kept and later copies "
         "are the duplicates"),
    ]
    diagnose(variants, lambda variant: result == variant, where)
    for other in (0.5, 0.6, 0.7, 0.8, 0.9):
        if other != threshold and result == curation.near_duplicates_from_minhashes(minhashes, other):
            fail(f"{where}: your result is the one for threshold={other}: use the threshold argument, for "
                 "MinHashLSH(threshold=...) and for the verification of the candidates.")
    if set(result) == set(reference):
        i = next(k for k in sorted(reference) if result[k] != reference[k])
        fail(f"{where}: you flag the right rows, but row {i} points to {result[i]}, expected {reference[i]}: the "
             "value is the earliest kept row whose MinHash matches (min of the verified candidates).")
    missed = sorted(set(reference) - set(result))
    extra = sorted(set(result) - set(reference))
    detail = f"you miss row {missed[0]} (a near-copy of row {reference[missed[0]]})" if missed else \
        f"you flag row {extra[0]}, which the reference keeps"
    fail(f"{where}: you flag {len(result)} rows, the reference (curation.near_duplicates_from_minhashes) flags "
         f"{len(reference)}; {detail}. Visit the rows in order: query, keep the candidates with estimated Jaccard >= "
         "threshold, record {row: min(candidates)} if any remain, else insert the row.")


@graded_check
def check_lsh_near_duplicates(lsh_near_duplicates: Callable) -> None:
    """Check ``lsh_near_duplicates(minhashes, threshold=0.8) -> {duplicate index: kept index}``, the keep-first
    MinHashLSH pass of :func:`curation.near_duplicates_from_minhashes` (candidates verified by estimated Jaccard)."""
    __tracebackhide__ = True
    name = "lsh_near_duplicates"
    texts = _lsh_texts()
    for threshold, num_perm in ((0.8, 128), (0.6, 128), (0.8, 64)):
        minhashes = curation.compute_minhashes(texts, ngram=3, num_perm=num_perm, seed=1)
        where = f"on {len(texts)} made-up documents with planted near-copies, threshold={threshold}, num_perm={num_perm}"
        try:
            result = call(lsh_near_duplicates, list(minhashes), threshold=threshold, name=name, returns="a dict {duplicate index: index of the kept row it matches}")
        except CheckFailed as error:
            if "Expecting minhash with length" in str(error):
                raise CheckFailed(f"{error}\n{where}: build the index with the signatures' length, "
                                  "MinHashLSH(threshold=threshold, num_perm=len(minhashes[0].hashvalues)), not a "
                                  "fixed 128.") from None
            if "key already exists" in str(error):
                raise CheckFailed(f"{error}\n{where}: every key can be inserted once: insert a row only when it is "
                                  "kept, after querying.") from None
            raise
        if isinstance(result, (set, list, tuple)):
            fail(f"{where}: {name} returned a {type(result).__name__}; return a dict {{duplicate index: kept index}} "
                 "(which kept row each duplicate copies)")
        if not isinstance(result, dict):
            fail(f"{where}: {name} should return a dict {{duplicate index: kept index}}, got {type(result).__name__}")
        try:
            result = {int(k): int(v) for k, v in result.items()}
        except (TypeError, ValueError):
            fail(f"{where}: the keys and values of your dict should be row indices (ints), got e.g. "
                 f"{next(iter(result.items()))!r}")
        _diagnose_lsh(result, minhashes, threshold, where)
    passed(f"{name} finds the planted near-copies with a keep-first MinHashLSH pass, candidates verified, "
           "for two thresholds and two signature lengths")


# ---------------------------------------------------------------------------------------------
# 4. tokenize and pack into fixed blocks
# ---------------------------------------------------------------------------------------------


def _sequence_pack_cases() -> list[tuple[list[str], int]]:
    __tracebackhide__ = True
    rng = random.Random(45)
    vocabulary = _vocabulary(45)
    texts = [" " + " ".join(_words(rng, vocabulary, n)) + " \n" for n in (3, 40, 1, 17, 9, 26, 5, 12, 30, 2)]
    return [(texts[:5], 16), (texts[2:9], 32), (texts[:4], 7), (texts[6:8] + texts[2:3], 64)]


def _blocks(stream: list[int], size: int, keep_remainder: bool = False) -> list[list[int]]:
    __tracebackhide__ = True
    usable = len(stream) // size * size
    blocks = [stream[i : i + size] for i in range(0, usable, size)]
    if keep_remainder and usable < len(stream):
        blocks.append(stream[usable:])
    return blocks


def _as_blocks(value, key: str, where: str) -> list[list[int]]:
    __tracebackhide__ = True
    try:
        return [[int(t) for t in (block.tolist() if hasattr(block, "tolist") else block)] for block in value]
    except TypeError:
        fail(f"{where}: {key!r} should be a list of blocks, each a list of token ids; got {type(value).__name__} "
             f"of {type(next(iter(value), None)).__name__}")


def _diagnose_pack(ids: list[list[int]], documents: list[list[int]], eos: int, size: int, where: str) -> None:
    __tracebackhide__ = True
    stream = [t for d in documents for t in d + [eos]]
    reference = _blocks(stream, size)
    if ids == reference:
        return
    remainder = len(stream) % size
    lengths = sorted({len(b) for b in ids})
    if ids == _blocks(stream, size, keep_remainder=True):
        fail(f"{where}: your last block has {len(ids[-1])} tokens: you kept the remainder. Drop the tokens that do "
             f"not fill a whole block: use only the first len(stream) // block_size * block_size tokens.")
    if ids[:-1] == reference and len(ids) == len(reference) + 1 and remainder and \
            ids[-1][:remainder] == stream[-remainder:]:
        fail(f"{where}: your last block is the remainder ({remainder} tokens) padded to {size}. Packing drops the "
             "remainder: padding would train the model on filler tokens (and pretraining blocks need no mask).")
    if len(lengths) == 1 and lengths[0] in (size + 1, size - 1) and ids == _blocks(stream, lengths[0]):
        fail(f"{where}: off by one: your blocks have {lengths[0]} tokens, block_size is {size}. Cut "
             f"stream[i : i + block_size] for i in range(0, usable, block_size); labels are a plain copy (the model "
             f"shifts them itself), so no extra token is needed.")
    if ids == reference[:-1] and reference:
        fail(f"{where}: you drop one full block too many ({len(ids)} blocks, expected {len(reference)}): off by one "
             "in the range. usable = len(stream) // block_size * block_size; range(0, usable, block_size).")
    if len(lengths) != 1 or lengths[0] != size:
        fail(f"{where}: every block must have exactly block_size = {size} tokens; yours have lengths "
             f"{[len(b) for b in ids][:8]}.")
    no_eos = [t for d in documents for t in d]
    per_document = [b for d in documents for b in _blocks(d + [eos], size)]
    per_document_no_eos = [b for d in documents for b in _blocks(d, size)]
    variants = [
        (_blocks(no_eos, size), "there is no end-of-text token between documents: append tokenizer.eos_token_id "
                                "after each document, so the model learns where one ends and the next begins"),
        (_blocks([t for d in documents for t in [eos] + d], size),
         "you put the end-of-text token BEFORE each document; append it after each document"),
        (per_document, "you cut each document into blocks on its own and lose every document's remainder (and "
                       "every document shorter than a block). Concatenate ALL the documents of the batch (with an "
                       "end-of-text token after each) into one stream first, then cut the stream"),
    ]
    variants.append((per_document_no_eos, variants[-1][1]))
    diagnose(variants, lambda variant: ids == variant, where)
    i = next((i for i, (a, b) in enumerate(zip(ids, reference)) if a != b), min(len(ids), len(reference)))
    fail(f"{where}: you return {len(ids)} blocks, expected {len(reference)} (the documents' tokens, each followed by "
         f"end-of-text, concatenated and cut into blocks of {size}, the remainder dropped); block {i} differs.")


@graded_check
def check_pack_batch(pack_batch: Callable) -> None:
    """Check ``pack_batch(batch, tokenizer, block_size) -> {"input_ids": blocks, "labels": blocks}`` on
    ``{"text": [...]}`` batches, alone and as a batched ``Dataset.map``, against :func:`curation.tokenize_and_pack`."""
    __tracebackhide__ = True
    import functools

    from ..testing import tiny_tokenizer

    name = "pack_batch"
    tokenizer = tiny_tokenizer()
    eos = tokenizer.eos_token_id
    for texts, size in _sequence_pack_cases():
        where = f"on a batch of {len(texts)} documents with block_size={size}"
        out = call(pack_batch, {curation.TEXT: list(texts)}, tokenizer, size, name=name, returns="a dict with 'input_ids' and 'labels', lists of blocks of block_size token ids")
        if not isinstance(out, dict):
            fail(f"{where}: {name} should return a dict of columns {{'input_ids': [...], 'labels': [...]}}, got "
                 f"{type(out).__name__}")
        if "input_ids" not in out:
            fail(f"{where}: your dict has no 'input_ids' column (keys: {sorted(out)})")
        if "labels" not in out:
            fail(f"{where}: your dict has no 'labels' column: causal-LM training needs labels, a copy of input_ids "
                 "(the model shifts them by one itself)")
        if curation.TEXT in out:
            fail(f"{where}: do not return the 'text' column: packing produces a different number of rows than it "
                 "reads, so the old columns cannot be kept (the map removes them with remove_columns)")
        ids = _as_blocks(out["input_ids"], "input_ids", where)
        labels = _as_blocks(out["labels"], "labels", where)
        documents = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        _diagnose_pack(ids, documents, eos, size, where)
        if labels != ids:
            if len(labels) == len(ids) and all(lab[:-1] == block[1:] for lab, block in zip(labels, ids)):
                fail(f"{where}: your labels are input_ids shifted by one token. Return an unshifted copy: the model "
                     "shifts the labels itself when it computes the loss.")
            if any(-100 in lab for lab in labels):
                fail(f"{where}: your labels contain -100. Packed blocks have no padding, so every token is a target: "
                     "labels are a plain copy of input_ids.")
            fail(f"{where}: labels should be a copy of input_ids (the model shifts them itself)")
    # as a batched map over several batches: what tokenize_and_pack does
    cases = _sequence_pack_cases()
    texts = cases[1][0] + cases[0][0]
    dataset = datasets.Dataset.from_dict({curation.TEXT: texts})
    with _quiet_datasets():
        try:
            packed = dataset.map(functools.partial(pack_batch, tokenizer=tokenizer, block_size=16), batched=True,
                                 batch_size=4, remove_columns=dataset.column_names)
        except CheckFailed:
            raise
        except Exception as error:  # noqa: BLE001 - the learner's function failed inside map
            fail(f"Dataset.map(partial({name}, tokenizer=tokenizer, block_size=16), batched=True, batch_size=4, "
                 f"remove_columns=['text']) raised {type(error).__name__}: {error}. Take the arguments by these names "
                 "and return lists of blocks.")
        reference = curation.tokenize_and_pack(dataset, tokenizer, block_size=16, batch_size=4)
    if list(packed["input_ids"]) != list(reference["input_ids"]) or list(packed["labels"]) != list(reference["labels"]):
        fail(f"as a batched Dataset.map over {len(texts)} documents in batches of 4 with block_size=16: you produce "
             f"{len(packed)} blocks, the package's tokenize_and_pack {len(reference)} (each batch is packed on its own "
             "and its remainder dropped).")
    passed(f"{name} concatenates the documents with end-of-text tokens, cuts full blocks, drops the remainder, "
           "copies input_ids to labels, and works as a batched map")
