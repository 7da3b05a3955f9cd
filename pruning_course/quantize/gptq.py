"""GPTQ: accurate post-training quantization for generative pre-trained transformers (Frantar et al., ICLR 2023).

GPTQ minimises the same layer-wise error as SparseGPT, ``||W X - Q X||^2``, but over a *quantized*
``Q`` instead of a sparse one. It quantizes the input columns left to right (Algorithm 1); after
column ``i`` is rounded, its error is spread over the columns not yet quantized with the
optimal-brain-quantization update (Eq. 2-3, ``[H^-1]`` restricted to those columns):

    err = (w - quant(w)) / [H^-1]_ii,        W[:, i:] -= err * [H^-1]_{i, i:}

exactly SparseGPT's update with "round" in place of "set to zero". The machinery is shared with
:mod:`pruning_course.unstructured.sparsegpt`: the upper Cholesky factor of the dampened ``H^-1``
(Sec. 4, step 3), dead input columns zeroed, and lazy batch updates of later blocks (step 2).

With groups, a group's grid (scale and zero point) is computed from the *current, already updated*
weights when the group's first column is reached, as in the reference code; it is not known in
advance. With a keep-mask (joint sparse + quantized, as SparseGPT's joint mode), pruned weights are
set to zero instead of rounded, their error is compensated like any other, they are excluded from
the grid's range (which always contains 0) and they come out exactly zero.
"""

from __future__ import annotations

import torch

from ..unstructured.sparsegpt import inverse_hessian_factor
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
        raise ValueError(f"expected a 2-D (out_features, in_features) weight, got shape {tuple(weight.shape)}")
    check_bits(bits)
    rows, cols = weight.shape
    g = check_group_size(cols, group_size)
    if hessian.shape != (cols, cols):
        raise ValueError(f"the Hessian of a layer with {cols} inputs must be ({cols}, {cols}), got {tuple(hessian.shape)}")
    if mask is not None and (mask.shape != weight.shape or mask.dtype != torch.bool):
        raise ValueError(f"mask must be a bool keep-mask of shape {tuple(weight.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    if blocksize < 1:
        raise ValueError(f"blocksize must be a positive integer, got {blocksize}")

    # As in SparseGPT: work on W^T, (in, out), so that column i of W is the contiguous row i.
    Wt = weight.detach().t().float().contiguous()
    H_inv, dead = inverse_hessian_factor(hessian.to(Wt.device), percdamp)
    Wt[dead] = 0
    keep_t = None if mask is None else mask.t().to(Wt.device)
    codes_t = torch.empty(cols, rows, dtype=torch.uint8, device=Wt.device)
    scales = torch.empty(rows, cols // g, device=Wt.device)
    zeros = torch.empty(rows, cols // g, dtype=torch.uint8, device=Wt.device)

    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        W_block = Wt[start:end].clone()
        H_inv_block = H_inv[start:end, start:end]
        d = torch.diag(H_inv_block)
        err_block = torch.zeros_like(W_block)

        for i in range(end - start):
            col = start + i
            if col % g == 0:  # a new group: its grid from the weights as updated so far
                group = torch.cat([W_block[i : i + g], Wt[end : col + g]])  # (g, rows)
                if keep_t is not None:
                    group = group * keep_t[col : col + g]
                scale, zero = minmax_grid(group.t(), bits, sym)
                scales[:, col // g], zeros[:, col // g] = scale, zero
            w = W_block[i]
            code = quantize_to_grid(w if keep_t is None else w * keep_t[col], scale, zero, bits)
            q = (code - zero.float()) * scale
            err = (w - q) / d[i]
            W_block[i:].addr_(H_inv_block[i, i:], err, alpha=-1.0)  # OBQ update of the remaining columns
            W_block[i] = q
            codes_t[col] = code.to(torch.uint8)
            err_block[i] = err

        Wt[start:end] = W_block
        Wt[end:].addmm_(H_inv[start:end, end:].t(), err_block, alpha=-1.0)  # lazy update of later blocks

    return codes_t.t().contiguous(), scales, zeros
