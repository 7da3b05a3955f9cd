"""Graded checks of notebook 08 (2:4 semi-structured sparsity).

The notebook's exercises, each checked against the package:

``convert_to_2_4(weight, scores)``
    the textbook's conversion: in every group of 4 consecutive weights along the input dimension
    of each row, keep the 2 with the highest ``scores`` and zero the other 2; return the converted
    weight (:func:`pruning_course.masks.nm_mask`).
``is_nm_sparse(weight, n, m)``
    the validator: ``True`` when every group of ``m`` consecutive input weights of every row has
    *at most* ``n`` non-zeros (:func:`pruning_course.masks.is_nm_sparse`).
``compress_2_4(weight)`` / ``decompress_2_4(values, packed, shape)``
    the storage format of sparse tensor cores (Mishra et al. 2021, arXiv:2104.08378): the 2 kept
    values of every group plus their 2-bit positions, four positions per byte, least significant
    bits first (:func:`pruning_course.semi_structured.compress_nm` / ``decompress_nm``).

Each check uses seeded random inputs (several shapes, non-square, fp32 and fp16), compares with the
package and, on a mismatch, recomputes the classic wrong variants to say which mistake the
learner's result matches. ``seed`` selects another set of inputs (for hidden tests).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..masks import is_nm_sparse as reference_is_nm_sparse
from ..masks import nm_mask, per_matrix_mask, per_row_mask
from ..semi_structured import CompressedNM, compress_nm, decompress_nm
from . import (
    CheckFailed,
    call,
    call_expecting_value_error,
    diagnose,
    expect_tensor,
    fail,
    fmt_values,
    generator,
    graded_check,
    passed,
)

__all__ = [
    "check_convert_to_2_4",
    "check_nm_validator",
    "check_compress_2_4",
    "check_decompress_2_4",
]


def _topk_groups(scores: torch.Tensor, n: int, groups: torch.Tensor) -> torch.Tensor:
    """Keep-mask of the ``n`` highest of each group of a ``(rows, num_groups, size)`` view."""
    __tracebackhide__ = True
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(2, torch.topk(groups, n, dim=2).indices, True)


def _strided_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The classic non-consecutive grouping ``reshape(rows, m, cols // m)``: every (cols/m)-th column together."""
    __tracebackhide__ = True
    rows, cols = scores.shape
    groups = scores.reshape(rows, m, cols // m).transpose(1, 2)
    return _topk_groups(scores, n, groups).transpose(1, 2).reshape(rows, cols)


# ---------------------------------------------------------------------------------------------
# 1. the 2:4 conversion
# ---------------------------------------------------------------------------------------------


def _conversion_cases(seed: int):
    __tracebackhide__ = True
    gen = generator(80 + seed)
    cases = []
    for rows, cols, kind in ((8, 16, "wanda"), (12, 8, "magnitude"), (6, 20, "wanda"), (16, 32, "wanda"), (5, 12, "magnitude")):
        weight = torch.randn(rows, cols, generator=gen)
        weight = torch.where(weight == 0, torch.ones_like(weight), weight)  # no zeros: kept = non-zero
        if kind == "magnitude":
            scores = weight.abs()
        else:  # Wanda-like scores: |W| times a per-input-feature scale, so they rank differently from |W|
            scale = torch.logspace(-1, 1, cols)[torch.randperm(cols, generator=gen)]
            scores = weight.abs() * scale
        cases.append((weight, scores, kind))
    return cases


def _diagnose_conversion(mask: torch.Tensor, weight: torch.Tensor, scores: torch.Tensor, where: str) -> None:
    __tracebackhide__ = True
    rows, cols = scores.shape
    reference = nm_mask(scores, 2, 4)
    if torch.equal(mask, ~reference):
        fail(f"{where}: you keep the 2 LOWEST scores of every group of 4 and zero the 2 highest. Keep the 2 most "
             "important weights: torch.topk(groups, 2, dim=-1) (largest=True, the default) gives the ones to KEEP.")
    if not torch.equal(scores, weight.abs()) and torch.equal(mask, nm_mask(weight.abs(), 2, 4)):
        fail(f"{where}: you ranked the weights by |W|; rank them by the `scores` argument (for Wanda, |W| times the "
             "input-feature norm), so that the same function converts by magnitude or by Wanda score.")
    if rows % 4 == 0 and torch.equal(mask, nm_mask(scores.t().contiguous(), 2, 4).t()):
        fail(f"{where}: your groups run down the columns (groups of 4 consecutive ROWS, the output dimension). "
             "2:4 groups are 4 consecutive weights of one row, along the INPUT dimension (dim 1), because that is "
             "the operand the sparse tensor core reads: scores.reshape(out, in // 4, 4), topk along the last dim.")
    if torch.equal(mask, _strided_mask(scores, 2, 4)):
        fail(f"{where}: your groups are not 4 CONSECUTIVE weights: reshape(out, 4, in // 4) puts columns j, "
             f"j + in/4, j + in/2, j + 3in/4 in one group. Use scores.reshape(out, in // 4, 4) and rank along the "
             "last dimension.")
    if torch.equal(mask, per_row_mask(scores, 0.5)):
        counts = mask.reshape(rows, cols // 4, 4).sum(dim=2)
        r, g = (int(v) for v in (counts != 2).nonzero()[0])
        fail(f"{where}: you keep the highest 50% of each ROW; 2:4 is stricter: EVERY group of 4 consecutive weights "
             f"keeps exactly 2. Your row {r} keeps {int(counts[r, g])} in group {g} (columns {4 * g}..{4 * g + 3}): "
             "that is 50% sparsity, but no sparse kernel can use it. Rank within each group of 4.")
    if torch.equal(mask, per_matrix_mask(scores, 0.5)):
        fail(f"{where}: you keep the highest 50% of the whole matrix (one threshold); 2:4 keeps exactly 2 of every "
             "group of 4 consecutive weights in each row. Rank within each group of 4.")
    counts = mask.reshape(rows, cols // 4, 4).sum(dim=2)
    if not bool((counts == 2).all()):
        r, g = (int(v) for v in (counts != 2).nonzero()[0])
        fail(f"{where}: row {r}, group {g} (columns {4 * g}..{4 * g + 3}) keeps {int(counts[r, g])} weights; 2:4 "
             f"keeps exactly 2 of every 4 ({int((counts != 2).sum())} group(s) in all are wrong).")
    r, g = (int(v) for v in (mask != reference).reshape(rows, cols // 4, 4).any(dim=2).nonzero()[0])
    fail(f"{where}: row {r}, group {g} keeps 2 weights but not the 2 highest scores: scores "
         f"{fmt_values(scores[r, 4 * g:4 * g + 4], 4)}, you keep positions {mask[r, 4 * g:4 * g + 4].int().tolist()}, "
         f"expected {reference[r, 4 * g:4 * g + 4].int().tolist()}.")


@graded_check
def check_convert_to_2_4(convert_to_2_4: Callable, seed: int = 0) -> None:
    """Check ``convert_to_2_4(weight, scores)``: the weight with, in every group of 4 consecutive
    input weights of each row, the 2 lowest-scoring weights set to zero and the other 2 unchanged
    (the package's ``weight * nm_mask(scores, 2, 4)``); a width that is not a multiple of 4 raises
    ``ValueError``."""
    __tracebackhide__ = True
    name = "convert_to_2_4"
    for weight, scores, kind in _conversion_cases(seed):
        rows, cols = weight.shape
        where = f"on a {rows}x{cols} weight with {'|W|' if kind == 'magnitude' else 'Wanda-like'} scores"
        w_in, s_in = weight.clone(), scores.clone()
        result = call(convert_to_2_4, w_in, s_in, name=name, returns="the 2:4 weight, a tensor of the weight's shape")
        if not torch.equal(w_in, weight) or not torch.equal(s_in, scores):
            fail(f"{where}: {name} modified its {'weight' if not torch.equal(w_in, weight) else 'scores'} argument in "
                 "place (e.g. weight.mul_ or weight[...] = 0); return a new tensor: weight * mask")
        if isinstance(result, torch.Tensor) and result.dtype == torch.bool:
            fail(f"{where}: you returned the keep-mask (dtype bool); return the converted WEIGHT: weight * mask")
        result = expect_tensor(result, (rows, cols), f"the converted weight {where}", dtype=weight.dtype).detach()
        if not bool(torch.isfinite(result).all()):
            fail(f"{where}: the converted weight contains NaN or inf: {fmt_values(result)}")
        mask = result != 0
        if bool(((result != weight) & mask).any()):
            r, c = (int(v) for v in ((result != weight) & mask).nonzero()[0])
            if bool(((result == 0) | (result == 1)).all()):
                fail(f"{where}: your result holds only 0 and 1: that is the mask; return weight * mask")
            fail(f"{where}: a kept weight changed value: row {r}, column {c} is {float(result[r, c]):.6g}, the weight "
                 f"is {float(weight[r, c]):.6g}. The 2:4 conversion only zeroes weights; the kept ones stay as they are.")
        if torch.equal(mask, nm_mask(scores, 2, 4)):
            continue
        _diagnose_conversion(mask, weight, scores, where)

    weight = torch.randn(4, 10, generator=generator(89 + seed))
    raised, result = call_expecting_value_error(
        convert_to_2_4, weight, weight.abs(), name=name, what=f"{name} on a 4x10 weight",
        hint=". 10 input columns do not split into groups of 4: check `in_features % 4` first and raise ValueError "
             "with a message that says so.")
    if not raised:
        fail(f"{name} on a 4x10 weight returned {type(result).__name__} instead of raising ValueError: 10 input columns "
             "do not split into groups of 4; check `in_features % 4` first and raise ValueError.")
    passed("convert_to_2_4 keeps the 2 highest-scoring of every 4 consecutive input weights, unchanged, and zeroes the rest")


# ---------------------------------------------------------------------------------------------
# 2. the N:M validator
# ---------------------------------------------------------------------------------------------


def _random_nm(rows: int, cols: int, n: int, m: int, gen: torch.Generator, extra_zeros: float = 0.0) -> torch.Tensor:
    __tracebackhide__ = True
    weight = torch.randn(rows, cols, generator=gen)
    weight = torch.where(weight == 0, torch.ones_like(weight), weight)
    weight = weight * nm_mask(torch.rand(rows, cols, generator=gen), n, m)
    if extra_zeros:
        weight = weight * (torch.rand(rows, cols, generator=gen) >= extra_zeros)
    return weight


def _validator_cases(seed: int) -> list[tuple[torch.Tensor, int, int, bool, str]]:
    """``(weight, n, m, expected, description)``: each case catches at least one classic mistake."""
    __tracebackhide__ = True
    gen = generator(90 + seed)
    cases = []
    cases.append((_random_nm(8, 16, 2, 4, gen), 2, 4, True, "a 2:4 weight (exactly 2 non-zeros in every group of 4)"))
    fewer = _random_nm(8, 16, 2, 4, gen, extra_zeros=0.3)
    fewer[1, 4:8] = 0  # an all-zero group
    cases.append((fewer, 2, 4, True, "a 2:4 weight in which some groups have fewer than 2 non-zeros (weights that "
                  "were already zero, or an all-zero group)"))
    cases.append((_random_nm(16, 8, 2, 4, gen).t().contiguous(), 2, 4, False,
                  "a weight whose COLUMNS are 2:4 (groups of 4 consecutive rows) but whose rows are not"))
    rows_only = _random_nm(12, 16, 2, 4, gen)
    rows_only[0:4, 0] = 1.5  # four consecutive rows non-zero in column 0: not 2:4 down the columns
    rows_only[0:4, 1:4] = 0
    rows_only[0:4, 1] = 0.5
    cases.append((rows_only, 2, 4, True, "a 2:4 weight (along the rows) whose columns are not 2:4"))
    three = _random_nm(6, 12, 2, 4, gen)
    three[4, 8:12] = torch.tensor([1.0, -2.0, 0.5, 0.0])
    cases.append((three, 2, 4, False, "a 2:4 weight except for ONE group (row 4, columns 8..11) with 3 non-zeros"))
    half = torch.randn(4, 16, generator=gen).abs() + 0.1
    keep = torch.zeros(4, 16, dtype=torch.bool)
    keep[:, [0, 1, 2, 4, 8, 9, 10, 11]] = True
    cases.append((half * keep, 2, 4, False, "a weight with exactly 50% non-zeros in every ROW, but 3, 1, 4 and 0 in "
                  "its groups of 4"))
    strided = torch.randn(6, 16, generator=gen) + 3.0
    cases.append((strided * _strided_mask(torch.rand(6, 16, generator=gen), 2, 4), 2, 4, False,
                  "a weight that is 2:4 over NON-consecutive groups (every 4th column) but not over consecutive ones"))
    one_four = _random_nm(6, 12, 1, 4, gen)
    cases.append((one_four, 1, 4, True, "a 1:4 weight checked for 1:4"))
    cases.append((one_four, 2, 4, True, "a 1:4 weight checked for 2:4 (at most 2 of every 4: it qualifies)"))
    four_eight = _random_nm(5, 16, 4, 8, gen)
    cases.append((four_eight, 4, 8, True, "a 4:8 weight checked for 4:8"))
    not_24 = four_eight.clone()
    not_24[:, 0:8] = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 4.0])
    cases.append((not_24, 2, 4, False, "a 4:8 weight with 3 non-zeros in its first group of 4, checked for 2:4"))
    cases.append((torch.randn(4, 8, generator=gen) + 5.0, 2, 4, False, "a dense weight (no zeros)"))
    cases.append((torch.zeros(3, 8), 2, 4, True, "an all-zero weight"))
    return cases


def _as_bool(value, where: str) -> bool:
    __tracebackhide__ = True
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            fail(f"{where}: return one bool for the whole weight, got a tensor of shape {tuple(value.shape)}: "
                 "combine the per-group results with .all() and convert with bool(...)")
        value = value.item()
    if type(value).__name__ in ("bool", "bool_"):
        return bool(value)
    fail(f"{where}: return True or False, got {type(value).__name__} {value!r}")


def _variant_answers(cases) -> list[tuple[list[bool | None], str]]:
    """What each classic wrong validator answers on every case (``None``: that variant would crash)."""
    __tracebackhide__ = True

    def counts(w, m):
        __tracebackhide__ = True
        rows, cols = w.shape
        return (w.reshape(rows, cols // m, m) != 0).sum(dim=2)

    def columns(w, n, m):
        __tracebackhide__ = True
        if w.shape[0] % m:
            return None
        return reference_is_nm_sparse(w.t().contiguous(), n, m)

    def strided(w, n, m):
        __tracebackhide__ = True
        rows, cols = w.shape
        return bool(((w.reshape(rows, m, cols // m) != 0).sum(dim=1) <= n).all())

    variants = [
        (lambda w, n, m: bool((counts(w, m) == n).all()),
         "you require EXACTLY N non-zeros per group. N:M means AT MOST N: a group with fewer non-zeros (a weight that "
         "was already zero, an all-zero group, a 1:4 weight checked for 2:4) still runs on the sparse kernel. "
         "Use <= n"),
        (lambda w, n, m: bool((counts(w, m) < n).all()),
         "you compare with < n; a group may hold exactly N non-zeros: use <= n"),
        (columns,
         "you count down the COLUMNS (groups of m consecutive rows, the output dimension). N:M groups are m "
         "consecutive weights of one row, along the INPUT dimension: weight.reshape(out, in // m, m)"),
        (strided,
         "your groups are not CONSECUTIVE weights: reshape(out, m, in // m) puts every (in/m)-th column in one group; "
         "use weight.reshape(out, in // m, m) and count along the last dimension"),
        (lambda w, n, m: bool(((w != 0).sum(dim=1) <= w.shape[1] * n // m).all()),
         "you check the fraction of non-zeros per ROW; N:M constrains every group of m consecutive weights, and a row "
         "can be 50% sparse with 3 non-zeros in one group and 1 in the next"),
        (lambda w, n, m: float((w != 0).float().mean()) <= n / m,
         "you check the sparsity of the whole matrix; N:M constrains every group of m consecutive weights of every row"),
        (lambda w, n, m: bool(((w.reshape(w.shape[0], -1, m) == 0).sum(dim=2) <= n).all()),
         "you count the ZEROS of each group; count the non-zeros (weight != 0): at most N of them per group"),
    ]
    answers = []
    for fn, message in variants:
        row = []
        for weight, n, m, _expected, _ in cases:
            try:
                answer = fn(weight, n, m)
                row.append(None if answer is None else bool(answer))
            except Exception:  # noqa: BLE001 - e.g. a reshape that does not fit
                row.append(None)
        answers.append((row, message))
    return answers


@graded_check
def check_nm_validator(is_nm_sparse: Callable, seed: int = 0) -> None:
    """Check ``is_nm_sparse(weight, n, m)``: ``True`` iff every group of ``m`` consecutive input weights
    of every row has at most ``n`` non-zeros (``pruning_course.masks.is_nm_sparse``). A width that is
    not a multiple of ``m`` may return ``False`` or raise ``ValueError``."""
    __tracebackhide__ = True
    name = "is_nm_sparse"
    cases = _validator_cases(seed)
    answers, crashes = [], {}
    for k, (weight, n, m, expected, description) in enumerate(cases):
        assert reference_is_nm_sparse(weight, n, m) == expected, description  # the cases themselves
        where = f"on {description} ({weight.shape[0]}x{weight.shape[1]}, {n}:{m})"
        w_in = weight.clone()
        try:
            answer = call(is_nm_sparse, w_in, n, m, name=name, returns="True or False")
        except CheckFailed as error:
            if "not implemented yet" in str(error):
                raise
            answers.append(None)  # a crash: compared with the variants below, which may crash there too
            crashes[k] = f"{where}: {error}"
            continue
        if not torch.equal(w_in, weight):
            fail(f"{where}: {name} modified the weight in place; a validator must only read it")
        answers.append(_as_bool(answer, where))
    expected = [case[3] for case in cases]
    if answers != expected:
        wrong = [i for i, (a, e) in enumerate(zip(answers, expected)) if a is not None and a != e]
        for variant, message in _variant_answers(cases) if wrong else []:
            # a crash (None) of the learner's code or of the variant matches anything there; at least one
            # wrong answer must be one the variant gives
            explained = [i for i in wrong if variant[i] == answers[i]]
            if explained and all(a is None or v is None or a == v for a, v in zip(answers, variant)):
                weight, n, m, exp, description = cases[explained[0]]
                fail(f"{name} answers {answers[explained[0]]} on {description} ({n}:{m}), expected {exp}: {message}.")
        if crashes:
            fail(next(iter(crashes.values())))
        wrong = next(i for i, (a, e) in enumerate(zip(answers, expected)) if a != e)
        weight, n, m, exp, description = cases[wrong]
        rows, cols = weight.shape
        per_group = (weight.reshape(rows, cols // m, m) != 0).sum(dim=2)
        fail(f"{name} answers {answers[wrong]} on {description} ({rows}x{cols}, {n}:{m}), expected {exp}. The non-zeros "
             f"per group of {m} consecutive input weights: row 0 has {per_group[0].tolist()}; the weight is {n}:{m} "
             f"when every group of every row has at most {n}.")

    # a width that is not a multiple of m: False or ValueError, even when the whole groups are 2:4 and the
    # two leftover columns hold at most 2 non-zeros (a validator that drops or pads them says True)
    weight = _random_nm(4, 8, 2, 4, generator(99 + seed))
    weight = torch.cat([weight, torch.randn(4, 2, generator=generator(98 + seed))], dim=1)
    raised, answer = call_expecting_value_error(
        is_nm_sparse, weight, 2, 4, name=name, what=f"{name} on a 4x10 weight with 2:4",
        hint=". 10 columns do not split into groups of 4: return False (or raise ValueError) when in_features % m != 0.")
    if not raised:
        if _as_bool(answer, "on a 4x10 weight with 2:4") is not False:
            fail(f"{name} ignores the leftover columns when the width is not a multiple of m\n{name} says a 4x10 "
                 "weight is 2:4 sparse (its first 8 columns are 2:4, the last 2 form no group of 4), but 10 columns "
                 "do not split into groups of 4: return False (or raise ValueError) when in_features % m != 0.")
    passed(f"{name}: every group of m consecutive input weights has at most n non-zeros ({len(cases)} cases)")


# ---------------------------------------------------------------------------------------------
# 3. the compressed 2:4 format
# ---------------------------------------------------------------------------------------------


def _storage_cases(seed: int):
    __tracebackhide__ = True
    gen = generator(100 + seed)
    cases = []
    for rows, cols, dtype, extra in ((8, 16, torch.float32, 0.0), (6, 24, torch.float16, 0.0),
                                     (4, 32, torch.float32, 0.35), (10, 8, torch.bfloat16, 0.2)):
        weight = _random_nm(rows, cols, 2, 4, gen, extra_zeros=extra)
        if extra:
            weight[0, :4] = 0  # an all-zero group
        cases.append(weight.to(dtype))
    return cases


def _unpack(packed: torch.Tensor, msb_first: bool = False) -> torch.Tensor:
    __tracebackhide__ = True
    shifts = torch.tensor([6, 4, 2, 0]) if msb_first else torch.tensor([0, 2, 4, 6])
    return ((packed.to(torch.int64)[:, None] >> shifts) & 3).reshape(-1)


def _scatter(values: torch.Tensor, positions: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    __tracebackhide__ = True
    rows, cols = shape
    dense = torch.zeros(rows, cols // 4, 4, dtype=values.dtype)
    dense.scatter_(2, positions.reshape(rows, cols // 4, 2), values.reshape(rows, cols // 4, 2))
    return dense.reshape(rows, cols)


def _decode(values: torch.Tensor, packed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    __tracebackhide__ = True
    return decompress_nm(CompressedNM(values=values, indices=packed, shape=shape, n=2, m=4))


@graded_check
def check_compress_2_4(compress_2_4: Callable, seed: int = 0) -> None:
    """Check ``compress_2_4(weight) -> (values, packed)`` for a 2:4-sparse ``(rows, cols)`` weight:
    ``values`` of shape ``(rows, cols // 2)`` in the weight's dtype, and ``packed``, a ``uint8``
    tensor of ``rows * cols // 8`` bytes holding the in-group position (0..3) of every kept value, in
    the order of ``values.flatten()``, four per byte, least significant bits first. Any choice of
    kept positions that restores the weight exactly is accepted (groups with fewer than 2
    non-zeros may keep any zero)."""
    __tracebackhide__ = True
    name = "compress_2_4"
    for weight in _storage_cases(seed):
        rows, cols = weight.shape
        dtype = str(weight.dtype).removeprefix("torch.")
        where = f"on a {rows}x{cols} 2:4 weight in {dtype}"
        w_in = weight.clone()
        result = call(compress_2_4, w_in, name=name, returns="(values, packed): values (out, in // 2), packed uint8 positions")
        if not torch.equal(w_in, weight):
            fail(f"{where}: {name} modified the weight in place; build new tensors instead")
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            fail(f"{where}: return a tuple (values, packed), got {type(result).__name__}")
        values, packed = result
        if isinstance(values, torch.Tensor) and tuple(values.shape) == (rows, cols):
            fail(f"{where}: values has the full shape {(rows, cols)}: the zeros are still stored. Keep only the 2 "
                 f"values of each group: shape ({rows}, {cols // 2}).")
        values = expect_tensor(values, (rows, cols // 2), f"values {where}", dtype=weight.dtype).detach()
        if not isinstance(packed, torch.Tensor):
            fail(f"{where}: packed should be a torch.Tensor of dtype uint8, got {type(packed).__name__}")
        packed = packed.detach()
        n_idx, n_bytes = rows * cols // 2, rows * cols // 8
        if packed.numel() == n_idx and packed.numel() != n_bytes:
            fail(f"{where}: byte count: packed has {packed.numel()} entries, one per kept value "
                 f"({n_idx} x {packed.element_size()} B = {n_idx * packed.element_size()} B). A position 0..3 needs only 2 "
                 f"bits: pack FOUR per byte (i0 | i1 << 2 | i2 << 4 | i3 << 6), {n_bytes} bytes in all.")
        if packed.numel() == 2 * n_bytes:
            fail(f"{where}: byte count: packed has {packed.numel()} bytes, two positions per byte (4 bits each); a "
                 f"position 0..3 needs only 2 bits: pack FOUR per byte, {n_bytes} bytes in all.")
        if packed.dtype != torch.uint8:
            fail(f"{where}: packed should have dtype torch.uint8 (one byte per entry), got {packed.dtype}: "
                 f"{packed.numel()} x {packed.element_size()} B = {packed.numel() * packed.element_size()} B instead "
                 f"of {n_bytes} B. Convert with .to(torch.uint8).")
        if packed.dim() != 1 or packed.numel() != n_bytes:
            fail(f"{where}: byte count: packed should be a flat tensor of {n_idx} positions x 2 bits / 8 = {n_bytes} "
                 f"bytes, got shape {tuple(packed.shape)}")
        if torch.equal(_decode(values, packed, (rows, cols)), weight):
            continue
        positions = _unpack(packed, msb_first=True)
        if torch.equal(_scatter(values, positions, (rows, cols)), weight):
            fail(f"{where}: index order inside a byte is reversed: you put the first position in the HIGHEST bits. "
                 "The format is least significant bits first: byte = i0 | i1 << 2 | i2 << 4 | i3 << 6, where i0 "
                 "belongs to values.flatten()[0].")
        positions = _unpack(packed)
        decoded = _scatter(values, positions, (rows, cols))
        if torch.equal(decoded != 0, weight != 0) or torch.equal(
                decoded.abs().reshape(rows, -1, 4).sort(dim=2).values, weight.abs().reshape(rows, -1, 4).sort(dim=2).values):
            fail(f"{where}: values and positions are out of step: positions[k] must be the position of values[k]. "
                 "Take the values with torch.gather(groups, 2, positions) using the SAME positions you pack (if you "
                 "sort the positions, gather after sorting).")
        mismatch = (decoded != weight).reshape(rows, cols // 4, 4).any(dim=2).nonzero()
        r, g = (int(v) for v in mismatch[0])
        fail(f"{where}: decoding your (values, packed) does not give the weight back: row {r}, group {g} "
             f"(columns {4 * g}..{4 * g + 3}) is {fmt_values(weight[r, 4 * g:4 * g + 4], 4)}, your positions "
             f"{positions.reshape(rows, cols // 4, 2)[r, g].tolist()} and values "
             f"{fmt_values(values.reshape(rows, cols // 4, 2)[r, g], 2)} decode to {fmt_values(decoded[r, 4 * g:4 * g + 4], 4)}.")
    passed("compress_2_4: half the values plus 2-bit positions, four per byte (0.5625 of dense in fp16), restores the weight exactly")


@graded_check
def check_decompress_2_4(decompress_2_4: Callable, seed: int = 0) -> None:
    """Check ``decompress_2_4(values, packed, shape)``: the dense weight back from the format of
    :func:`check_compress_2_4` (made here by the package's ``compress_nm``), bit for bit."""
    __tracebackhide__ = True
    name = "decompress_2_4"
    for weight in _storage_cases(seed):
        rows, cols = weight.shape
        where = f"on a {rows}x{cols} 2:4 weight in {str(weight.dtype).removeprefix('torch.')}"
        c = compress_nm(weight, 2, 4)
        v_in, p_in = c.values.clone(), c.indices.clone()
        result = call(decompress_2_4, v_in, p_in, (rows, cols), name=name, returns="the dense (out, in) weight")
        if not torch.equal(v_in, c.values) or not torch.equal(p_in, c.indices):
            fail(f"{where}: {name} modified its inputs in place")
        result = expect_tensor(result, (rows, cols), f"the decompressed weight {where}", dtype=weight.dtype).detach()
        if torch.equal(result, weight):
            continue
        positions = _unpack(c.indices)
        variants = [
            (_scatter(c.values, _unpack(c.indices, msb_first=True), (rows, cols)),
             "you read the positions in reversed order inside each byte. The first position of a byte is in its "
             "LOWEST two bits: (byte >> 0) & 3, then (byte >> 2) & 3, (byte >> 4) & 3, (byte >> 6) & 3"),
            (_scatter(c.values, torch.tensor([0, 1]).repeat(rows * cols // 4), (rows, cols)),
             "you place the 2 values at positions 0 and 1 of every group: use the unpacked positions to put each "
             "value back where it came from"),
            (torch.zeros(rows, cols, dtype=weight.dtype).scatter_(
                1, positions.reshape(rows, cols // 2), c.values),
             "you use the positions 0..3 as COLUMNS of the row; they are positions inside the group: column = "
             "4 * group + position (or scatter into a (rows, cols // 4, 4) view along the last dim)"),
        ]
        diagnose(variants, lambda variant: torch.equal(result, variant), where)
        r, col = (int(v) for v in (result != weight).nonzero()[0])
        fail(f"{where}: the decompressed weight differs from the original: row {r}, column {col} is "
             f"{float(result[r, col]):.6g}, expected {float(weight[r, col]):.6g}; group {col // 4} should be "
             f"{fmt_values(weight[r, col // 4 * 4:col // 4 * 4 + 4], 4)}, yours is "
             f"{fmt_values(result[r, col // 4 * 4:col // 4 * 4 + 4], 4)}.")
    passed("decompress_2_4 restores the 2:4 weight bit for bit from its values and 2-bit positions")

