"""Graded checks of notebook 10 (the compression pipeline: prune, quantize, store).

The notebook's exercises, each checked against the package:

``quantize_rtn(weight, bits, group_size) -> (codes, scales, zeros)``
    round-to-nearest on the asymmetric min-max grid of every output row and group of
    ``group_size`` consecutive inputs (GPTQ's grid, Frantar et al. ICLR 2023, Sec. 5):
    ``scale = (x_max - x_min) / (2^b - 1)`` with the range widened to contain 0,
    ``zero = round(-x_min / scale)``, ``code = clamp(round(x / scale) + zero, 0, 2^b - 1)``
    (:func:`pruning_course.quantize.quantize_rtn`; its scales are rounded up to float16, the
    learner's float32 scales are accepted).
``pack_int4(codes)`` / ``unpack_int4(packed, count)``
    two 4-bit codes per byte, low nibble first: byte ``i`` holds code ``2i`` in bits 0-3 and code
    ``2i + 1`` in bits 4-7; an odd count is padded with a zero nibble
    (:func:`pruning_course.quantize.pack_int` / ``unpack_int`` with ``bits=4``).
``compressed_nbytes(rows, cols, kept, bits, group_size)``
    the bytes of one sparse + quantized ``(rows, cols)`` weight in the course's file format
    (bitmask storage of :func:`pruning_course.quantize.save_compressed`): the bitmask, the packed
    codes of the ``kept`` weights, one float16 scale and one packed ``bits``-bit zero point per
    row and group, each tensor padded to whole bytes (:func:`pruning_course.quantize.encode_weight`).

Each check uses seeded inputs (several shapes, odd sizes, all supported bit widths), compares with
the package and, on a mismatch, recomputes the classic wrong variants to say which mistake the
learner's result matches. ``seed`` selects another set of inputs (for hidden tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..quantize.model import QuantizedWeight
from ..packing import pack_int, unpack_int
from ..quantize.rtn import quantize_rtn as reference_quantize_rtn
from ..quantize.storage import encode_weight
from . import call, diagnose, expect_number, expect_tensor, fail, fmt_values, generator, graded_check, passed

__all__ = [
    "check_quantize_rtn",
    "check_pack_int4",
    "check_unpack_int4",
    "check_compressed_nbytes",
]

TIE = 1e-3  # |fraction - 0.5| below this: a rounding tie, either neighbour is accepted
FP16_STEP = 2.0**-10  # the package rounds scales UP to float16: at most one float16 step above the float32 value


# ---------------------------------------------------------------------------------------------
# 1. round-to-nearest on the min-max grid
# ---------------------------------------------------------------------------------------------


def _rtn_cases(seed: int):
    """``(weight, bits, group_size, description)``: rows of different scale, groups that do not contain 0,
    an all-zero group, 8-bit codes above 127, and a value exactly halfway past the top of the grid."""
    __tracebackhide__ = True
    gen = generator(200 + seed)
    cases = []
    for rows, cols, bits, g in ((8, 32, 4, 8), (6, 48, 3, 16), (5, 24, 8, 12), (7, 30, 4, 10)):
        weight = torch.randn(rows, cols, generator=gen) * torch.logspace(-2, 0, rows)[torch.randperm(rows, generator=gen)].unsqueeze(1)
        weight[1] = weight[1].abs() + 0.3 * float(weight[1].abs().max())   # a row of positive weights: 0 is outside
        weight[2] = -weight[2].abs() - 0.2 * float(weight[2].abs().max())  # a row of negative weights
        if bits == 3:
            weight[3, :g] = 0.0  # a pruned group: every weight is zero
        cases.append((weight, bits, g, f"on a {rows}x{cols} weight, {bits} bits, groups of {g}"))
    # a tie: scale (11.5 + 3.5) / 15 = 1, zero = round(3.5) = 4, and 11.5 rounds (half to even) to 12: 12 + 4 = 16
    tie = torch.tensor([[-3.5, 11.5, 0.0, 2.0, 1.0, -1.0, 0.25, 3.0],
                        [0.5, -2.0, 7.25, 1.5, -0.75, 4.0, 2.5, -3.0]])
    cases.append((tie, 4, 4, "on the 2x8 weight [[-3.5, 11.5, 0, 2, 1, -1, 0.25, 3], [0.5, -2, 7.25, 1.5, -0.75, 4, 2.5, -3]], "
                              "4 bits, groups of 4"))
    return cases


def _ranges(weight: torch.Tensor, g: int, include_zero: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    __tracebackhide__ = True
    rows, cols = weight.shape
    groups = weight.double().reshape(rows, cols // g, g)
    xmin, xmax = groups.amin(dim=-1), groups.amax(dim=-1)
    if include_zero:
        xmin, xmax = xmin.clamp(max=0), xmax.clamp(min=0)
    return xmin, xmax


def _matches_where(value: torch.Tensor, variant: torch.Tensor, rtol: float = 1e-4, mask: torch.Tensor | None = None) -> bool:
    """``value`` equals ``variant`` to ``rtol`` (relative, entry by entry) where ``mask`` is True."""
    __tracebackhide__ = True
    if tuple(value.shape) != tuple(variant.shape):
        return False
    value, variant = value.double(), variant.double()
    if mask is not None:
        value, variant = value[mask], variant[mask]
    if value.numel() == 0:
        return False
    return bool(((value - variant).abs() <= rtol * variant.abs() + 1e-12).all())


def _as_float(value, what: str, shape: tuple[int, ...], where: str) -> torch.Tensor:
    __tracebackhide__ = True
    tensor = expect_tensor(value, shape, f"{what} {where}").detach()
    if tensor.is_complex() or tensor.dtype == torch.bool:
        fail(f"{where}: {what} should hold real numbers, got dtype {tensor.dtype}")
    return tensor.double()


def _check_rtn_shapes(result, rows: int, cols: int, g: int, where: str):
    __tracebackhide__ = True
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        fail(f"{where}: return a tuple (codes, scales, zeros), got {type(result).__name__}"
             + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else ""))
    codes, scales, zeros = result
    groups = cols // g
    if isinstance(codes, torch.Tensor) and tuple(codes.shape) == (rows, groups, g):
        fail(f"{where}: codes have the grouped shape {(rows, groups, g)}; reshape them back to the weight's shape "
             f"({rows}, {cols}).")
    for name, value in (("scales", scales), ("zeros", zeros)):
        if not isinstance(value, torch.Tensor):
            fail(f"{where}: {name} should be a torch.Tensor of shape ({rows}, {groups}), got {type(value).__name__}")
        shape = tuple(value.shape)
        if shape == (rows, groups):
            continue
        if value.numel() == 1:
            fail(f"{where}: {name} has a single value: one grid for the whole matrix (per-tensor). Every output row "
                 f"and every group of {g} consecutive inputs gets its own grid: {name} of shape ({rows}, {groups}) "
                 f"(reshape the weight to (rows, cols // group_size, group_size) and reduce over the last dim).")
        if shape in ((rows,), (rows, 1)) and groups > 1:
            fail(f"{where}: {name} has shape {shape}: one grid per output row, group_size is ignored. Each row is "
                 f"split into {groups} groups of {g} consecutive inputs with a grid each: shape ({rows}, {groups}).")
        if shape == (rows, groups, 1):
            fail(f"{where}: {name} has shape {shape}; drop the last dimension (amin/amax without keepdim, or "
                 f".squeeze(-1)): expected ({rows}, {groups}).")
        if shape == (rows, g) and g != groups:
            fail(f"{where}: {name} has shape {shape}: one value per position INSIDE a group. You reduced over the "
                 f"wrong dimension of the (rows, cols // group_size, group_size) = ({rows}, {groups}, {g}) view: "
                 f"take min and max over the last dimension (dim=-1).")
        if value.numel() == rows * groups:
            fail(f"{where}: {name} has shape {shape}; return it as ({rows}, {groups}): one entry per output row "
                 f"and group.")
        fail(f"{where}: {name} should have shape ({rows}, cols // group_size) = ({rows}, {groups}), got {shape}")
    if not isinstance(codes, torch.Tensor):
        fail(f"{where}: codes should be a torch.Tensor of shape ({rows}, {cols}), got {type(codes).__name__}")
    return codes, scales, zeros


def _diagnose_scales(s: torch.Tensor, weight: torch.Tensor, bits: int, g: int, nonempty: torch.Tensor, where: str) -> None:
    """Fail with the grid mistake that the learner's scales ``s`` (float64) match."""
    __tracebackhide__ = True
    rows, cols = weight.shape
    maxq = 2**bits - 1
    xmin, xmax = _ranges(weight, g)
    span = xmax - xmin
    raw_min, raw_max = _ranges(weight, g, include_zero=False)
    amax = weight.double().abs().reshape(rows, cols // g, g).amax(dim=-1)
    whole = weight.double()
    tensor_span = float(max(whole.max(), 0) - min(whole.min(), 0))
    row_span = (whole.amax(dim=1).clamp(min=0) - whole.amin(dim=1).clamp(max=0)).unsqueeze(1).expand_as(s)
    strided = whole.reshape(rows, g, cols // g)  # every (cols/g)-th input in one "group"
    strided_span = strided.amax(dim=1).clamp(min=0) - strided.amin(dim=1).clamp(max=0)
    fix = (f"scale = (x_max - x_min) / (2^b - 1) per row and group, with x_min = min(min(x), 0) and "
           f"x_max = max(max(x), 0) ({maxq} steps between {2**bits} grid points)")

    def like(variant: torch.Tensor) -> bool:
        __tracebackhide__ = True
        return _matches_where(s, variant, 1e-4, nonempty) or _matches_where(s, variant * (1 + FP16_STEP / 2), FP16_STEP, nonempty)

    if like(span / 2**bits):
        fail(f"{where}: your scales are (x_max - x_min) / 2^{bits}; {2**bits} codes 0..{maxq} have {maxq} steps "
             f"between them: divide by 2^b - 1 = {maxq}. With / 2^b the top of the range lies beyond the last code.")
    if like((raw_max - raw_min) / maxq) or like((raw_max - raw_min) / 2**bits):
        fail(f"{where}: your range [min(x), max(x)] leaves out 0 in groups whose weights all have one sign (row 1 "
             f"is all positive, row 2 all negative). Widen it: x_min = min(min(x), 0), x_max = max(max(x), 0). Then "
             f"0 is a grid point (code = zero), and a pruned weight stays exactly 0 after quantization.")
    ratio = (s / amax)[nonempty & (amax > 0)]
    if ratio.numel() > 1 and float(ratio.max() / ratio.min()) < 1 + 1e-3:
        c = float(ratio.mean())
        fail(f"{where}: symmetric grid: your scales are {c:.4g} x max|x| of each group, so the grid is centred on 0 "
             f"whatever the weights. The asymmetric min-max grid spans [x_min, x_max] of the group: {fix}, and the "
             f"zero point zero = round(-x_min / scale) shifts it (row 1 of this weight is all positive: a symmetric "
             f"grid wastes half its codes on negative values it never uses).")
    if tensor_span > 0 and (like(torch.full_like(s, tensor_span / maxq)) or like(torch.full_like(s, tensor_span / 2**bits))
                            or bool((s == s.flatten()[0]).all())):
        fail(f"{where}: all your scales are equal: one grid for the whole matrix (per-tensor). Every output row and "
             f"every group of {g} consecutive inputs gets its own: reshape to (rows, cols // group_size, group_size) "
             f"= ({rows}, {cols // g}, {g}) and take min / max over the last dim.")
    if s.shape[1] > 1 and (like(row_span / maxq) or like(row_span / 2**bits) or bool((s == s[:, :1]).all())):
        fail(f"{where}: your scales are the same for every group of a row: one grid per row, group_size is "
             f"ignored. Each group of {g} consecutive inputs has its own x_min and x_max.")
    if g != cols // g and (like(strided_span / maxq) or like(strided_span / 2**bits)):
        fail(f"{where}: your groups are not consecutive inputs: reshape(rows, group_size, cols // group_size) puts "
             f"every {cols // g}-th column in one group. Use weight.reshape(rows, cols // group_size, group_size) and "
             f"reduce over the last dim.")
    reference = span / maxq
    bad = (~(s >= reference * (1 - 1e-6)) | ~(s <= reference * (1 + FP16_STEP) + 1e-12)) & nonempty
    r, k = (int(v) for v in bad.nonzero()[0])
    fail(f"{where}: row {r}, group {k} (columns {k * g}..{k * g + g - 1}): your scale is {float(s[r, k]):.6g}, expected "
         f"{float(reference[r, k]):.6g} = ({float(xmax[r, k]):.4g} - ({float(xmin[r, k]):.4g})) / {maxq}: {fix}.")


def _near_tie(t: torch.Tensor) -> torch.Tensor:
    __tracebackhide__ = True
    return ((t - torch.floor(t)) - 0.5).abs() < TIE


def _accepted(value: torch.Tensor, t: torch.Tensor, offset: torch.Tensor, maxq: int) -> torch.Tensor:
    """Where ``value`` is ``clamp(round(t) + offset, 0, maxq)``, either neighbour at a rounding tie."""
    __tracebackhide__ = True
    exact = torch.clamp(torch.round(t) + offset, 0, maxq)
    low = torch.clamp(torch.floor(t) + offset, 0, maxq)
    high = torch.clamp(torch.ceil(t) + offset, 0, maxq)
    tie = _near_tie(t)
    return (value == exact) | (tie & ((value == low) | (value == high)))


def _diagnose_zeros(z: torch.Tensor, s: torch.Tensor, weight: torch.Tensor, bits: int, g: int,
                    nonempty: torch.Tensor, where: str) -> None:
    __tracebackhide__ = True
    maxq = 2**bits - 1
    xmin, _ = _ranges(weight, g)
    t = -xmin / s
    if not bool(torch.isfinite(z).all()):
        fail(f"{where}: your zero points contain NaN or inf: {fmt_values(z.flatten())}")
    fix = "zero = round(-x_min / scale), an integer in [0, 2^b - 1]"
    if bool((z != torch.round(z)).any()):
        if _matches_where(z, t, 1e-4, nonempty):
            fail(f"{where}: your zero points are not rounded (e.g. {float(z[nonempty][0]):.4g}). Round them: {fix}. "
                 "The zero point is a CODE: only an integer zero point makes 0.0 exactly a grid point (the code "
                 "`zero` dequantizes to scale * (zero - zero) = 0), so that pruned weights stay exactly 0, and only "
                 "an integer can be stored in b bits next to the codes.")
        fail(f"{where}: your zero points are not integers (e.g. {fmt_values(z[z != torch.round(z)])}): {fix}.")
    if _matches_where(z, -t, 1e-6, nonempty) or _matches_where(z, torch.round(-t), 1e-6, nonempty & (t > 0.5)):
        fail(f"{where}: your zero points have the wrong sign: x_min <= 0, so zero = round(-x_min / scale) >= 0; you "
             "computed round(x_min / scale).")
    if bool((z == z.flatten()[0]).all()) and bool((torch.round(t) != z.flatten()[0]).any()):
        fail(f"{where}: all your zero points are {int(z.flatten()[0])}: that is a symmetric grid's (or no) zero "
             f"point. The asymmetric grid has its own per group: {fix}.")
    bad = ~_accepted(z, t, torch.zeros_like(t), maxq) & nonempty
    if bool((z < 0).any() | (z > maxq).any()):
        fail(f"{where}: your zero points must lie in [0, {maxq}] (they are codes), got {fmt_values(z[(z < 0) | (z > maxq)])}")
    r, k = (int(v) for v in bad.nonzero()[0])
    fail(f"{where}: row {r}, group {k}: your zero point is {int(z[r, k])}, expected round(-x_min / scale) = "
         f"round({float(-xmin[r, k]):.4g} / {float(s[r, k]):.4g}) = {int(torch.round(t[r, k]))}: {fix}.")


def _diagnose_codes(codes: torch.Tensor, raw_dtype: torch.dtype, s: torch.Tensor, z: torch.Tensor,
                    weight: torch.Tensor, bits: int, g: int, where: str) -> None:
    __tracebackhide__ = True
    rows, cols = weight.shape
    maxq = 2**bits - 1
    se, ze = s.repeat_interleave(g, dim=1), z.repeat_interleave(g, dim=1)
    x = weight.double()
    u = x / se
    xmin, _ = _ranges(weight, g)
    fix = f"code = clamp(round(x / scale) + zero, 0, {maxq})"
    if not bool(torch.isfinite(codes).all()):
        fail(f"{where}: your codes contain NaN or inf: {fmt_values(codes[~torch.isfinite(codes)])}")
    if bool((codes != torch.round(codes)).any()):
        if _matches_where(codes, (torch.clamp(torch.round(u) + ze, 0, maxq) - ze) * se, 1e-4):
            fail(f"{where}: you returned the dequantized weights scale * (code - zero); return the integer codes "
                 f"themselves: {fix}.")
        fail(f"{where}: your codes are not integers (e.g. {fmt_values(codes[codes != torch.round(codes)])}): round "
             f"them: {fix}.")
    ok = _accepted(codes, u, ze, maxq)
    if bool(ok.all()):
        return
    if raw_dtype == torch.int8 and bool((codes < 0).any()):
        fail(f"{where}: your codes are torch.int8, which holds -128..127: {bits}-bit codes go up to {maxq}, and codes "
             "above 127 wrap around to negative numbers. Return them as torch.uint8 (0..255).")
    def same(variant: torch.Tensor) -> bool:  # uint8 wraps negative codes around: -1 becomes 255
        __tracebackhide__ = True
        return bool((codes == variant).all()) or (raw_dtype == torch.uint8 and bool((codes == variant % 256).all()))

    if bool(_accepted(codes, u, torch.zeros_like(ze), maxq).all()) or same(torch.round(u)):
        fail(f"{where}: your codes are round(x / scale) without the zero point: add it. {fix}: the zero point moves "
             f"the grid so that the most negative weight gets code 0.")
    if same(torch.round(u) - ze) or bool(_accepted(codes, u, -ze, maxq).all()):
        fail(f"{where}: you SUBTRACT the zero point; add it: {fix} (dequantization subtracts it again: "
             "x_hat = scale * (code - zero)).")
    if bool(_accepted(codes, (x - xmin.repeat_interleave(g, dim=1)) / se, torch.zeros_like(ze), maxq).all()):
        fail(f"{where}: you round (x - x_min) / scale in one step. The grid points are scale * (k - zero) with the "
             f"ROUNDED zero point, so round each weight on its own and add the integer zero: {fix}. Rounding "
             "(x - x_min) / scale mixes the zero point's rounding error into every weight: errors reach a whole step "
             "instead of half a step.")
    if same(torch.clamp(torch.floor(u + 1e-6) + ze, 0, maxq)) or same(torch.trunc(u + ze + 1e-6).clamp(0, maxq)):
        fail(f"{where}: your codes are rounded DOWN (floor, or .to(torch.uint8) / int() which truncate): round to the "
             f"NEAREST grid point with torch.round before converting: {fix}.")
    if raw_dtype == torch.uint8 and same(torch.round(u) + ze) and bool(((torch.round(u) + ze) < 0).any()):
        r, c = (int(v) for v in ((torch.round(u) + ze) < 0).nonzero()[0])
        fail(f"{where}: row {r}, column {c}: your code is {int(codes[r, c])}: round(x / scale) + zero = "
             f"{int(torch.round(u[r, c]) + ze[r, c])} wrapped around in uint8. Clamp the codes to [0, 2^b - 1] before "
             f"converting: code = clamp(round(x / scale) + zero, 0, {maxq}).")
    out = (codes < 0) | (codes > maxq)
    if bool(out.any()):
        r, c = (int(v) for v in out.nonzero()[0])
        unclamped = same(torch.where(ok, codes, torch.round(u) + ze))
        why = (f"the weight {float(weight[r, c]):.6g} lies exactly halfway between two grid points of its group "
               f"(scale {float(s[r, c // g]):.4g}, zero {int(z[r, c // g])}) and rounds past the end of the grid"
               if unclamped and bool(_near_tie(u[r, c])) else f"the weight is {float(weight[r, c]):.6g}")
        fail(f"{where}: row {r}, column {c}: your code {int(codes[r, c])} is outside [0, {maxq}]: {why}. Clamp the "
             f"codes to [0, 2^b - 1]: {fix}. A code that does not fit in {bits} bits cannot be stored (packed in "
             f"{bits} bits, {maxq + 1} would become 0).")
    r, c = (int(v) for v in (~ok).nonzero()[0])
    expected = int(torch.clamp(torch.round(u[r, c]) + ze[r, c], 0, maxq))
    fail(f"{where}: row {r}, column {c}: weight {float(weight[r, c]):.6g} with scale {float(s[r, c // g]):.6g} and zero "
         f"{int(z[r, c // g])} should get code {expected} ({fix}), yours is {int(codes[r, c])}.")


@graded_check
def check_quantize_rtn(quantize_rtn: Callable, seed: int = 0) -> None:
    """Check ``quantize_rtn(weight, bits, group_size) -> (codes, scales, zeros)``.

    ``codes`` ``(rows, cols)`` integers in ``[0, 2^b - 1]``; ``scales`` and ``zeros`` ``(rows, cols //
    group_size)``. The scales must be ``(x_max - x_min) / (2^b - 1)`` of the group (range widened to
    contain 0), in float32 or rounded up to float16 as the package does; zero points and codes are
    then checked exactly against the grid the learner's scales define (either neighbour at a rounding
    tie). An all-zero group may have any positive scale and integer zero point but its codes must be
    the zero point.
    """
    __tracebackhide__ = True
    name = "quantize_rtn"
    for weight, bits, g, where in _rtn_cases(seed):
        rows, cols = weight.shape
        maxq = 2**bits - 1
        w_in = weight.clone()
        result = call(quantize_rtn, w_in, bits, g, name=name, returns="(codes, scales, zeros): codes (out, in), scales and zeros (out, in // group_size)")
        if not torch.equal(w_in, weight):
            fail(f"{where}: {name} modified the weight in place; compute new tensors instead")
        codes, scales, zeros = _check_rtn_shapes(result, rows, cols, g, where)
        raw_dtype = codes.dtype
        codes = _as_float(codes, "codes", (rows, cols), where)
        s = _as_float(scales, "scales", (rows, cols // g), where)
        z = _as_float(zeros, "zeros", (rows, cols // g), where)
        _, ref_scales, _ = reference_quantize_rtn(weight, bits, g)
        xmin, xmax = _ranges(weight, g)
        nonempty = (xmax - xmin) > 0

        if not bool(torch.isfinite(s).all()):
            if bool((~torch.isfinite(s) & ~nonempty).any()):
                fail(f"{where}: your scale is NaN or inf for a group whose weights are all 0 (row 3, columns 0..{g - 1}: "
                     "a pruned group): x_max - x_min = 0 there. Guard the division: use scale = 1 (any positive "
                     "number) where the range is 0; the zero weights then get code zero and stay exactly 0.")
            fail(f"{where}: your scales contain NaN or inf: {fmt_values(s[~torch.isfinite(s)])}")
        if bool((s[~nonempty] <= 0).any()):
            fail(f"{where}: your scale is {float(s[~nonempty & (s <= 0)][0]):.4g} for a group whose weights are all 0 "
                 "(a pruned group); a scale must be positive (you would divide by it): use 1 where the range is 0.")
        reference = (xmax - xmin) / maxq
        scale_ok = ((s >= reference * (1 - 1e-6)) & (s <= ref_scales.double() * (1 + 1e-6))) | ~nonempty
        if not bool(scale_ok.all()):
            if scales.dtype in (torch.float16, torch.bfloat16) and _matches_where(s, reference.to(scales.dtype).double(), 1e-6, nonempty):
                fail(f"{where}: your scales are {scales.dtype}, rounded to the NEAREST representable value, which can be "
                     "below (x_max - x_min) / (2^b - 1): the grid then no longer reaches the group's largest weight. "
                     "Return float32 scales (the package rounds them UP to float16 only for storage).")
            _diagnose_scales(s, weight, bits, g, nonempty, where)
        t = -xmin / s
        zero_ok = _accepted(z, t, torch.zeros_like(t), maxq) | (~nonempty & (z == torch.round(z)) & (z >= 0) & (z <= maxq))
        if not bool(zero_ok.all()):
            _diagnose_zeros(z, s, weight, bits, g, nonempty, where)
        _diagnose_codes(codes, raw_dtype, s, z, weight, bits, g, where)
    passed("quantize_rtn: one asymmetric min-max grid per row and group, integer zero points, codes rounded to "
           "nearest and clamped to [0, 2^b - 1]")


# ---------------------------------------------------------------------------------------------
# 2. packing int4 codes, two per byte
# ---------------------------------------------------------------------------------------------


def _nibble_pack_cases(seed: int) -> list[torch.Tensor]:
    __tracebackhide__ = True
    gen = generator(300 + seed)
    every = torch.arange(16, dtype=torch.uint8)[torch.randperm(16, generator=gen)]  # every nibble value, bytes >= 128 too
    return [
        every,
        torch.randint(0, 16, (3, 6), generator=gen, dtype=torch.uint8),   # a (rows, cols) matrix of codes
        torch.randint(0, 16, (11,), generator=gen, dtype=torch.uint8),    # an odd count: one nibble of padding
        torch.randint(0, 16, (5, 7), generator=gen, dtype=torch.uint8),   # odd everything
        torch.tensor([13], dtype=torch.uint8),
    ]


def _pack_variant(codes: torch.Tensor, order: str) -> torch.Tensor:
    """Bytes of the classic wrong layouts: ``high_first`` nibble order, or ``halves`` (code i with code i + n/2)."""
    __tracebackhide__ = True
    flat = codes.reshape(-1).to(torch.int64)
    flat = torch.cat([flat, flat.new_zeros(flat.numel() % 2)])
    if order == "halves":
        half = flat.numel() // 2
        first, second = flat[:half], flat[half:]
    else:
        first, second = flat[0::2], flat[1::2]
    if order == "high_first":
        return (first << 4 | second).to(torch.uint8)
    return (first | second << 4).to(torch.uint8)


@graded_check
def check_pack_int4(pack_int4: Callable, seed: int = 0) -> None:
    """Check ``pack_int4(codes)``: the 4-bit codes of any shape, row-major, two per byte, low nibble first
    (``byte i = codes[2i] | codes[2i + 1] << 4``), an odd count padded with a zero nibble, as a 1-D
    ``uint8`` tensor of ``ceil(n / 2)`` bytes (:func:`pruning_course.quantize.pack_int` with 4 bits)."""
    __tracebackhide__ = True
    name = "pack_int4"
    for codes in _nibble_pack_cases(seed):
        n = codes.numel()
        where = f"on {n} codes of shape {tuple(codes.shape)} ({fmt_values(codes, 6)})"
        c_in = codes.clone()
        packed = call(pack_int4, c_in, name=name, returns="a 1-D torch.uint8 tensor of ceil(n / 2) bytes")
        if not torch.equal(c_in, codes):
            fail(f"{where}: {name} modified the codes in place; build a new tensor")
        if not isinstance(packed, torch.Tensor):
            fail(f"{where}: return a torch.Tensor of dtype uint8, got {type(packed).__name__}")
        packed = packed.detach()
        expected = pack_int(codes, 4)
        nbytes = expected.numel()
        if packed.numel() == n and n > 1:
            fail(f"{where}: you return {n} entries, one per code. Two 4-bit codes share a byte: "
                 f"byte i = codes[2i] | codes[2i + 1] << 4, ceil({n} / 2) = {nbytes} bytes in all.")
        if packed.numel() == n // 2 and n % 2:
            fail(f"{where}: you return {n // 2} bytes for {n} codes: the last code is lost. With an odd count, pad with "
                 f"a zero code first: ceil({n} / 2) = {nbytes} bytes, the last one holding the last code in its low "
                 "nibble.")
        if packed.dim() != 1:
            fail(f"{where}: return a flat (1-D) tensor of {nbytes} bytes (codes.reshape(-1) first: the codes are "
                 f"packed in row-major order), got shape {tuple(packed.shape)}")
        if packed.numel() != nbytes:
            fail(f"{where}: {n} codes of 4 bits take ceil({n} / 2) = {nbytes} bytes, you return {packed.numel()}")
        if packed.dtype != torch.uint8:
            if packed.dtype == torch.int8:
                fail(f"{where}: your bytes are torch.int8, which turns every byte >= 128 (high nibble >= 8) into a "
                     "negative number; the format stores unsigned bytes: .to(torch.uint8).")
            if not packed.is_floating_point() and torch.equal(packed.to(torch.int64), expected.to(torch.int64)):
                fail(f"{where}: the values are right but the dtype is {packed.dtype} ({packed.element_size()} bytes per "
                     "entry): store them as bytes, .to(torch.uint8).")
            fail(f"{where}: packed should have dtype torch.uint8, got {packed.dtype}")
        if torch.equal(packed, expected):
            continue
        if torch.equal(packed, _pack_variant(codes, "high_first")):
            fail(f"{where}: nibble order reversed: you put the FIRST code of each pair in the high nibble. The format is "
                 "low nibble first: byte i = codes[2i] | (codes[2i + 1] << 4).")
        if n > 2 and torch.equal(packed, _pack_variant(codes, "halves")):
            fail(f"{where}: you pair code i with code i + n/2 (the first half with the second half). Neighbours share "
                 "a byte: codes[0::2] in the low nibbles, codes[1::2] in the high nibbles.")
        i = int((packed != expected).nonzero()[0])
        flat = codes.reshape(-1)
        pair = [int(flat[2 * i]), int(flat[2 * i + 1]) if 2 * i + 1 < n else 0]
        fail(f"{where}: byte {i} should hold codes {2 * i} and {2 * i + 1} ({pair[0]} and {pair[1]}): "
             f"{pair[0]} | {pair[1]} << 4 = {int(expected[i])}, yours is {int(packed[i])}.")
    passed("pack_int4 stores two codes per byte, low nibble first, ceil(n / 2) bytes")


@graded_check
def check_unpack_int4(unpack_int4: Callable, seed: int = 0) -> None:
    """Check ``unpack_int4(packed, count)``: the first ``count`` codes back from :func:`check_pack_int4`'s
    format (made here by the package's ``pack_int``), as a 1-D tensor of integers ``0..15`` (uint8
    like the package, or any integer dtype)."""
    __tracebackhide__ = True
    name = "unpack_int4"
    for codes in _nibble_pack_cases(seed):
        flat = codes.reshape(-1)
        n = flat.numel()
        packed = pack_int(codes, 4)
        where = f"on {packed.numel()} bytes ({fmt_values(packed, 4)}) holding {n} codes"
        p_in = packed.clone()
        result = call(unpack_int4, p_in, n, name=name, returns="a 1-D torch.uint8 tensor of count codes")
        if not torch.equal(p_in, packed):
            fail(f"{where}: {name} modified the packed bytes in place")
        if not isinstance(result, torch.Tensor):
            fail(f"{where}: return a torch.Tensor of codes, got {type(result).__name__}")
        result = result.detach()
        if result.dim() != 1:
            if result.numel() in (n, 2 * packed.numel()):
                fail(f"{where}: return a flat (1-D) tensor of {n} codes, got shape {tuple(result.shape)}: "
                     "interleave the low and high nibbles (torch.stack([low, high], dim=1).reshape(-1)).")
            fail(f"{where}: return a 1-D tensor of {n} codes, got shape {tuple(result.shape)}")
        if result.numel() == n + 1 and n % 2:
            fail(f"{where}: you return {n + 1} codes for count={n}: the zero nibble that pads an odd count is not a "
                 "code. Return the first `count` values.")
        if result.numel() != n:
            fail(f"{where}: return exactly count = {n} codes, got {result.numel()}")
        if result.is_floating_point() or result.dtype == torch.bool:
            fail(f"{where}: codes should be integers (torch.uint8 like the package), got {result.dtype}")
        values = result.to(torch.int64)
        expected = unpack_int(packed, 4, n).to(torch.int64)
        if torch.equal(values, expected):
            continue
        if bool((values < 0).any()):
            fail(f"{where}: you return negative codes ({fmt_values(values[values < 0])}): the bytes were read as SIGNED "
                 "(torch.int8). A byte >= 128 is then negative and >> 4 shifts in ones (-16 >> 4 = -1 instead of 15). "
                 "Work on unsigned bytes (uint8, or .to(torch.int64) of the uint8 tensor) and mask with & 0xF.")
        if bool((values > 15).any()):
            fail(f"{where}: you return codes above 15 ({fmt_values(values[values > 15])}): the low nibble is "
                 "byte & 0x0F; the byte itself still contains the high nibble.")
        b = packed.to(torch.int64)
        low, high = b & 15, b >> 4
        variants = [
            (torch.stack([high, low], dim=1).reshape(-1)[:n],
             "nibble order reversed: you read the HIGH nibble as the first code of each byte. The first code is in "
             "the low nibble: codes[2i] = byte & 0xF, codes[2i + 1] = byte >> 4"),
            (torch.cat([low, high])[:n],
             "you return all low nibbles, then all high nibbles. The codes of a byte are neighbours: interleave them "
             "(torch.stack([low, high], dim=1).reshape(-1))"),
            (torch.cat([high, low])[:n],
             "you return all high nibbles, then all low nibbles: interleave them instead, low nibble first "
             "(torch.stack([byte & 0xF, byte >> 4], dim=1).reshape(-1))"),
        ]
        diagnose(variants, lambda variant: torch.equal(values, variant), where)
        i = int((values != expected).nonzero()[0])
        fail(f"{where}: code {i} should be {int(expected[i])} (the {'low' if i % 2 == 0 else 'high'} nibble of byte "
             f"{i // 2} = {int(packed[i // 2])}), yours is {int(values[i])}.")
    passed("unpack_int4 restores the codes: low nibble first, unsigned, padding dropped")


# ---------------------------------------------------------------------------------------------
# 3. bytes of a sparse + quantized matrix in the course's format
# ---------------------------------------------------------------------------------------------


def _nbytes_cases(seed: int) -> list[tuple[int, int, int, int, int]]:
    __tracebackhide__ = True
    gen = generator(400 + seed)
    cases = [(64, 192, 64 * 192 // 2, 4, 64), (48, 96, 1001, 4, 32), (10, 24, 77, 3, 8), (30, 64, 30 * 64, 8, 16),
             (7, 40, 139, 4, 20), (20, 80, 0, 4, 16), (3, 21, 10, 3, 7)]
    rows, cols = 12 + int(torch.randint(0, 8, (1,), generator=gen)), 96
    cases.append((rows, cols, int(torch.randint(1, rows * cols, (1,), generator=gen)), 3, 32))
    return cases


def _encoded(rows: int, cols: int, kept: int, bits: int, g: int, gen: torch.Generator) -> dict[str, int]:
    """Bytes per tensor of a real ``(rows, cols)`` weight with ``kept`` non-zeros, encoded by the package."""
    __tracebackhide__ = True
    weight = torch.zeros(rows * cols)
    where = torch.randperm(rows * cols, generator=gen)[:kept]
    signs = torch.randint(0, 2, (kept,), generator=gen) * 2 - 1
    weight[where] = (0.5 + 0.5 * torch.rand(kept, generator=gen)) * signs  # |w| >= 0.5: no kept weight rounds to 0
    weight = weight.reshape(rows, cols)
    q = QuantizedWeight(*reference_quantize_rtn(weight, bits, g), bits)
    encoded = encode_weight(q.dequantize(), q, storage="bitmask")
    if encoded.meta["kept"] != kept:
        raise RuntimeError(f"internal: {kept} weights were meant to be stored, the encoder stores {encoded.meta['kept']}")
    return {suffix: t.numel() * t.element_size() for suffix, t in encoded.tensors.items()}


@graded_check
def check_compressed_nbytes(compressed_nbytes: Callable, seed: int = 0) -> None:
    """Check ``compressed_nbytes(rows, cols, kept, bits, group_size)`` against the bytes the package's
    encoder (:func:`pruning_course.quantize.encode_weight`, bitmask storage) really writes for such a
    weight: ``ceil(rows * cols / 8)`` (bitmask) + ``ceil(kept * bits / 8)`` (codes) +
    ``2 * rows * groups`` (float16 scales) + ``ceil(rows * groups * bits / 8)`` (zero points), with
    ``groups = cols // group_size``."""
    __tracebackhide__ = True
    name = "compressed_nbytes"
    gen = generator(450 + seed)
    for rows, cols, kept, bits, g in _nbytes_cases(seed):
        where = f"for rows={rows}, cols={cols}, kept={kept}, bits={bits}, group_size={g}"
        parts = _encoded(rows, cols, kept, bits, g, gen)
        expected = sum(parts.values())
        value = expect_number(call(compressed_nbytes, rows, cols, kept, bits, g, name=name, returns="the number of bytes, an int"), f"{where}: {name}", kind="the number of bytes as an int")
        if value == expected:
            continue
        groups = cols // g
        mask, codes, scales, zeros = parts["mask"], parts["qweight"], parts["scales"], parts["qzeros"]
        assert mask == math.ceil(rows * cols / 8) and codes == math.ceil(kept * bits / 8)
        assert scales == 2 * rows * groups and zeros == math.ceil(rows * groups * bits / 8)
        per_row = 2 * rows + math.ceil(rows * bits / 8)
        variants = [
            (codes + scales + zeros,
             f"you left out the bitmask: {rows * cols} bits, ceil({rows} * {cols} / 8) = {mask} bytes, say WHICH "
             "weights are stored; without it the kept codes cannot be put back in place"),
            (mask + codes + 2 * rows + zeros,
             f"you count one scale per ROW ({rows}); there is one per row AND group: {rows} x {groups} scales of "
             f"2 bytes (float16)"),
            (mask + codes + per_row,
             f"you count one scale and one zero point per ROW; there is one of each per row AND group "
             f"({rows} x {cols} // {g} = {rows * groups})"),
            (mask + math.ceil(rows * cols * bits / 8) + scales + zeros,
             f"you store a code for every weight ({rows * cols}); only the kept = {kept} weights have codes, the "
             "bitmask says where they go"),
            (math.ceil(rows * cols * bits / 8) + scales + zeros,
             f"you count a code for every weight and no bitmask: that is the dense quantized format; here only the "
             f"{kept} kept weights are stored, plus a bitmask of {mask} bytes"),
            (mask + codes + 4 * rows * groups + zeros,
             "you count 4 bytes per scale; the format stores scales in float16: 2 bytes each"),
            (mask + codes + scales + rows * groups,
             f"you count one byte per zero point; zero points are packed like the codes, {bits} bits each: "
             f"ceil({rows * groups} * {bits} / 8) = {zeros} bytes"),
            (mask + codes + scales + 2 * rows * groups,
             f"you count 2 bytes (float16) per zero point; zero points are integers packed like the codes, {bits} "
             f"bits each: ceil({rows * groups} * {bits} / 8) = {zeros} bytes"),
            (mask + codes + scales,
             f"you left out the zero points: one {bits}-bit zero point per row and group, packed: {zeros} bytes"),
            (rows * cols + codes + scales + zeros,
             f"you count one byte per weight for the mask (a bool tensor); the bitmask packs 8 weights per byte: "
             f"ceil({rows * cols} / 8) = {mask} bytes"),
            (8 * expected, "you counted BITS, not bytes: divide each part by 8 (rounding up)"),
            (rows * cols + kept * bits + 16 * rows * groups + rows * groups * bits,
             "you counted BITS, not bytes: divide each part by 8 (rounding up)"),
            (math.ceil((rows * cols + kept * bits + 16 * rows * groups + rows * groups * bits) / 8),
             "you round up once at the end; each tensor (bitmask, codes, zero points) is stored on its own and padded "
             "to whole bytes, so round up every part separately"),
            (rows * cols / 8 + kept * bits / 8 + scales + rows * groups * bits / 8,
             "bytes are whole numbers: each packed tensor is padded to whole bytes, so round every part UP "
             "(math.ceil) before adding"),
        ]
        diagnose(
            variants,
            lambda variant: value == variant and variant != expected,
            describe=lambda message: f"{where}: you return {value:g} bytes, expected {expected}: {message}.",
        )
        fail(f"{where}: you return {value:g} bytes, the package's encoder writes {expected}: the bitmask (1 bit per "
             f"weight), the codes of the kept weights ({bits} bits each), one float16 scale and one {bits}-bit zero "
             f"point per row and group; each of these four tensors padded to whole bytes.")
    passed("compressed_nbytes counts the bitmask, the packed codes of the kept weights and one float16 scale and "
           "packed zero point per row and group, byte for byte as the file format stores them")
