"""The graded checks of notebook 10 (compression pipeline): the reference passes, each classic mistake gets its diagnosis."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pruning_course.checks.quantize import (
    check_compressed_nbytes,
    check_pack_int4,
    check_quantize_rtn,
    check_unpack_int4,
)
from pruning_course.quantize import pack_int, quantize_rtn, unpack_int

from check_support import fails_with, not_implemented

# ---------------------------------------------------------------------------------------------
# quantize_rtn(weight, bits, group_size) -> (codes, scales, zeros)
# ---------------------------------------------------------------------------------------------


def rtn(weight, bits, g, *, include_zero=True, levels=None, round_zero=True, clamp=True, add_zero=True,
        one_step=False, groups="consecutive", guard=True, codes_dtype=torch.uint8, truncate=False, zero_sign=1):
    """A float32 min-max RTN quantizer with switches for the classic mistakes."""
    rows, cols = weight.shape
    maxq = 2**bits - 1
    if groups == "consecutive":
        x = weight.float().reshape(rows, cols // g, g)
    else:  # strided: every (cols/g)-th input in one group
        x = weight.float().reshape(rows, g, cols // g).transpose(1, 2)
    xmin, xmax = x.amin(-1), x.amax(-1)
    if include_zero:
        xmin, xmax = xmin.clamp(max=0), xmax.clamp(min=0)
    scale = (xmax - xmin) / (levels if levels is not None else maxq)
    if guard:
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = zero_sign * -xmin / scale
    if round_zero:
        zero = torch.round(zero)
    u = x / scale.unsqueeze(-1)
    if one_step:
        codes = torch.round((x - xmin.unsqueeze(-1)) / scale.unsqueeze(-1))
    elif truncate:
        codes = torch.trunc(u + zero.unsqueeze(-1))
    else:
        codes = torch.round(u) + (zero.unsqueeze(-1) if add_zero else 0)
    if clamp:
        codes = codes.clamp(0, maxq)
    if groups != "consecutive":
        codes = codes.transpose(1, 2)
    codes = codes.reshape(rows, cols)
    return codes.to(codes_dtype), scale, zero


def test_reference_quantizer_passes(capsys):
    check_quantize_rtn(lambda w, b, g: quantize_rtn(w, b, g))
    assert "\u2713" in capsys.readouterr().out


def test_float32_quantizer_passes():
    check_quantize_rtn(lambda w, b, g: rtn(w, b, g))
    # the zero point as a float holding integers, codes as int64: fine
    check_quantize_rtn(lambda w, b, g: (lambda c, s, z: (c.long(), s, z.float()))(*rtn(w, b, g)))


def test_quantizer_not_implemented():
    fails_with(check_quantize_rtn, not_implemented, "not implemented yet")


def test_symmetric_grid():
    fails_with(check_quantize_rtn, lambda w, b, g: quantize_rtn(w, b, g, sym=True), "symmetric grid", "asymmetric")

    def signed(w, b, g):  # codes -2^(b-1)+1 .. 2^(b-1)-1 around zero point 0
        rows, cols = w.shape
        x = w.reshape(rows, cols // g, g)
        scale = x.abs().amax(-1) / (2 ** (b - 1) - 1)
        codes = torch.round(x / scale.unsqueeze(-1)).reshape(rows, cols)
        return codes, scale, torch.zeros_like(scale)

    fails_with(check_quantize_rtn, signed, "symmetric grid")


def test_per_tensor_grid():
    def per_tensor(w, b, g):
        c, s, z = rtn(w, b, w.shape[1])
        return c, s.flatten()[:1] * 0 + float((w.max().clamp(min=0) - w.min().clamp(max=0)) / (2**b - 1)), z[:1, :1]

    fails_with(check_quantize_rtn, per_tensor, "whole matrix", "per-tensor")

    def broadcast(w, b, g):
        rows, cols = w.shape
        scale = float((w.max().clamp(min=0) - w.min().clamp(max=0)) / (2**b - 1))
        s = torch.full((rows, cols // g), scale)
        z = torch.round(-w.min().clamp(max=0) / scale).expand_as(s)
        return torch.clamp(torch.round(w / scale) + z[0, 0], 0, 2**b - 1), s, z

    fails_with(check_quantize_rtn, broadcast, "all your scales are equal", "per-tensor")


def test_per_row_grid():
    fails_with(check_quantize_rtn, lambda w, b, g: rtn(w, b, w.shape[1]), "one grid per output row", "group_size is ignored")

    def broadcast(w, b, g):
        c, s, z = rtn(w, b, w.shape[1])
        return c, s.expand(-1, w.shape[1] // g), z.expand(-1, w.shape[1] // g)

    fails_with(check_quantize_rtn, broadcast, "same for every group of a row")


def test_missing_clamp():
    message = fails_with(check_quantize_rtn, lambda w, b, g: rtn(w, b, g, clamp=False), "outside [0, 15]", "Clamp")
    assert "halfway" in message and "row 0, column 1" in message


def test_dividing_by_2_to_the_b():
    fails_with(check_quantize_rtn, lambda w, b, g: rtn(w, b, g, levels=2**b), "divide by 2^b - 1")


def test_unrounded_zero_point():
    fails_with(check_quantize_rtn, lambda w, b, g: rtn(w, b, g, round_zero=False), "not rounded", "exactly a grid point")


def test_zero_point_with_the_wrong_sign():
    fails_with(check_quantize_rtn, lambda w, b, g: rtn(w, b, g, zero_sign=-1, clamp=False), "wrong sign")


def test_rounding_in_one_step():
    fails_with(check_quantize_rtn, lambda w, b, g: rtn(w, b, g, one_step=True), "in one step", "half a step")


def test_no_zero_point_in_the_codes():
    fails_with(check_quantize_rtn, lambda w, b, g: rtn(w, b, g, add_zero=False, clamp=False), "without the zero point")
    fails_with(check_quantize_rtn, lambda w, b, g: rtn(w, b, g, add_zero=False), "without the zero point")


def test_range_without_zero():
    fails_with(check_quantize_rtn, lambda w, b, g: rtn(w, b, g, include_zero=False), "leaves out 0", "stays exactly 0")


def test_strided_groups():
    fails_with(check_quantize_rtn, lambda w, b, g: rtn(w, b, g, groups="strided"), "not consecutive")


def test_reducing_over_the_wrong_dimension():
    def wrong_dim(w, b, g):
        c, s, z = rtn(w, b, g)
        x = w.reshape(w.shape[0], -1, g)
        return c, x.amax(dim=1) - x.amin(dim=1), z

    fails_with(check_quantize_rtn, wrong_dim, "wrong dimension")


def test_grouped_codes_not_reshaped_back():
    fails_with(check_quantize_rtn, lambda w, b, g: (lambda c, s, z: (c.reshape(w.shape[0], -1, g), s, z))(*rtn(w, b, g)),
               "reshape them back")


def test_truncating_instead_of_rounding():
    fails_with(check_quantize_rtn, lambda w, b, g: rtn(w, b, g, truncate=True), "rounded DOWN")


def test_int8_codes_wrap_at_8_bits():
    fails_with(check_quantize_rtn, lambda w, b, g: rtn(w, b, g, codes_dtype=torch.int8), "int8", "uint8")


def test_returning_dequantized_weights():
    def dequantized(w, b, g):
        c, s, z = rtn(w, b, g)
        return (c.float() - z.repeat_interleave(g, 1)) * s.repeat_interleave(g, 1), s, z

    fails_with(check_quantize_rtn, dequantized, "dequantized weights")


def test_all_zero_group_without_a_guard():
    fails_with(check_quantize_rtn, lambda w, b, g: rtn(w, b, g, guard=False), "all 0", "must be positive")

    def nan_scale(w, b, g):
        c, s, z = rtn(w, b, g)
        return c, torch.where(s == 1, torch.full_like(s, float("nan")), s), z

    fails_with(check_quantize_rtn, nan_scale, "Guard the division")


def test_float16_scales_rounded_to_nearest():
    fails_with(check_quantize_rtn, lambda w, b, g: (lambda c, s, z: (c, s.half(), z))(*rtn(w, b, g)), "NEAREST", "float32")


def test_quantizer_modifying_the_weight_in_place():
    fails_with(check_quantize_rtn, lambda w, b, g: rtn(w.mul_(1.5), b, g), "in place")


def test_wrong_return_type():
    fails_with(check_quantize_rtn, lambda w, b, g: rtn(w, b, g)[0], "return a tuple (codes, scales, zeros)")


# ---------------------------------------------------------------------------------------------
# pack_int4(codes) / unpack_int4(packed, count)
# ---------------------------------------------------------------------------------------------


def pack(codes, order="low_first", pad=True, dtype=torch.uint8):
    flat = codes.reshape(-1).to(torch.int64)
    if pad:
        flat = torch.cat([flat, flat.new_zeros(flat.numel() % 2)])
    else:
        flat = flat[: flat.numel() // 2 * 2]
    if order == "halves":
        first, second = flat[: flat.numel() // 2], flat[flat.numel() // 2:]
    else:
        first, second = flat[0::2], flat[1::2]
    packed = (first << 4 | second) if order == "high_first" else (first | second << 4)
    return packed.to(dtype)


def test_reference_packing_passes():
    check_pack_int4(lambda c: pack_int(c, 4))
    check_pack_int4(pack)


def test_pack_not_implemented():
    fails_with(check_pack_int4, not_implemented, "not implemented yet")


def test_pack_one_code_per_byte():
    fails_with(check_pack_int4, lambda c: c.reshape(-1).clone(), "one per code")


def test_pack_losing_the_last_code():
    fails_with(check_pack_int4, lambda c: pack(c, pad=False), "last code is lost")


def test_pack_nibble_order():
    fails_with(check_pack_int4, lambda c: pack(c, order="high_first"), "nibble order reversed", "low nibble first")


def test_pack_halves():
    fails_with(check_pack_int4, lambda c: pack(c, order="halves"), "i + n/2")


def test_pack_signed_bytes():
    fails_with(check_pack_int4, lambda c: pack(c, dtype=torch.int8), "int8", "negative")


def test_pack_wrong_dtype_right_values():
    fails_with(check_pack_int4, lambda c: pack(c, dtype=torch.int64), "dtype is torch.int64", "uint8")


def test_pack_not_flattened():
    def per_row(c):
        if c.dim() == 1:
            return pack(c)
        return torch.stack([pack(row) for row in c])

    fails_with(check_pack_int4, per_row, "flat (1-D)")


def unpack(packed, count, order="low_first", keep_padding=False, signed=False, mask_low=True, flatten=True):
    b = packed.to(torch.int8) if signed else packed.to(torch.int64)
    low = (b & 15) if mask_low else b
    high = b >> 4 if signed else (b >> 4) & 15
    if order == "cat":
        values = torch.cat([low, high])
    else:
        pairs = torch.stack([high, low] if order == "high_first" else [low, high], dim=1)
        if not flatten:
            return pairs
        values = pairs.reshape(-1)
    return values if keep_padding else values[:count]


def test_reference_unpacking_passes():
    check_unpack_int4(lambda p, n: unpack_int(p, 4, n))
    check_unpack_int4(unpack)


def test_unpack_not_implemented():
    fails_with(check_unpack_int4, not_implemented, "not implemented yet")


def test_unpack_nibble_order():
    fails_with(check_unpack_int4, lambda p, n: unpack(p, n, order="high_first"), "nibble order reversed")


def test_unpack_not_interleaved():
    fails_with(check_unpack_int4, lambda p, n: unpack(p, n, order="cat"), "all low nibbles, then all high nibbles")


def test_unpack_keeping_the_padding():
    fails_with(check_unpack_int4, lambda p, n: unpack(p, n, keep_padding=True), "pads an odd count")


def test_unpack_signed_bytes():
    fails_with(check_unpack_int4, lambda p, n: unpack(p, n, signed=True), "SIGNED", "& 0xF")


def test_unpack_without_masking_the_low_nibble():
    fails_with(check_unpack_int4, lambda p, n: unpack(p, n, mask_low=False), "byte & 0x0F")


def test_unpack_not_flattened():
    fails_with(check_unpack_int4, lambda p, n: unpack(p, n, flatten=False), "flat (1-D)", "interleave")


def test_unpack_float_codes():
    fails_with(check_unpack_int4, lambda p, n: unpack(p, n).float(), "integers")


# ---------------------------------------------------------------------------------------------
# compressed_nbytes(rows, cols, kept, bits, group_size)
# ---------------------------------------------------------------------------------------------


def nbytes(rows, cols, kept, bits, g, *, mask=True, scale_bytes=2, zero_bytes=None, per_row=False, all_codes=False,
           ceil=math.ceil, zeros=True, mask_bytes_per_weight=False):
    groups = 1 if per_row else cols // g
    total = 0
    if mask:
        total += rows * cols if mask_bytes_per_weight else ceil(rows * cols / 8)
    total += ceil((rows * cols if all_codes else kept) * bits / 8)
    total += scale_bytes * rows * groups
    if zeros:
        total += ceil(rows * groups * bits / 8) if zero_bytes is None else zero_bytes * rows * groups
    return total


def test_reference_nbytes_passes(capsys):
    check_compressed_nbytes(nbytes)
    assert "\u2713" in capsys.readouterr().out
    check_compressed_nbytes(lambda *a: torch.tensor(nbytes(*a)))  # a 0-d tensor is fine
    check_compressed_nbytes(lambda *a: np.int64(nbytes(*a)))      # and so is a numpy integer


def test_nbytes_not_implemented():
    fails_with(check_compressed_nbytes, not_implemented, "not implemented yet")


@pytest.mark.parametrize("options,fragment", [
    ({"mask": False}, "left out the bitmask"),
    ({"per_row": True}, "one scale and one zero point per ROW"),
    ({"all_codes": True}, "code for every weight"),
    ({"all_codes": True, "mask": False}, "dense quantized format"),
    ({"scale_bytes": 4}, "4 bytes per scale"),
    ({"zero_bytes": 1}, "one byte per zero point"),
    ({"zero_bytes": 2}, "2 bytes (float16) per zero point"),
    ({"zeros": False}, "left out the zero points"),
    ({"mask_bytes_per_weight": True}, "one byte per weight for the mask"),
    ({"ceil": lambda v: v}, "round every part UP"),
])
def test_wrong_byte_counts_are_diagnosed(options, fragment):
    fails_with(check_compressed_nbytes, lambda *a: nbytes(*a, **options), fragment)


def test_scales_per_row_with_zero_points_per_group():
    def wrong(rows, cols, kept, bits, g):
        return nbytes(rows, cols, kept, bits, g) - 2 * rows * (cols // g) + 2 * rows

    fails_with(check_compressed_nbytes, wrong, "one scale per ROW")


def test_counting_bits_and_rounding_once():
    def bits_total(rows, cols, kept, bits, g):
        return rows * cols + kept * bits + 16 * rows * (cols // g) + rows * (cols // g) * bits

    fails_with(check_compressed_nbytes, bits_total, "counted BITS")
    fails_with(check_compressed_nbytes, lambda *a: math.ceil(bits_total(*a) / 8), "round up once at the end")


def test_nbytes_generic_and_wrong_type():
    fails_with(check_compressed_nbytes, lambda *a: nbytes(*a) + 3, "the package's encoder writes")
    fails_with(check_compressed_nbytes, lambda *a: str(nbytes(*a)), "as an int")


def test_checks_do_not_touch_the_global_rng():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    check_quantize_rtn(lambda w, b, g: quantize_rtn(w, b, g))
    check_pack_int4(pack)
    check_unpack_int4(unpack)
    check_compressed_nbytes(nbytes)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("seed", [1, 2])
def test_hidden_seeds_pass_the_reference(seed):
    check_quantize_rtn(lambda w, b, g: rtn(w, b, g), seed=seed)
    check_pack_int4(pack, seed=seed)
    check_unpack_int4(unpack, seed=seed)
    check_compressed_nbytes(nbytes, seed=seed)
