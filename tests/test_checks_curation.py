"""The graded checks of notebook 12 (data curation): the reference passes, each classic mistake gets its diagnosis."""

from __future__ import annotations

import functools
import hashlib
import re

import pytest
from datasketch import MinHash, MinHashLSH

from pruning_course import curation
from pruning_course.checks.curation import (
    check_exact_dedup,
    check_is_long_enough,
    check_is_section_header,
    check_lsh_near_duplicates,
    check_minhash_of,
    check_pack_batch,
)

from check_support import fails_with, not_implemented


def test_every_check_reports_not_implemented():
    for check in (check_is_section_header, check_is_long_enough, check_exact_dedup, check_minhash_of,
                  check_lsh_near_duplicates, check_pack_batch):
        fails_with(check, not_implemented, "not implemented yet")


# ---------------------------------------------------------------------------------------------
# is_section_header
# ---------------------------------------------------------------------------------------------


def test_section_header_reference_passes(capsys):
    check_is_section_header(curation.is_section_header)
    assert capsys.readouterr().out.startswith("\u2713")


@pytest.mark.parametrize("wrong, fragment", [
    (lambda text: "=" in text, "every row that contains '='"),
    (lambda text: text.strip().startswith("="), "only looks at the start"),
    (lambda text: text.startswith("=") and text.endswith("="), "does not strip the row"),
    (lambda text: text.strip().startswith("= ") and not text.strip().startswith("= =") and text.strip().endswith(" ="),
     "only recognises level-1 headings"),
    (lambda text: re.match(r"^\s*(= )+.*?( =)+\s*$", text), "wrap it in bool"),
    (lambda text: bool(re.match(r"^ (= )+.*( =)+ \n$", text)), "a heading without the WikiText spaces"),
])
def test_section_header_mistakes(wrong, fragment):
    fails_with(check_is_section_header, wrong, fragment)


# ---------------------------------------------------------------------------------------------
# is_long_enough
# ---------------------------------------------------------------------------------------------


def test_long_enough_reference_passes(capsys):
    check_is_long_enough(curation.is_long_enough)
    assert capsys.readouterr().out.startswith("\u2713")


@pytest.mark.parametrize("wrong, fragment", [
    (lambda t, min_chars=0, min_words=0: len(t) >= min_chars and len(t.split()) >= min_words, "len(text.strip())"),
    (lambda t, min_chars=0, min_words=0: len(t.strip()) >= min_chars and len(t.strip().split(" ")) >= min_words,
     "empty strings between two spaces"),
    (lambda t, min_chars=0, min_words=0: len(t.strip()) > min_chars and len(t.split()) > min_words, "inclusive"),
    (lambda t, min_chars=0, min_words=0: len(t.strip()) >= min_chars or len(t.split()) >= min_words, "AND"),
    (lambda t, min_chars=0, min_words=0: len(t.split()) >= min_words, "you ignore min_chars"),
    (lambda t, min_chars=0, min_words=0: len(t.strip()) >= min_chars, "you ignore min_words"),
    (lambda t, min_chars=0, min_words=0: int(len(t.strip()) >= min_chars), "not True or False"),
])
def test_long_enough_mistakes(wrong, fragment):
    fails_with(check_is_long_enough, wrong, fragment)


# ---------------------------------------------------------------------------------------------
# exact_dedup(dataset, num_proc)
# ---------------------------------------------------------------------------------------------


def reference_dedup(dataset, num_proc=None):
    return curation.exact_dedup(dataset, num_proc=num_proc)[0]


def test_exact_dedup_reference_passes(capsys):
    check_exact_dedup(reference_dedup)
    assert capsys.readouterr().out.startswith("\u2713")


def hash_then_filter(key=curation.text_hash, last=False, drop_all=False, keep_hash_column=False, shuffle=False):
    """The hash-column recipe with one thing changed."""

    def dedup(dataset, num_proc=None):
        hashed = dataset.map(lambda batch: {"hash": [key(t) for t in batch["text"]]}, batched=True, num_proc=num_proc)
        hashes = hashed["hash"]
        if drop_all:
            keep = {i for i, h in enumerate(hashes) if hashes.count(h) == 1}
        else:
            first = {}
            for i in (range(len(hashes) - 1, -1, -1) if last else range(len(hashes))):
                first.setdefault(hashes[i], i)
            keep = set(first.values())
        kept = hashed.filter(lambda _h, i: i in keep, with_indices=True, input_columns="hash", num_proc=num_proc)
        if shuffle:
            kept = kept.select(list(range(len(kept)))[::-1])
        return kept if keep_hash_column else kept.remove_columns("hash")

    return dedup


_SEEN = set()


def global_set_cleared(dataset, num_proc=None):
    """The textbook's filter with a module-level set, cleared at the start of each call."""
    _SEEN.clear()

    def first_time(text):
        digest = curation.text_hash(text)
        if digest in _SEEN:
            return False
        _SEEN.add(digest)
        return True

    return dataset.filter(first_time, input_columns="text", num_proc=num_proc)


_NEVER_CLEARED = set()


def global_set_never_cleared(dataset, num_proc=None):
    def first_time(text):
        digest = curation.text_hash(text)
        if digest in _NEVER_CLEARED:
            return False
        _NEVER_CLEARED.add(digest)
        return True

    return dataset.filter(first_time, input_columns="text", num_proc=num_proc)


def sha1(text):
    return hashlib.sha1(text.encode()).hexdigest()


@pytest.mark.parametrize("wrong, fragment", [
    (global_set_cleared, "a global `seen` set gives with num_proc=2"),
    (hash_then_filter(last=True), "LAST copy"),
    (hash_then_filter(key=sha1), "you compare the raw text"),
    (hash_then_filter(key=lambda t: sha1(t.strip())), "you only strip the rows"),
    (hash_then_filter(key=lambda t: sha1(t.lower())), "do not collapse whitespace"),
    (hash_then_filter(key=lambda t: sha1(" ".join(t.split()))), "do not lowercase"),
    (hash_then_filter(drop_all=True), "EVERY copy"),
    (hash_then_filter(keep_hash_column=True), "remove_columns('hash')"),
    (hash_then_filter(shuffle=True), "not in the dataset's order"),
    (lambda dataset, num_proc=None: reference_dedup(dataset, num_proc)["text"], "should return a datasets.Dataset"),
    (lambda dataset, num_proc=None: curation.exact_dedup(dataset, num_proc), "returned a tuple"),
])
def test_exact_dedup_mistakes(wrong, fragment):
    fails_with(check_exact_dedup, wrong, fragment)


def test_exact_dedup_set_that_outlives_the_call():
    _NEVER_CLEARED.clear()
    try:
        fails_with(check_exact_dedup, global_set_never_cleared, "outlives the call")
    finally:
        _NEVER_CLEARED.clear()


# ---------------------------------------------------------------------------------------------
# minhash_of(text, ngram, num_perm, seed)
# ---------------------------------------------------------------------------------------------


def reference_minhash(text, ngram=3, num_perm=128, seed=1):
    return curation.compute_minhashes([text], ngram, num_perm, seed)[0]


def test_minhash_reference_passes(capsys):
    check_minhash_of(reference_minhash)
    assert capsys.readouterr().out.startswith("\u2713")


def minhash_from(shingler, num_perm_of=lambda n: n, seed_of=lambda s: s, encode=True):
    def minhash_of(text, ngram=3, num_perm=128, seed=1):
        m = MinHash(num_perm=num_perm_of(num_perm), seed=seed_of(seed))
        for s in shingler(text, ngram):
            m.update(s.encode("utf-8") if encode else s)
        return m

    return minhash_of


def word_ngrams(words, n, stop_offset=1):
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + stop_offset)}


@pytest.mark.parametrize("wrong, fragment", [
    (minhash_from(lambda t, n: {curation.normalize_text(t)[i:i + 5] for i in range(len(curation.normalize_text(t)) - 4)}),
     "CHARACTER 5-grams"),
    (minhash_from(lambda t, n: {curation.normalize_text(t)[i:i + n] for i in range(len(curation.normalize_text(t)) - n + 1)}),
     "CHARACTER"),
    (minhash_from(lambda t, n: curation.shingles(t, 3)), "word 3-grams; use ngram=2"),
    (minhash_from(lambda t, n: curation.shingles(t, 1)), "word 1-grams"),
    (minhash_from(lambda t, n: word_ngrams(t.split(), n)), "not lowercased"),
    (minhash_from(lambda t, n: word_ngrams(t.lower().split(" "), n)), "split on single spaces"),
    (minhash_from(lambda t, n: word_ngrams(curation.normalize_text(t).split(), n, stop_offset=0)), "off by one"),
    (minhash_from(lambda t, n: {"".join(s.split()) for s in curation.shingles(t, n)}), "without a separator"),
    (minhash_from(lambda t, n: {str(tuple(s.split())) for s in curation.shingles(t, n)}), "str(tuple_of_words)"),
    (minhash_from(lambda t, n: set() if len(t.split()) <= n else curation.shingles(t, n)), "ONE shingle"),
    (minhash_from(curation.shingles, num_perm_of=lambda n: 128), "pass num_perm on"),
    (minhash_from(curation.shingles, seed_of=lambda s: 1), "seed=7 was asked"),
    (minhash_from(curation.shingles, encode=False), "m.update(shingle.encode('utf-8'))"),
    (lambda text, ngram=3, num_perm=128, seed=1: reference_minhash(text, ngram, num_perm, seed).hashvalues,
     "return the datasketch.MinHash object"),
])
def test_minhash_mistakes(wrong, fragment):
    fails_with(check_minhash_of, wrong, fragment)


# ---------------------------------------------------------------------------------------------
# lsh_near_duplicates(minhashes, threshold)
# ---------------------------------------------------------------------------------------------


def test_lsh_reference_passes(capsys):
    check_lsh_near_duplicates(curation.near_duplicates_from_minhashes)
    assert capsys.readouterr().out.startswith("\u2713")


def lsh_with(verify=True, insert_all=False, pick=min, insert_first=False, num_perm=None, fixed_threshold=None,
             reverse=False, as_set=False, flip=False):
    def lsh_near_duplicates(minhashes, threshold=0.8):
        threshold = fixed_threshold or threshold
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm or len(minhashes[0].hashvalues))
        found = {}
        order = range(len(minhashes) - 1, -1, -1) if reverse else range(len(minhashes))
        for i in order:
            if insert_first:
                lsh.insert(i, minhashes[i])
            candidates = lsh.query(minhashes[i])
            if verify:
                candidates = [c for c in candidates if minhashes[i].jaccard(minhashes[c]) >= threshold]
            if candidates:
                found[i] = pick(candidates)
            if not insert_first and (insert_all or not candidates):
                lsh.insert(i, minhashes[i])
        if as_set:
            return set(found)
        return {v: k for k, v in found.items()} if flip else found

    return lsh_near_duplicates


@pytest.mark.parametrize("wrong, fragment", [
    (lsh_with(verify=False), "you trust every LSH candidate"),
    (lsh_with(insert_all=True), "you insert every row into the index, duplicates too"),
    (lsh_with(pick=max), "EARLIEST"),
    (lsh_with(insert_first=True), "duplicate of itself"),
    (lsh_with(num_perm=128), "num_perm=len(minhashes[0].hashvalues)"),
    (lsh_with(reverse=True), "LAST copy"),
    (lsh_with(as_set=True), "return a dict"),
    (lsh_with(flip=True), "reversed"),
    (lsh_with(fixed_threshold=0.8), "your result is the one for threshold=0.8"),
])
def test_lsh_mistakes(wrong, fragment):
    fails_with(check_lsh_near_duplicates, wrong, fragment)


# ---------------------------------------------------------------------------------------------
# pack_batch(batch, tokenizer, block_size)
# ---------------------------------------------------------------------------------------------


def reference_pack(batch, tokenizer, block_size):
    return curation._pack_batch(batch, tokenizer, block_size, append_eos=True)


def test_pack_reference_passes(capsys):
    check_pack_batch(reference_pack)
    assert capsys.readouterr().out.startswith("\u2713")


def pack_with(eos_where="after", per_document=False, remainder="drop", size_delta=0, range_delta=0,
              labels="copy", keep_text=False):
    def pack_batch(batch, tokenizer, block_size):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        eos = [tokenizer.eos_token_id]
        docs = [doc + eos if eos_where == "after" else eos + doc if eos_where == "before" else doc for doc in ids]
        streams = docs if per_document else [[t for d in docs for t in d]]
        size = block_size + size_delta
        blocks = []
        for stream in streams:
            usable = len(stream) // size * size
            blocks += [stream[i:i + size] for i in range(0, usable + range_delta * size, size)]
            if usable < len(stream) and remainder == "keep":
                blocks.append(stream[usable:])
            if usable < len(stream) and remainder == "pad":
                blocks.append(stream[usable:] + eos * (size - len(stream) + usable))
        out = {"input_ids": blocks}
        if labels == "copy":
            out["labels"] = [list(b) for b in blocks]
        elif labels == "shift":
            out["labels"] = [b[1:] + eos for b in blocks]
        if keep_text:
            out["text"] = batch["text"]
        return out

    return pack_batch


@pytest.mark.parametrize("wrong, fragment", [
    (pack_with(remainder="keep"), "you kept the remainder"),
    (pack_with(remainder="pad"), "padded to"),
    (pack_with(size_delta=1), "off by one: your blocks have"),
    (pack_with(range_delta=-1), "one full block too many"),
    (pack_with(eos_where="none"), "no end-of-text token between documents"),
    (pack_with(eos_where="before"), "BEFORE each document"),
    (pack_with(per_document=True), "cut each document into blocks on its own"),
    (pack_with(per_document=True, eos_where="none"), "cut each document into blocks on its own"),
    (pack_with(labels="shift"), "shifted by one"),
    (pack_with(labels=None), "no 'labels' column"),
    (pack_with(keep_text=True), "do not return the 'text' column"),
])
def test_pack_mistakes(wrong, fragment):
    fails_with(check_pack_batch, wrong, fragment)


def test_pack_positional_names_are_part_of_the_contract():
    def pack_batch(batch, tok, size):  # other argument names: the map call in the notebook passes keywords
        return reference_pack(batch, tok, size)

    fails_with(check_pack_batch, pack_batch, "Take the arguments by these names")


def test_checks_write_nothing_to_stderr(capfd):
    check_exact_dedup(reference_dedup)
    check_pack_batch(functools.partial(reference_pack))
    assert capfd.readouterr().err == ""
