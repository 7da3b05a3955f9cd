"""Graded checks of notebook 09 (sparse inference on the CPU: when does CSR beat dense?).

The notebook's exercises, each checked against :mod:`pruning_course.sparse_inference`:

``csr_nbytes(csr)``
    the exact bytes of a ``torch.sparse_csr`` tensor: ``values`` + ``col_indices`` + ``crow_indices``,
    each ``numel * element_size`` (PyTorch's default index dtype is int64, 8 bytes).
``memory_break_even(value_bytes, index_bytes)``
    the sparsity above which CSR takes fewer bytes than dense, row pointers neglected:
    ``(1 - s)(v + i) < v``  <=>  ``s > i / (v + i)`` (:func:`~pruning_course.sparse_inference.csr_memory_break_even`).
``break_even(sparsities, time_ratios)``
    the lowest sparsity from which CSR is faster, read off measured ``csr / dense`` time ratios: after
    the last point where CSR is not faster, interpolated linearly to where the ratio is 1; the lowest
    sparsity if CSR wins everywhere; ``None`` if it does not win at the highest sparsity
    (:func:`~pruning_course.sparse_inference.break_even_sparsity`).

On a mismatch each check recomputes the classic wrong variants and says which one the learner's
answer matches. ``seed`` selects another set of inputs (for hidden tests).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch

from ..sparse_inference import (
    break_even_sparsity,
    crossing_after_last_slower,
    csr_memory_break_even,
    random_sparse_weight,
    to_csr,
)
from ..sparse_inference import csr_nbytes as reference_csr_nbytes
from . import call, diagnose, expect_number, fail, graded_check, passed

__all__ = ["check_csr_nbytes", "check_memory_break_even", "check_break_even"]


# ---------------------------------------------------------------------------------------------
# 1. bytes of a CSR tensor
# ---------------------------------------------------------------------------------------------


def _csr_cases(seed: int) -> list[tuple[torch.Tensor, str]]:
    __tracebackhide__ = True
    cases = []
    for rows, cols, sparsity, dtype, int32 in ((8, 16, 0.5, torch.float32, False), (12, 10, 0.8, torch.float16, False),
                                               (7, 9, 0.6, torch.float32, True), (5, 20, 0.9, torch.float64, False),
                                               (16, 6, 0.3, torch.bfloat16, True)):
        weight = random_sparse_weight(rows, cols, sparsity, seed=seed * 7 + rows, dtype=dtype)
        weight[1] = 0  # an empty row: its row pointer still counts
        csr = to_csr(weight)
        if int32:
            csr = torch.sparse_csr_tensor(csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32),
                                          csr.values(), size=csr.shape, check_invariants=True)
        index = "int32" if int32 else "int64"
        cases.append((csr, f"a {rows}x{cols} CSR tensor ({str(dtype).removeprefix('torch.')} values, {index} indices, "
                           f"{csr.values().numel()} non-zeros)"))
    return cases


@graded_check
def check_csr_nbytes(csr_nbytes: Callable, seed: int = 0) -> None:
    """Check ``csr_nbytes(csr)``: the bytes of ``values``, ``col_indices`` and ``crow_indices`` together,
    each ``numel() * element_size()`` of its own dtype."""
    __tracebackhide__ = True
    name = "csr_nbytes"
    for csr, description in _csr_cases(seed):
        where = f"on {description}"
        got = expect_number(call(csr_nbytes, csr, name=name, returns="the number of bytes (an int)"), f"{where}: {name}", "the bytes of the CSR tensor", kind="a number")
        expected = reference_csr_nbytes(csr)
        if got == expected:
            continue
        rows, cols = csr.shape
        nnz = csr.values().numel()
        v, i = csr.values().element_size(), csr.col_indices().element_size()
        variants = [
            (nnz * (v + i), "you forgot crow_indices: the row pointers, rows + 1 integers (a row's entries are "
             "values[crow[r]:crow[r + 1]])"),
            (nnz * (v + i) + rows * i, "crow_indices has rows + 1 entries, not rows (the last one is nnz)"),
            (nnz * v + (nnz + rows + 1) * 4, "you assumed 4-byte (int32) indices; PyTorch's CSR uses int64 indices by "
             "default (8 bytes each). Use each tensor's own element_size()"),
            (nnz * v + (nnz + rows + 1) * 8, "you assumed 8-byte (int64) indices; this tensor's indices are "
             f"{str(csr.col_indices().dtype).removeprefix('torch.')}. Use each tensor's own element_size()"),
            (nnz * 4 + (nnz + rows + 1) * i, "you assumed 4-byte (float32) values; these are "
             f"{str(csr.values().dtype).removeprefix('torch.')}, {v} bytes each. Use values().element_size()"),
            (nnz * v, "you counted only the values; CSR also stores col_indices (one per non-zero) and crow_indices "
             "(rows + 1)"),
            (nnz * v + (rows + 1) * i, "you forgot col_indices: one column index per non-zero"),
            (rows * cols * v, "that is the DENSE matrix's size, rows * cols * element_size"),
            (8 * expected, "that is the size in BITS; return bytes (numel() * element_size())"),
            (nnz + nnz + rows + 1, "you counted entries, not bytes: multiply each tensor's numel() by its element_size()"),
        ]
        diagnose(
            variants,
            lambda value: got == value,
            describe=lambda message: f"{where}: you return {got:g} bytes, expected {expected}: {message}.",
        )
        fail(f"{where}: you return {got:g} bytes, expected {expected} = values {nnz} x {v} B + col_indices {nnz} x {i} B "
             f"+ crow_indices {rows + 1} x {i} B.")
    passed("csr_nbytes counts values, col_indices and crow_indices, each with its own dtype")


# ---------------------------------------------------------------------------------------------
# 2. the memory break-even sparsity
# ---------------------------------------------------------------------------------------------


@graded_check
def check_memory_break_even(memory_break_even: Callable, seed: int = 0) -> None:
    """Check ``memory_break_even(value_bytes, index_bytes)`` = ``i / (v + i)``: above this sparsity CSR
    (values + one column index per non-zero, row pointers neglected) is smaller than dense."""
    __tracebackhide__ = True
    name = "memory_break_even"
    pairs = [(4, 8), (4, 4), (2, 8), (2, 4), (1, 4), (8, 8), (1, 2)]
    random.Random(seed).shuffle(pairs)
    for v, i in pairs:
        where = f"with {v}-byte values and {i}-byte indices"
        got = expect_number(call(memory_break_even, v, i, name=name, returns="the break-even sparsity, a float between 0 and 1"), f"{where}: {name}", "a sparsity between 0 and 1", kind="a number")
        expected = csr_memory_break_even(v, i)
        if math.isclose(got, expected, rel_tol=1e-9):
            continue
        variants = [
            (v / (v + i), "that is the break-even DENSITY (fraction of non-zeros kept), or you swapped the "
             "arguments: memory_break_even(value_bytes, index_bytes) is i / (v + i)"),
            (i / v, "CSR costs (1 - s)(v + i) bytes per entry against v dense: solve (1 - s)(v + i) = v for s"),
            (v / i, "CSR costs (1 - s)(v + i) bytes per entry against v dense: solve (1 - s)(v + i) = v for s"),
            (1 - i / v if v > i else None, "CSR costs (1 - s)(v + i) bytes per entry, not (1 - s) v + i: every "
             "non-zero carries its own index"),
            (0.5, "the break-even depends on the byte sizes: solve (1 - s)(v + i) = v for s"),
            (i / (v + 2 * i), "each non-zero has ONE column index: (1 - s)(v + i) = v"),
            (100 * expected, "that is a percentage; return the sparsity as a fraction between 0 and 1"),
            (100 * v / (v + i), "that is the break-even DENSITY as a percentage; return the sparsity as a fraction, "
             "i / (v + i)"),
            (1 - (v + i) / v, "solving (1 - s)(v + i) = v gives s = 1 - v / (v + i), not 1 - (v + i) / v (a "
             "negative sparsity)"),
            (-expected, "your sign is flipped: a sparsity is between 0 and 1, s = i / (v + i)"),
        ]
        diagnose(
            variants,
            lambda value: value is not None and math.isclose(got, value, rel_tol=1e-9),
            describe=lambda message: f"{where}: you return {got:.4g}, expected {expected:.4g}: {message}.",
        )
        if not 0 <= got <= 1:
            fail(f"{where}: you return {got:.4g}: a sparsity is a fraction between 0 and 1\n{where}: expected "
                 f"i / (v + i) = {i} / ({v} + {i}) = {expected:.4g} (not a percentage, never negative).")
        fail(f"{where}: you return {got:.4g}, expected i / (v + i) = {i} / ({v} + {i}) = {expected:.4g}: CSR with "
             f"density d = 1 - s takes d (v + i) bytes per entry against v dense.")
    passed("memory_break_even = i / (v + i): 2/3 for fp32 values with int64 indices, 1/2 with int32, 4/5 for fp16 + int64")


# ---------------------------------------------------------------------------------------------
# 3. reading the break-even off measured timings
# ---------------------------------------------------------------------------------------------


def _finder_cases(seed: int) -> list[tuple[list[float], list[float], str]]:
    __tracebackhide__ = True
    rng = random.Random(seed)
    jitter = lambda: 1 + 0.02 * rng.random()  # noqa: E731 - different numbers per seed, same shapes
    cases = [
        ([0.5, 0.6, 0.7, 0.8, 0.9], [3.0 * jitter(), 2.0, 1.5, 0.5, 0.2], "a clean crossing between 70% and 80%"),
        ([0.5, 0.6, 0.7, 0.8, 0.9, 0.95], [3.0, 0.9 * jitter(), 1.6, 1.2, 0.6, 0.3],
         "a noisy dip below 1 at 60% before CSR is slower again at 70% and 80%"),
        ([0.9, 0.5, 0.8, 0.6, 0.7], [0.2, 3.0, 0.5 * jitter(), 2.0, 1.5], "the clean crossing given in shuffled order"),
        ([0.5, 0.75, 0.9, 0.99], [4.0, 2.5, 1.3 * jitter(), 1.05], "CSR never faster (ratio above 1 up to 99%)"),
        ([0.5, 0.7, 0.9], [0.8 * jitter(), 0.6, 0.3], "CSR faster at every measured sparsity"),
        ([0.5, 0.7, 0.9], [2.0, 1.0, 0.5 * jitter()], "a ratio of exactly 1 at 70% (a tie is not a win)"),
        ([0.6, 0.85, 0.95, 0.99], [1.8 * jitter(), 1.1, 0.7, 1.2], "CSR faster at 95% but slower again at 99%"),
        # only a tie at the highest sparsity separates "ratio >= 1 is slower" from "ratio > 1 is slower"
        ([0.5, 0.7, 0.9], [2.0 * jitter(), 1.5, 1.0], "a ratio of exactly 1 at the highest sparsity, 90% (a tie)"),
    ]
    return cases


def _first_crossing(s: list[float], r: list[float]) -> float | None:
    __tracebackhide__ = True
    points = sorted(zip(s, r))
    if points[0][1] < 1:
        return points[0][0]
    for (s0, r0), (s1, r1) in zip(points, points[1:]):
        if r0 >= 1 > r1:
            return s0 + (r0 - 1) / (r0 - r1) * (s1 - s0)
    return None


def _no_interpolation(s: list[float], r: list[float]) -> float | None:
    __tracebackhide__ = True
    points = sorted(zip(s, r))
    slower = [k for k, (_, ratio) in enumerate(points) if ratio >= 1]
    if not slower:
        return points[0][0]
    return None if slower[-1] == len(points) - 1 else points[slower[-1] + 1][0]


def _tie_as_win(s: list[float], r: list[float]) -> float | None:
    """The break-even of a finder that counts a ratio of exactly 1 as CSR faster (``ratio > 1`` is "slower")."""
    __tracebackhide__ = True
    points = sorted(zip(s, r))
    slower = [k for k, (_, ratio) in enumerate(points) if ratio > 1.0]
    if not slower:
        return points[0][0]
    if slower[-1] == len(points) - 1:
        return None
    (s0, r0), (s1, r1) = points[slower[-1]], points[slower[-1] + 1]
    return s0 + (r0 - 1) / (r0 - r1) * (s1 - s0)


def _unsorted(s: list[float], r: list[float]) -> float | None:
    __tracebackhide__ = True
    return crossing_after_last_slower(list(zip(s, r)))


def _reference(s: list[float], r: list[float]) -> float | None:
    __tracebackhide__ = True
    rows = [{"sparsity": a, "time_ratio": b, "batch": 1, "out_features": 1, "in_features": 1} for a, b in zip(s, r)]
    return break_even_sparsity(rows, 1)


def _fmt_sparsity(value: float | None) -> str:
    __tracebackhide__ = True
    return "None" if value is None else f"{value:.4g}"


def _same_sparsity(a: float | None, b: float | None) -> bool:
    __tracebackhide__ = True
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


@graded_check
def check_break_even(break_even: Callable, seed: int = 0) -> None:
    """Check ``break_even(sparsities, time_ratios)`` against the package's ``break_even_sparsity``:
    sort by sparsity; take the LAST point where CSR is not faster (ratio >= 1); interpolate linearly
    between it and the next point to where the ratio is 1; the lowest sparsity if no point is slower;
    ``None`` if the highest sparsity is not faster."""
    __tracebackhide__ = True
    name = "break_even"
    outcomes = []
    for sparsities, ratios, description in _finder_cases(seed):
        where = f"on {description} (sparsities {sparsities}, csr/dense time ratios {[round(x, 3) for x in ratios]})"
        s_in, r_in = list(sparsities), list(ratios)
        got = call(break_even, s_in, r_in, name=name,
                   returns="the break-even sparsity as a float, or None when CSR is not faster at the highest sparsity")
        if s_in != sparsities or r_in != ratios:
            fail(f"{where}: {name} modified its input lists (e.g. with .sort()); sort a copy: sorted(zip(s, r))")
        if got is not None:
            got = expect_number(got, f"{where}: {name}", "a sparsity, or None", kind="a number")
        variants = [
            (_first_crossing(sparsities, ratios),
             "that is the FIRST crossing; a single noisy point below 1 followed by slower points is not a break-even. "
             "Start after the LAST point where CSR is not faster (ratio >= 1)"),
            (_no_interpolation(sparsities, ratios),
             "that is the first measured point after the crossing; interpolate linearly between the last slower point "
             "(s0, r0) and the next one (s1, r1): s0 + (r0 - 1) / (r0 - r1) * (s1 - s0)"),
            (_unsorted(sparsities, ratios),
             "you did not sort the points by sparsity: sorted(zip(sparsities, ratios))"),
            (_reference(sparsities, [1 / x for x in ratios]),
             "you treated the ratio as dense / csr (a speed-up); the ratios here are csr / dense, below 1 = CSR faster"),
            (_tie_as_win(sparsities, ratios),
             "a ratio of exactly 1 is a tie, not a win: CSR is not faster there. Count ratio >= 1 as slower "
             "(not ratio > 1)"),
        ]
        outcomes.append((got, _reference(sparsities, ratios), variants, sparsities, ratios, where))
    wrong = [o for o in outcomes if not _same_sparsity(o[0], o[1])]
    if not wrong:
        passed("break_even reads the break-even sparsity off measured time ratios (sorted, after the last slower point, interpolated)")
        return
    # a mistake is named only when it gives the learner's answer on EVERY case: one answer (a None above
    # all) can equal a wrong variant by chance
    for index, (_, message) in enumerate(wrong[0][2]):
        if all(_same_sparsity(got, variants[index][0]) for got, _, variants, *_ in outcomes):
            got, expected, *_, where = wrong[0]
            fail(f"{where}: you return {_fmt_sparsity(got)}, expected {_fmt_sparsity(expected)}: {message}.")
    got, expected, _, sparsities, ratios, where = wrong[0]
    if got is None and all(x < 1 for x in ratios):
        fail(f"{where}: you return None, expected {expected:.4g}: CSR is faster at EVERY measured point, so the "
             "break-even is at or below the lowest measured sparsity: return the lowest measured sparsity.")
    if expected is None and max(zip(sparsities, ratios))[1] == 1:
        fail(f"{where}: you return {_fmt_sparsity(got)}, expected None: a ratio of exactly 1 is a tie, not a "
             "win. CSR is not faster at the highest sparsity, so there is no break-even: return None.")
    if expected is None:
        fail(f"{where}: you return {got}; CSR is not faster at the highest measured sparsity, so there is no "
             "break-even to report: return None.")
    if got is None:
        fail(f"{where}: you return None, expected {expected:.4g}: CSR is faster at the highest measured sparsity; "
             "the break-even lies after the last point where CSR is not faster.")
    fail(f"{where}: you return {got:.4g}, expected {expected:.4g} (the last point with ratio >= 1, then linear "
         "interpolation to ratio 1 with the next point).")
