"""GPTQ: accurate post-training quantization for generative pre-trained transformers (Frantar et al., ICLR 2023).

GPTQ minimises the same layer-wise error as SparseGPT, ``||W X - Q X||^2``, but over a *quantized*
``Q`` instead of a sparse one. It quantizes the input columns left to right (Algorithm 1); after
column ``i`` is rounded, its error is spread over the columns not yet quantized with the
optimal-brain-quantization update (Eq. 2-3, ``[H^-1]`` restricted to those columns):

    err = (w - quant(w)) / [H^-1]_ii,        W[:, i:] -= err * [H^-1]_{i, i:}

exactly SparseGPT's update with "round" in place of "set to zero". So it is one loop:
:func:`~pruning_course.unstructured.sparsegpt.obs_column_sweep` with GPTQ's :class:`QuantizeColumns`
rule in place of SparseGPT's, sharing the upper Cholesky factor of the dampened ``H^-1`` (Sec. 4,
step 3), dead input columns zeroed, and lazy batch updates of later blocks (step 2), as the
reference SparseGPT code runs both in one ``fasterprune``.

With groups, a group's grid (scale and zero point) is computed from the *current, already updated*
weights when the group's first column is reached, as in the reference code; it is not known in
advance. With a keep-mask (joint sparse + quantized, as SparseGPT's joint mode), pruned weights are
set to zero instead of rounded, their error is compensated like any other, they are excluded from
the grid's range (which always contains 0) and they come out exactly zero.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..unstructured.sparsegpt import ColumnRule, obs_column_sweep
from .rtn import check_bits, check_group_size, minmax_grid, quantize_to_grid


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int = 4,
    group_size: int = 128,
    *,
    sym: bool = False,
    blocksize: int = 128,
    percdamp: float = 0.01,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize one ``(out, in)`` weight given its input Hessian ``(in, in)`` (GPTQ, Algorithm 1).

    Returns ``(codes, scales, zeros)`` like :func:`~pruning_course.quantize.rtn.quantize_rtn`;
    :func:`~pruning_course.quantize.rtn.dequantize` gives the new weights. ``mask`` (bool, True =
    keep) makes the pruned weights exactly zero. Runs in float32 on ``weight``'s device.
    """
    if weight.dim() != 2:
        raise InputError(f"expected a 2-D (out_features, in_features) weight, got shape {tuple(weight.shape)}")
    check_bits(bits)
    rows, cols = weight.shape
    g = check_group_size(cols, group_size)
    if hessian.shape != (cols, cols):
        raise InputError(f"the Hessian of a layer with {cols} inputs must be ({cols}, {cols}), got {tuple(hessian.shape)}")
    if mask is not None and (mask.shape != weight.shape or mask.dtype != torch.bool):
        raise InputError(f"mask must be a bool keep-mask of shape {tuple(weight.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    if blocksize < 1:
        raise InputError(f"blocksize must be a positive integer, got {blocksize}")

    keep_t = None if mask is None else mask.t().to(weight.device)
    rule = QuantizeColumns(rows, cols, g, bits, sym, keep_t, weight.device)
    obs_column_sweep(weight, hessian, rule, blocksize=blocksize, percdamp=percdamp)
    return rule.codes_t.t().contiguous(), rule.scales, rule.zeros


class QuantizeColumns(ColumnRule):
    """GPTQ's rule for :func:`~pruning_course.unstructured.sparsegpt.obs_column_sweep`: round each
    column to its group's grid; with a keep-mask, pruned weights become exactly zero."""

    def __init__(self, rows: int, cols: int, group_size: int, bits: int, sym: bool, keep_t, device):
        self.g, self.bits, self.sym, self.keep_t = group_size, bits, sym, keep_t
        self.codes_t = torch.empty(cols, rows, dtype=torch.uint8, device=device)
        self.scales = torch.empty(rows, cols // group_size, device=device)
        self.zeros = torch.empty(rows, cols // group_size, dtype=torch.uint8, device=device)

    def target(self, col, i, W_block, d, Wt, end):
        g, keep_t = self.g, self.keep_t
        if col % g == 0:  # a new group: its grid from the weights as updated so far
            group = torch.cat([W_block[i : i + g], Wt[end : col + g]])  # (g, rows)
            if keep_t is not None:
                group = group * keep_t[col : col + g]
            self.scale, self.zero = minmax_grid(group.t(), self.bits, self.sym)
            self.scales[:, col // g], self.zeros[:, col // g] = self.scale, self.zero
        w = W_block[i]
        code = quantize_to_grid(w if keep_t is None else w * keep_t[col], self.scale, self.zero, self.bits)
        self.codes_t[col] = code.to(torch.uint8)
        return (code - self.zero.float()) * self.scale
