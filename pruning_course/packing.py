"""Packing small integers into bytes: two int4 codes per byte, eight mask bits per byte, ...

Quantized codes (:mod:`pruning_course.quantize`), sparsity bitmasks and the N:M index fields of
:func:`pruning_course.semi_structured.compress_nm` all use it. The layout is one little-endian bit
stream: bit ``j`` of value ``i`` is bit number
``i * bits + j`` of the stream, and stream bit ``k`` is bit ``k % 8`` of byte ``k // 8``. For int4
that is "low nibble first": byte ``i`` holds value ``2i`` in bits 0-3 and value ``2i + 1`` in
bits 4-7. ``n`` values of ``bits`` bits take exactly ``ceil(n * bits / 8)`` bytes.
"""

from __future__ import annotations

import math

import torch

from .errors import InputError


def _chunk(bits: int) -> tuple[int, int]:
    """(values, bytes) of the smallest whole-byte chunk: (2, 1) for 4 bits, (8, 3) for 3 bits."""
    if not 1 <= bits <= 8:
        raise InputError(f"can pack 1 to 8 bits per value, got {bits}")
    values = 8 // math.gcd(bits, 8)
    return values, values * bits // 8


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` bits take: ``ceil(count * bits / 8)``."""
    return (count * bits + 7) // 8


def pack_int(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integers ``< 2**bits`` (any shape, row-major) into a flat uint8 tensor."""
    per, nbytes = _chunk(bits)
    flat = values.reshape(-1).to(torch.int64)
    if flat.numel() and (flat.min() < 0 or flat.max() >= 2**bits):
        raise InputError(f"values must lie in [0, {2**bits - 1}] to be packed in {bits} bits")
    count = flat.numel()
    flat = torch.cat([flat, flat.new_zeros((-count) % per)]).reshape(-1, per)
    words = (flat << (bits * torch.arange(per, device=flat.device))).sum(dim=1)
    stream = (words.unsqueeze(1) >> (8 * torch.arange(nbytes, device=flat.device))) & 0xFF
    return stream.reshape(-1)[: packed_nbytes(count, bits)].to(torch.uint8)


def unpack_int(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first ``count`` values of ``bits`` bits from :func:`pack_int`'s output, as a 1-D uint8 tensor."""
    per, nbytes = _chunk(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise InputError(f"expected a 1-D uint8 tensor of packed values, got {packed.dtype} {tuple(packed.shape)}")
    if packed.numel() < packed_nbytes(count, bits):
        raise InputError(f"{packed.numel()} bytes hold fewer than {count} values of {bits} bits")
    stream = packed.to(torch.int64)
    stream = torch.cat([stream, stream.new_zeros((-stream.numel()) % nbytes)]).reshape(-1, nbytes)
    words = (stream << (8 * torch.arange(nbytes, device=packed.device))).sum(dim=1)
    values = (words.unsqueeze(1) >> (bits * torch.arange(per, device=packed.device))) & (2**bits - 1)
    return values.reshape(-1)[:count].to(torch.uint8)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean mask as a bitmask, one bit per entry (row-major, least significant bit first)."""
    return pack_int(mask.to(torch.uint8), 1)


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The boolean mask of ``shape`` back from :func:`pack_mask`."""
    return unpack_int(packed, 1, math.prod(shape)).reshape(shape).bool()
