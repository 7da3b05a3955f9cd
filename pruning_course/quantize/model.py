"""Quantizing every prunable linear of a model: RTN directly, GPTQ on the shared calibration engine.

GPTQ runs block by block on :func:`pruning_course.calibration.run_blockwise` with the
:class:`~pruning_course.calibration.InputHessian` statistic, exactly like SparseGPT: the Hessians
of a block's linears are collected on the outputs of the already *quantized* previous blocks
(sequential quantization, GPTQ Sec. 5 "ran ... sequentially"). Embeddings and the LM head stay in
floating point, as in the paper.

The model keeps working in floating point: each weight is replaced by its dequantized value
("simulated" or "fake" quantization), and the integer form is returned as a
:class:`QuantizedWeight` per layer, which :func:`pruning_course.quantize.storage.save_compressed`
packs into a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

import torch
from torch import nn

from ..errors import InputError
from ..architectures import ArchitectureAdapter, set_weight_matrix, weight_matrix
from ..calibration import InputHessian
from ..oneshot import for_each_linear
from .gptq import gptq_quantize
from .rtn import check_bits, dequantize, quantize_rtn

METHODS = ("rtn", "gptq")


@dataclass
class QuantizedWeight:
    """The integer form of one ``(out, in)`` weight: uint8 codes, float32 scales, uint8 zero points."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    sym: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    @property
    def group_size(self) -> int:
        return self.codes.shape[1] // self.scales.shape[1]

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, self.scales, self.zeros)


def default_group_size(model: nn.Module, adapter: ArchitectureAdapter) -> int:
    """GPTQ's usual 128 if it divides every input width, else the largest of 64, 32 that does, else
    one group per row (-1). SmolLM2's widths (576, 1536) give 64."""
    widths = {weight_matrix(m).shape[1] for m in adapter.named_linears(model).values()}
    return next((g for g in (128, 64, 32) if all(w % g == 0 for w in widths)), -1)


def check_group_fits(model: nn.Module, adapter: ArchitectureAdapter, group_size: int) -> None:
    """Fail before any weight changes if ``group_size`` does not divide some layer's input width."""
    if group_size == -1:
        return
    if not isinstance(group_size, int) or group_size < 1:
        raise InputError(f"group_size must be a positive integer or -1 (one group per row), got {group_size!r}")
    widths = {name: weight_matrix(m).shape[1] for name, m in adapter.named_linears(model).items()}
    misfits = {name: w for name, w in widths.items() if w % group_size}
    if misfits:
        name, width = next(iter(misfits.items()))
        common = reduce(math.gcd, widths.values())
        divisors = [d for d in (256, 128, 64, 32, 16, 8) if common % d == 0]
        hint = f"e.g. {divisors[0]}" if divisors else f"a divisor of {common}"
        raise InputError(
            f"group_size {group_size} does not divide the input width of {len(misfits)} layer(s) (e.g. {name} has "
            f"{width} inputs); choose a group size dividing every width ({hint}) or -1 for one group per row"
        )


def _keep_mask(name: str, weight: torch.Tensor, masks: dict | None, keep_zeros: bool) -> torch.Tensor | None:
    if masks is not None and name in masks:
        return masks[name].to(device=weight.device, dtype=torch.bool)
    if keep_zeros:
        zero = weight == 0
        return ~zero if zero.any() else None
    return None


def quantize_model(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    method: str = "gptq",
    bits: int = 4,
    group_size: int = 128,
    windows: torch.Tensor | None = None,
    *,
    sym: bool = False,
    masks: dict[str, torch.Tensor] | None = None,
    keep_zeros: bool = True,
    blocksize: int = 128,
    percdamp: float = 0.01,
    batch_size: int = 8,
    device=None,
    progress: bool = True,
) -> dict[str, QuantizedWeight]:
    """Quantize every prunable linear of ``model`` in place; return their integer forms by full name.

    ``method``: ``"rtn"`` (no data) or ``"gptq"`` (needs ``windows``, an ``(n, seqlen)`` tensor of
    calibration token ids). Joint sparse + quantized: weights outside ``masks[name]`` (keep-masks,
    e.g. from :func:`pruning_course.methods.prune_model`) end exactly zero; without a mask for a
    layer, ``keep_zeros`` treats its exact zeros as pruned (so a pruned model stays pruned).
    """
    if method not in METHODS:
        raise InputError(f"unknown quantization method {method!r}; choose one of: {', '.join(METHODS)}")
    check_bits(bits)
    check_group_fits(model, adapter, group_size)
    quantized: dict[str, QuantizedWeight] = {}

    if method == "gptq" and windows is None:
        raise InputError("GPTQ is calibrated: pass calibration windows (pruning_course.data.calibration_windows)")

    def quantize_layer(_index: int, name: str, linear: nn.Module, hessian: InputHessian | None) -> None:
        weight = weight_matrix(linear)
        mask = _keep_mask(name, weight, masks, keep_zeros)
        if hessian is None:  # RTN
            codes, scales, zeros = quantize_rtn(weight if mask is None else weight * mask, bits, group_size, sym)
        else:
            codes, scales, zeros = gptq_quantize(weight, hessian.value, bits, group_size, sym=sym, blocksize=blocksize,
                                                 percdamp=percdamp, mask=mask)
        set_weight_matrix(linear, dequantize(codes, scales, zeros))
        quantized[name] = QuantizedWeight(codes.cpu(), scales.cpu(), zeros.cpu(), bits, sym)

    for_each_linear(model, adapter, quantize_layer, statistic=InputHessian if method == "gptq" else None,
                    windows=windows, batch_size=batch_size, device=device, progress=progress,
                    description=f"gptq-int{bits}")
    return quantized
