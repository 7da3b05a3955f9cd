"""Round-to-nearest (RTN) weight quantization on a min-max grid, per output row and group of inputs.

A ``b``-bit asymmetric grid for a group of weights ``x`` (one output row, ``g`` consecutive inputs)
is the one of the GPTQ reference code (Frantar et al., ICLR 2023, Sec. 5 "quantization grid"):

    x_min = min(min x, 0),   x_max = max(max x, 0),   scale = (x_max - x_min) / (2^b - 1),
    zero  = round(-x_min / scale),   code = clamp(round(x / scale) + zero, 0, 2^b - 1),
    x_hat = scale * (code - zero).

The range always contains 0, so a pruned weight (exactly 0) gets the code ``zero`` and comes back as
exactly 0: sparsity survives quantization. The symmetric grid centres the codes on
``zero = 2^(b-1)`` with ``scale = 2 max|x| / (2^b - 1)``.

Scales are stored in float16, so they are rounded *up* to the next float16 value before the codes
are computed: the grid then still covers ``[x_min, x_max]`` and every weight is within ``scale / 2``
of its dequantized value, and the float32 dequantization after saving and loading is bit-exact.
"""

from __future__ import annotations

import torch

from ..errors import InputError

SUPPORTED_BITS = (2, 3, 4, 8)
SCALE_DTYPE = torch.float16  # how scales are stored on disk; the in-memory float32 scales are exactly these


def check_bits(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise InputError(f"bits must be one of {', '.join(map(str, SUPPORTED_BITS))}, got {bits!r}")
    return bits


def check_group_size(columns: int, group_size: int) -> int:
    """The effective group size: ``group_size`` if it divides ``columns``, ``columns`` for ``-1`` (per row)."""
    if group_size == -1:
        return columns
    if not isinstance(group_size, int) or group_size < 1:
        raise InputError(f"group_size must be a positive integer or -1 (one group per row), got {group_size!r}")
    if columns % group_size:
        raise InputError(
            f"group_size {group_size} does not divide the input width {columns}: choose a divisor of {columns} "
            "(e.g. 32, 64) or -1 for one group per row"
        )
    return group_size


def round_up_to_fp16(scale: torch.Tensor) -> torch.Tensor:
    """The smallest float16-representable values ``>= scale`` (returned as float32)."""
    half = scale.to(SCALE_DTYPE)
    if torch.isinf(half).any():
        raise InputError("a quantization scale exceeds the float16 range (weights larger than ~1e6)")
    low = half.float() < scale
    half[low] = torch.nextafter(half[low], torch.full_like(half[low], float("inf")))
    return half.float()


def minmax_grid(x: torch.Tensor, bits: int, sym: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of the min-max grid of each row of ``x`` (last dimension = one group).

    Returns ``(scale, zero)`` with the shape of ``x`` minus its last dimension: ``scale`` float32
    (float16-representable, > 0), ``zero`` uint8 in ``[0, 2^bits - 1]``.
    """
    maxq = 2**check_bits(bits) - 1
    x = x.float()
    xmin = x.amin(dim=-1).clamp(max=0)
    xmax = x.amax(dim=-1).clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    empty = (xmin == 0) & (xmax == 0)  # an all-zero group: any grid will do
    xmin, xmax = torch.where(empty, -1.0, xmin), torch.where(empty, 1.0, xmax)
    scale = round_up_to_fp16((xmax - xmin) / maxq)
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2)
    else:
        zero = torch.round(-xmin / scale).clamp(0, maxq)
    return scale, zero.to(torch.uint8)


def quantize_to_grid(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes ``clamp(round(x / scale) + zero, 0, 2^b - 1)`` as float32 (broadcasting)."""
    return torch.clamp(torch.round(x / scale) + zero.float(), 0, 2**bits - 1)


def quantize_rtn(
    weight: torch.Tensor, bits: int = 4, group_size: int = 128, sym: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round every weight of an ``(out, in)`` matrix to its group's min-max grid.

    Groups are ``group_size`` consecutive input columns of one output row (``-1``: the whole row).
    Returns ``(codes, scales, zeros)``: ``codes`` uint8 ``(out, in)``, ``scales`` float32 and
    ``zeros`` uint8, both ``(out, in // group_size)``. :func:`dequantize` turns them back into weights.
    """
    if weight.dim() != 2:
        raise InputError(f"expected a 2-D (out_features, in_features) weight, got shape {tuple(weight.shape)}")
    check_bits(bits)
    rows, cols = weight.shape
    g = check_group_size(cols, group_size)
    groups = weight.detach().float().reshape(rows, cols // g, g)
    scales, zeros = minmax_grid(groups, bits, sym)
    codes = quantize_to_grid(groups, scales.unsqueeze(-1), zeros.unsqueeze(-1), bits)
    return codes.reshape(rows, cols).to(torch.uint8), scales, zeros


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """Float32 weights ``scale * (code - zero)`` from :func:`quantize_rtn` / ``gptq_quantize`` output.

    The group size is ``in // scales.shape[1]``.
    """
    rows, cols = codes.shape
    if scales.shape != zeros.shape or scales.shape[0] != rows or cols % scales.shape[1]:
        raise InputError(
            f"scales {tuple(scales.shape)} and zeros {tuple(zeros.shape)} do not fit codes {tuple(codes.shape)}: "
            "expected (out, in // group_size) each"
        )
    g = cols // scales.shape[1]
    groups = codes.float().reshape(rows, -1, g)
    return ((groups - zeros.float().unsqueeze(-1)) * scales.float().unsqueeze(-1)).reshape(rows, cols)
