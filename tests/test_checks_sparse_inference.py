"""The graded checks of notebook 09 (sparse inference): the reference passes, each classic mistake gets its diagnosis."""

from __future__ import annotations

import pytest
import torch

from pruning_course.checks.sparse_inference import check_break_even, check_csr_nbytes, check_memory_break_even
from pruning_course.sparse_inference import break_even_sparsity, csr_memory_break_even, csr_nbytes

from check_support import fails_with, not_implemented


# ---------------------------------------------------------------------------------------------
# csr_nbytes(csr)
# ---------------------------------------------------------------------------------------------


def parts(csr):
    return csr.values(), csr.col_indices(), csr.crow_indices()


def test_reference_csr_nbytes_passes(capsys):
    check_csr_nbytes(csr_nbytes)
    check_csr_nbytes(csr_nbytes, seed=1)
    assert "\u2713" in capsys.readouterr().out


def test_csr_nbytes_returning_a_tensor_passes():
    check_csr_nbytes(lambda csr: torch.tensor(sum(t.numel() * t.element_size() for t in parts(csr))))


def test_csr_nbytes_not_implemented():
    fails_with(check_csr_nbytes, not_implemented, "not implemented yet")


def _bytes(t):
    return t.numel() * t.element_size()


@pytest.mark.parametrize("wrong,fragments", [
    (lambda c: _bytes(c.values()) + _bytes(c.col_indices()), ("forgot crow_indices",)),
    (lambda c: _bytes(c.values()) + _bytes(c.col_indices()) + c.shape[0] * c.col_indices().element_size(), ("rows + 1",)),
    (lambda c: _bytes(c.values()) + 4 * (c.col_indices().numel() + c.crow_indices().numel()), ("int32", "int64 indices by default")),
    (lambda c: _bytes(c.values()) + 8 * (c.col_indices().numel() + c.crow_indices().numel()), ("assumed 8-byte",)),
    (lambda c: 4 * c.values().numel() + _bytes(c.col_indices()) + _bytes(c.crow_indices()), ("4-byte (float32) values",)),
    (lambda c: _bytes(c.values()), ("only the values",)),
    (lambda c: _bytes(c.values()) + _bytes(c.crow_indices()), ("forgot col_indices",)),
    (lambda c: c.shape[0] * c.shape[1] * c.values().element_size(), ("DENSE",)),
    (lambda c: 8 * csr_nbytes(c), ("BITS",)),
    (lambda c: c.values().numel() + c.col_indices().numel() + c.crow_indices().numel(), ("entries, not bytes",)),
    (lambda c: csr_nbytes(c) + 1, ("expected", "crow_indices")),
])
def test_wrong_csr_byte_counts_are_diagnosed(wrong, fragments):
    fails_with(check_csr_nbytes, wrong, *fragments)


def test_csr_nbytes_returning_a_non_number():
    fails_with(check_csr_nbytes, lambda c: str(csr_nbytes(c)), "return a number")
    fails_with(check_csr_nbytes, lambda c: torch.tensor([_bytes(t) for t in parts(c)]), "one number")


# ---------------------------------------------------------------------------------------------
# memory_break_even(value_bytes, index_bytes)
# ---------------------------------------------------------------------------------------------


def test_reference_memory_break_even_passes(capsys):
    check_memory_break_even(lambda v, i: csr_memory_break_even(v, i))
    check_memory_break_even(lambda v, i: i / (v + i), seed=3)
    assert "2/3" in capsys.readouterr().out


def test_memory_break_even_not_implemented():
    fails_with(check_memory_break_even, not_implemented, "not implemented yet")


@pytest.mark.parametrize("wrong,fragment", [
    (lambda v, i: v / (v + i), "DENSITY"),
    (lambda v, i: i / v, "solve (1 - s)(v + i) = v"),
    (lambda v, i: v / i, "solve (1 - s)(v + i) = v"),
    (lambda v, i: 0.5, "depends on the byte sizes"),
    (lambda v, i: i / (v + 2 * i), "ONE column index"),
    (lambda v, i: (i + 1) / (v + i), "expected i / (v + i)"),
])
def test_wrong_memory_break_evens_are_diagnosed(wrong, fragment):
    fails_with(check_memory_break_even, wrong, fragment)


def test_memory_break_even_returning_nan():
    fails_with(check_memory_break_even, lambda v, i: float("nan"), "finite")


# ---------------------------------------------------------------------------------------------
# break_even(sparsities, time_ratios)
# ---------------------------------------------------------------------------------------------


def break_even_reference(sparsities, ratios):
    rows = [{"sparsity": s, "time_ratio": r, "batch": 1, "out_features": 8, "in_features": 8}
            for s, r in zip(sparsities, ratios)]
    return break_even_sparsity(rows, 1)


def break_even_student(sparsities, ratios, first=False, interpolate=True, sort=True, invert=False, none_value=None,
                       in_place=False):
    """The notebook's solution with switches for the classic mistakes."""
    if invert:
        ratios = [1 / r for r in ratios]
    if in_place:
        sparsities.sort()
    points = sorted(zip(sparsities, ratios)) if sort else list(zip(sparsities, ratios))
    slower = [k for k, (_, r) in enumerate(points) if r >= 1]
    if not slower:
        return points[0][0]
    last = slower[0] if first else slower[-1]
    if first:
        while last + 1 < len(points) and points[last + 1][1] >= 1:
            last += 1
    if last == len(points) - 1:
        return none_value
    (s0, r0), (s1, r1) = points[last], points[last + 1]
    if not interpolate:
        return s1
    return s0 + (r0 - 1) / (r0 - r1) * (s1 - s0)


def test_reference_break_even_passes(capsys):
    check_break_even(break_even_reference)
    check_break_even(break_even_student, seed=2)
    assert "\u2713" in capsys.readouterr().out


def test_break_even_not_implemented():
    fails_with(check_break_even, not_implemented, "not implemented yet")


@pytest.mark.parametrize("kwargs,fragment", [
    ({"first": True}, "FIRST crossing"),
    ({"interpolate": False}, "interpolate linearly"),
    ({"sort": False}, "sort the points"),
    ({"invert": True}, "dense / csr"),
    ({"none_value": 1.0}, "return None"),
    ({"in_place": True}, "modified its input lists"),
])
def test_wrong_break_evens_are_diagnosed(kwargs, fragment):
    fails_with(check_break_even, lambda s, r: break_even_student(s, r, **kwargs), fragment)


def test_break_even_returning_none_when_csr_always_wins():
    def never_when_all_faster(s, r):
        return None if all(x < 1 for x in r) else break_even_reference(s, r)

    fails_with(check_break_even, never_when_all_faster, "return the lowest measured sparsity")


def test_break_even_with_an_unrecognised_mistake():
    fails_with(check_break_even, lambda s, r: (break_even_reference(s, r) or 0) + 0.01 if break_even_reference(s, r) else None,
               "you return", "linear interpolation")
