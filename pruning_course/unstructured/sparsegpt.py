"""SparseGPT: massive language models can be accurately pruned in one-shot (Frantar & Alistarh, ICML 2023).

For each linear layer, SparseGPT minimises the layer-wise reconstruction error
``||W X - W' X||^2`` (Eq. 1) over a sparse ``W'``. It walks the input columns left to right; when
weight ``w`` in column ``i`` is removed, the optimal-brain-surgeon update spreads its error over the
columns not yet processed (Eq. 3, with ``[H^-1]`` the inverse Hessian restricted to those columns):

    err = w / [H^-1]_ii,        W[:, i:] -= err * [H^-1]_{i, i:}

Using the upper Cholesky factor of ``H^-1`` gives every restricted inverse at once (Sec. 3.2).
The mask is chosen adaptively, per block of ``blocksize`` columns, by the OBS saliency
``w^2 / [H^-1]_ii^2`` (Sec. 3.3); for N:M it is chosen inside each group of M columns just before
the group is processed (Sec. 3.4). Updates of later blocks are applied lazily, once per block
(Sec. 3.2, "lazy batch updates"). ``H = 2/n sum x x^T`` is dampened by ``percdamp`` of its mean
diagonal, and inputs that never fire ("dead" columns) are zeroed, as in the reference code.
"""

from __future__ import annotations

import torch
from torch import nn

from ..architectures import ArchitectureAdapter
from ..calibration import InputHessian
from ..masks import nm_mask, per_matrix_mask, resolve_target
from ..oneshot import OneShotMethod
from ..schedules import BlockSparsity


def obs_saliency(w: torch.Tensor, h_inv: torch.Tensor) -> torch.Tensor:
    """OBS error of removing each weight alone: ``w_q^2 / [H^-1]_qq`` (SparseGPT Eq. 3, OBS 1993).

    ``w`` is one row ``(in,)`` or a whole ``(out, in)`` matrix (all rows share ``H``). With
    ``H = 2/n X^T X`` the mean squared output error over the n tokens grows by half of it.
    ``sparsegpt_prune`` ranks by ``w^2 / [U]_qq^2`` with ``U`` the upper Cholesky factor of
    ``H^-1``: the same quantity for the weights not yet processed (Sec. 3.2).
    """
    return w.pow(2) / torch.diagonal(h_inv)


def obs_remove_weight(w_row: torch.Tensor, h_inv: torch.Tensor, q: int) -> torch.Tensor:
    """Remove weight ``q`` of one row optimally (the OBS update, SparseGPT Eq. 3).

    ``delta = -(w_q / [H^-1]_qq) * H^-1[:, q]`` spreads the removed weight over the others so that
    the layer's output changes least; ``w'_q`` is exactly zero.
    """
    new = w_row - (w_row[q] / h_inv[q, q]) * h_inv[:, q]
    new[q] = 0.0
    return new


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of ``(H + damp * I)^-1``, and the mask of dead input columns.

    Dead columns (``H_jj == 0``: the input is always zero) get ``H_jj = 1`` so that ``H`` stays
    invertible; their weights are irrelevant and are zeroed by the caller.
    """
    H = hessian.detach().clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    H_inv = torch.cholesky_inverse(torch.linalg.cholesky(H))
    return torch.linalg.cholesky(H_inv, upper=True), dead


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float | None = 0.5,
    pattern=None,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one ``(out, in)`` weight matrix given its input Hessian ``(in, in)``.

    Returns ``(new_weight, keep_mask)``: the pruned and error-compensated weights (same dtype as
    ``weight``) and the boolean keep-mask. The computation runs in float32 on ``weight``'s device.
    """
    sparsity, nm = resolve_target(sparsity, pattern)
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"the Hessian of a layer with {cols} inputs must be ({cols}, {cols}), got {tuple(hessian.shape)}")
    if nm is not None:
        n, m = nm
        if cols % m or blocksize % m:
            raise ValueError(f"{n}:{m} needs M to divide the input width ({cols}) and the block size ({blocksize})")

    # Work on W^T, (in, out): column i of W is then the contiguous row i, which makes the
    # per-column rank-1 updates several times faster on a CPU. The math is unchanged. Always a copy:
    # for GPT-2's Conv1D, weight.t() is the layer's own (contiguous) storage.
    Wt = weight.detach().t().float().clone(memory_format=torch.contiguous_format)
    H_inv, dead = inverse_hessian_factor(hessian.to(Wt.device), percdamp)
    Wt[dead] = 0
    keep_t = torch.ones_like(Wt, dtype=torch.bool)

    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        W_block = Wt[start:end].clone()  # (columns of this block, rows)
        H_inv_block = H_inv[start:end, start:end]
        d = torch.diag(H_inv_block)
        err_block = torch.zeros_like(W_block)
        if nm is None:  # adaptive mask: lowest OBS saliency w^2 / [H^-1]_ii^2 over the whole block
            keep_block = per_matrix_mask(W_block.pow(2) / d.pow(2).unsqueeze(1), sparsity)
        else:
            keep_block = torch.ones_like(W_block, dtype=torch.bool)

        for i in range(end - start):
            if nm is not None and i % m == 0:  # choose the N:M group's mask just before processing it
                saliency = W_block[i : i + m].pow(2) / d[i : i + m].pow(2).unsqueeze(1)
                keep_block[i : i + m] = nm_mask(saliency.t(), n, m).t()
            w = W_block[i].clone()
            q = w * keep_block[i]
            err = (w - q) / d[i]
            W_block[i:].addr_(H_inv_block[i, i:], err, alpha=-1.0)  # OBS update of the remaining columns
            W_block[i] = q  # exact zeros where pruned
            err_block[i] = err

        Wt[start:end] = W_block
        keep_t[start:end] = keep_block
        Wt[end:].addmm_(H_inv[start:end, end:].t(), err_block, alpha=-1.0)  # lazy update of later blocks

    W, mask = Wt.t(), keep_t.t()
    return W.to(weight.dtype), mask


SPARSEGPT = OneShotMethod("sparsegpt", InputHessian, sparsegpt_prune, options=("blocksize", "percdamp"),
                          citation="Frantar & Alistarh, ICML 2023")


def prune_sparsegpt(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    sparsity: BlockSparsity = 0.5,
    pattern=None,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    batch_size: int = 8,
    device=None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Prune every prunable linear of ``model`` with SparseGPT, block by block; return the keep-masks.

    ``sparsity`` is one float, or one per decoder block (a sequence or a callable of the block
    index, see :mod:`pruning_course.schedules`), e.g. OWL's non-uniform schedule.
    """
    return SPARSEGPT.prune(model, adapter, sparsity, pattern, windows, blocksize=blocksize, percdamp=percdamp,
                           batch_size=batch_size, device=device, progress=progress)
