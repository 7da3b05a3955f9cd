"""The graded checks of notebook 08 (2:4 sparsity): the reference passes, each classic mistake gets its diagnosis."""

from __future__ import annotations

import pytest
import torch

from pruning_course.checks.semi_structured import (
    check_compress_2_4,
    check_convert_to_2_4,
    check_decompress_2_4,
    check_nm_validator,
)
from pruning_course.masks import is_nm_sparse, nm_mask, per_matrix_mask, per_row_mask
from pruning_course.semi_structured import CompressedNM, compress_nm, decompress_nm

from check_support import fails_with, not_implemented


# ---------------------------------------------------------------------------------------------
# convert_to_2_4(weight, scores)
# ---------------------------------------------------------------------------------------------


def convert_reference(weight, scores):
    if weight.shape[1] % 4:
        raise ValueError("in_features must be a multiple of 4")
    return weight * nm_mask(scores, 2, 4)


def convert_with(mask_fn, check_width=True):
    def convert(weight, scores):
        if check_width and weight.shape[1] % 4:
            raise ValueError("in_features must be a multiple of 4")
        return weight * mask_fn(weight, scores)
    return convert


def _topk_mask(groups, n, largest=True):
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(2, torch.topk(groups, n, dim=2, largest=largest).indices, True)


def test_reference_conversion_passes(capsys):
    check_convert_to_2_4(convert_reference)
    check_convert_to_2_4(convert_reference, seed=1)
    assert "\u2713" in capsys.readouterr().out


def test_conversion_with_topk_and_where_passes():
    def convert(weight, scores):
        rows, cols = weight.shape
        if cols % 4:
            raise ValueError("width")
        keep = _topk_mask(scores.reshape(rows, cols // 4, 4), 2).reshape(rows, cols)
        return torch.where(keep, weight, torch.zeros_like(weight))

    check_convert_to_2_4(convert)


def test_conversion_not_implemented():
    fails_with(check_convert_to_2_4, not_implemented, "not implemented yet")


def test_conversion_keeping_the_two_smallest():
    fails_with(check_convert_to_2_4, convert_with(lambda w, s: nm_mask(-s, 2, 4)), "2 LOWEST")


def test_conversion_grouping_down_the_columns():
    fails_with(check_convert_to_2_4, convert_with(lambda w, s: nm_mask(s.t().contiguous(), 2, 4).t()),
               "down the columns", "INPUT dimension")


def test_conversion_with_non_consecutive_groups():
    def strided(w, s):
        rows, cols = s.shape
        groups = s.reshape(rows, 4, cols // 4).transpose(1, 2)
        return _topk_mask(groups, 2).transpose(1, 2).reshape(rows, cols)

    fails_with(check_convert_to_2_4, convert_with(strided), "CONSECUTIVE")


def test_conversion_keeping_half_of_each_row():
    message = fails_with(check_convert_to_2_4, convert_with(lambda w, s: per_row_mask(s, 0.5)), "50% of each ROW",
                         "EVERY group of 4")
    assert "keeps" in message


def test_conversion_keeping_half_of_the_matrix():
    fails_with(check_convert_to_2_4, convert_with(lambda w, s: per_matrix_mask(s, 0.5)), "whole matrix")


def test_conversion_ranking_by_magnitude_instead_of_scores():
    fails_with(check_convert_to_2_4, convert_with(lambda w, s: nm_mask(w.abs(), 2, 4)), "by |W|", "`scores`")


def test_conversion_ranking_signed_weights():
    fails_with(check_convert_to_2_4, convert_with(lambda w, s: nm_mask(w, 2, 4) if torch.equal(s, w.abs()) else nm_mask(s, 2, 4)),
               "not the 2 highest scores")


def test_conversion_returning_the_mask():
    fails_with(check_convert_to_2_4, lambda w, s: nm_mask(s, 2, 4), "keep-mask", "weight * mask")
    fails_with(check_convert_to_2_4, lambda w, s: nm_mask(s, 2, 4).to(w.dtype), "only 0 and 1")


def test_conversion_changing_the_kept_values():
    fails_with(check_convert_to_2_4, lambda w, s: 2 * convert_reference(w, s), "kept weight changed value")


def test_conversion_in_place():
    def in_place(weight, scores):
        if weight.shape[1] % 4:
            raise ValueError("width")
        return weight.mul_(nm_mask(scores, 2, 4))

    fails_with(check_convert_to_2_4, in_place, "in place")


def test_conversion_keeping_three_of_four():
    fails_with(check_convert_to_2_4, convert_with(lambda w, s: nm_mask(s, 3, 4)), "keeps 3 weights", "exactly 2")


def test_conversion_width_not_divisible():
    def padded(weight, scores):  # returns something for any width instead of raising
        if weight.shape[1] % 4:
            return weight.clone()
        return convert_reference(weight, scores)

    fails_with(check_convert_to_2_4, padded, "instead of raising ValueError")

    def crashing(weight, scores):
        rows, cols = weight.shape
        return weight * _topk_mask(scores.reshape(rows, cols // 4, 4), 2).reshape(rows, cols)

    fails_with(check_convert_to_2_4, crashing, "raised RuntimeError", "raise ValueError")


# ---------------------------------------------------------------------------------------------
# is_nm_sparse(weight, n, m)
# ---------------------------------------------------------------------------------------------


def test_reference_validator_passes(capsys):
    check_nm_validator(is_nm_sparse)
    check_nm_validator(is_nm_sparse, seed=1)
    assert "\u2713" in capsys.readouterr().out


def test_validator_raising_on_a_bad_width_passes():
    def strict(weight, n, m):
        if weight.shape[1] % m:
            raise ValueError("width")
        return is_nm_sparse(weight, n, m)

    check_nm_validator(strict)


def test_validator_returning_a_tensor_bool_passes():
    check_nm_validator(lambda w, n, m: (w.reshape(w.shape[0], -1, m) != 0).sum(dim=2).le(n).all()
                       if w.shape[1] % m == 0 else False)


def test_validator_not_implemented():
    fails_with(check_nm_validator, not_implemented, "not implemented yet")


def _counts(w, m):
    return (w.reshape(w.shape[0], w.shape[1] // m, m) != 0).sum(dim=2)


def test_validator_requiring_exactly_n():
    fails_with(check_nm_validator, lambda w, n, m: w.shape[1] % m == 0 and bool((_counts(w, m) == n).all()),
               "EXACTLY N", "AT MOST N")


def test_validator_with_strict_inequality():
    fails_with(check_nm_validator, lambda w, n, m: w.shape[1] % m == 0 and bool((_counts(w, m) < n).all()), "<= n")


def test_validator_on_the_wrong_axis():
    def columns(w, n, m):
        w = w.t().contiguous()
        return w.shape[1] % m == 0 and bool((_counts(w, m) <= n).all())

    fails_with(check_nm_validator, columns, "COLUMNS", "INPUT dimension")

    def columns_crashing(w, n, m):  # reshapes the rows into groups: crashes when out % m != 0
        rows, cols = w.shape
        if cols % m:
            return False
        return bool(((w.reshape(rows // m, m, cols) != 0).sum(dim=1) <= n).all())

    fails_with(check_nm_validator, columns_crashing, "COLUMNS", "answers False")


def test_validator_with_non_consecutive_groups():
    def strided(w, n, m):
        rows, cols = w.shape
        return cols % m == 0 and bool(((w.reshape(rows, m, cols // m) != 0).sum(dim=1) <= n).all())

    fails_with(check_nm_validator, strided, "CONSECUTIVE")


def test_validator_checking_rows_only():
    fails_with(check_nm_validator, lambda w, n, m: w.shape[1] % m == 0 and bool(((w != 0).sum(dim=1) <= w.shape[1] * n // m).all()),
               "per ROW")


def test_validator_checking_the_whole_matrix():
    fails_with(check_nm_validator, lambda w, n, m: w.shape[1] % m == 0 and float((w != 0).float().mean()) <= n / m,
               "whole matrix")


def test_validator_counting_zeros():
    fails_with(check_nm_validator,
               lambda w, n, m: w.shape[1] % m == 0 and bool(((w.reshape(w.shape[0], -1, m) == 0).sum(dim=2) <= n).all()),
               "ZEROS")


def test_validator_returning_per_group_results():
    fails_with(check_nm_validator, lambda w, n, m: _counts(w, m) <= n, "one bool", ".all()")


def test_validator_accepting_a_bad_width_or_crashing_on_it():
    fails_with(check_nm_validator, lambda w, n, m: True if w.shape[1] % m else is_nm_sparse(w, n, m), "return False")
    fails_with(check_nm_validator, lambda w, n, m: bool((_counts(w, m) <= n).all()), "raised RuntimeError", "return False")


def test_validator_with_an_unrecognised_mistake_gets_a_precise_message():
    message = fails_with(check_nm_validator, lambda w, n, m: not is_nm_sparse(w, n, m) if w.shape == (3, 8) else is_nm_sparse(w, n, m),
                         "all-zero weight", "expected True")
    assert "row 0 has" in message


# ---------------------------------------------------------------------------------------------
# compress_2_4(weight) / decompress_2_4(values, packed, shape)
# ---------------------------------------------------------------------------------------------


def compress_reference(weight):
    c = compress_nm(weight, 2, 4)
    return c.values, c.indices


def compress_student(weight, msb_first=False, sort_positions=True, gather_before_sort=False, one_byte_each=False,
                     dtype=torch.uint8):
    """The notebook's solution (topk on |W|, sorted positions), with switches for the classic mistakes."""
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // 4, 4)
    positions = torch.topk(groups.abs(), 2, dim=2).indices
    if gather_before_sort:
        values = torch.gather(groups, 2, positions).reshape(rows, cols // 2)
    if sort_positions:
        positions = positions.sort(dim=2).values
    if not gather_before_sort:
        values = torch.gather(groups, 2, positions).reshape(rows, cols // 2)
    fields = positions.reshape(-1, 4)
    if one_byte_each:
        return values, fields.reshape(-1).to(dtype)
    shifts = torch.tensor([6, 4, 2, 0]) if msb_first else torch.tensor([0, 2, 4, 6])
    return values, (fields << shifts).sum(dim=1).to(dtype)


def test_reference_compression_passes(capsys):
    check_compress_2_4(compress_reference)
    check_compress_2_4(compress_reference, seed=1)
    assert "0.5625" in capsys.readouterr().out


def test_topk_compression_passes():
    check_compress_2_4(compress_student)
    check_compress_2_4(lambda w: compress_student(w, sort_positions=False))  # any position order, kept in step


def test_compression_not_implemented():
    fails_with(check_compress_2_4, not_implemented, "not implemented yet")


def test_compression_with_reversed_index_order():
    fails_with(check_compress_2_4, lambda w: compress_student(w, msb_first=True), "reversed", "i0 | i1 << 2")


def test_compression_with_one_byte_per_index():
    fails_with(check_compress_2_4, lambda w: compress_student(w, one_byte_each=True), "byte count", "FOUR per byte")
    fails_with(check_compress_2_4, lambda w: compress_student(w, one_byte_each=True, dtype=torch.int64), "byte count")


def test_compression_with_two_indices_per_byte():
    def nibbles(weight):
        values, _ = compress_reference(weight)
        positions = torch.topk(weight.reshape(weight.shape[0], -1, 4).abs(), 2, dim=2).indices.sort(dim=2).values
        pairs = positions.reshape(-1, 2)
        return values, (pairs[:, 0] | pairs[:, 1] << 4).to(torch.uint8)

    fails_with(check_compress_2_4, nibbles, "byte count", "two positions per byte")


def test_compression_with_the_wrong_byte_dtype():
    fails_with(check_compress_2_4, lambda w: compress_student(w, dtype=torch.int32), "uint8", "B instead of")


def test_compression_keeping_the_zeros():
    fails_with(check_compress_2_4, lambda w: (w.clone(), compress_reference(w)[1]), "zeros are still stored")


def test_compression_with_values_out_of_step():
    fails_with(check_compress_2_4, lambda w: compress_student(w, gather_before_sort=True), "out of step")


def test_compression_changing_the_value_dtype():
    fails_with(check_compress_2_4, lambda w: (compress_reference(w)[0].float(), compress_reference(w)[1]), "dtype")


def test_compression_with_wrong_positions():
    def shifted(weight):
        values, packed = compress_reference(weight)
        return values, packed ^ 1  # flips the lowest bit of the first position of every byte

    fails_with(check_compress_2_4, shifted, "does not give the weight back", "row ")


def test_compression_in_place():
    def in_place(weight):
        out = compress_reference(weight)
        weight.zero_()
        return out

    fails_with(check_compress_2_4, in_place, "in place")


def decompress_reference(values, packed, shape):
    return decompress_nm(CompressedNM(values, packed, tuple(shape), 2, 4))


def decompress_student(values, packed, shape, msb_first=False, use_positions=True, group_offset=True):
    rows, cols = shape
    shifts = torch.tensor([6, 4, 2, 0]) if msb_first else torch.tensor([0, 2, 4, 6])
    positions = ((packed.to(torch.int64)[:, None] >> shifts) & 3).reshape(rows, cols // 4, 2)
    if not use_positions:
        positions = torch.tensor([0, 1]).expand(rows, cols // 4, 2)
    if not group_offset:
        return torch.zeros(rows, cols, dtype=values.dtype).scatter_(1, positions.reshape(rows, cols // 2), values)
    dense = torch.zeros(rows, cols // 4, 4, dtype=values.dtype)
    return dense.scatter_(2, positions, values.reshape(rows, cols // 4, 2)).reshape(rows, cols)


def test_reference_decompression_passes(capsys):
    check_decompress_2_4(decompress_reference)
    check_decompress_2_4(decompress_student, seed=1)
    assert "\u2713" in capsys.readouterr().out


def test_decompression_not_implemented():
    fails_with(check_decompress_2_4, not_implemented, "not implemented yet")


@pytest.mark.parametrize("kwargs,fragment", [
    ({"msb_first": True}, "reversed order"),
    ({"use_positions": False}, "positions 0 and 1"),
    ({"group_offset": False}, "COLUMNS of the row"),
])
def test_wrong_decompressions_are_diagnosed(kwargs, fragment):
    fails_with(check_decompress_2_4, lambda v, p, s: decompress_student(v, p, s, **kwargs), fragment)


def test_decompression_with_the_wrong_dtype_or_values():
    fails_with(check_decompress_2_4, lambda v, p, s: decompress_reference(v, p, s).float(), "dtype")
    fails_with(check_decompress_2_4, lambda v, p, s: decompress_reference(v, p, s) * 2, "differs from the original", "row ")


def test_checks_do_not_touch_the_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_nm_validator(is_nm_sparse)
    check_compress_2_4(compress_reference)
    assert torch.equal(torch.rand(3), expected)
