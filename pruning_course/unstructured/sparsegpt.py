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

from ..errors import InputError
from ..architectures import ArchitectureAdapter
from ..calibration import InputHessian
from ..masks import nm_mask, per_matrix_mask, resolve_target
from ..oneshot import OneShotMethod
from ..schedules import BlockSparsity


def obs_error(w: torch.Tensor, h_inv_diagonal: torch.Tensor) -> torch.Tensor:
    """``w^2 / [H^-1]_qq`` given the diagonal of ``H^-1`` (broadcast against ``w``): the OBS
    saliency of SparseGPT Eq. 3, shared by :func:`obs_saliency` and the column sweep."""
    return w.pow(2) / h_inv_diagonal


def obs_saliency(w: torch.Tensor, h_inv: torch.Tensor) -> torch.Tensor:
    """OBS error of removing each weight alone: ``w_q^2 / [H^-1]_qq`` (SparseGPT Eq. 3, OBS 1993).

    ``w`` is one row ``(in,)`` or a whole ``(out, in)`` matrix (all rows share ``H``). With
    ``H = 2/n X^T X`` the mean squared output error over the n tokens grows by half of it.
    ``sparsegpt_prune`` ranks by ``w^2 / [U]_qq^2`` with ``U`` the upper Cholesky factor of
    ``H^-1``: the same quantity for the weights not yet processed (Sec. 3.2).
    """
    return obs_error(w, torch.diagonal(h_inv))


def obs_remove_weight(w_row: torch.Tensor, h_inv: torch.Tensor, q: int) -> torch.Tensor:
    """Remove weight ``q`` of one row optimally (the OBS update, SparseGPT Eq. 3).

    ``delta = -(w_q / [H^-1]_qq) * H^-1[:, q]`` spreads the removed weight over the others so that
    the layer's output changes least; ``w'_q`` is exactly zero. :func:`obs_column_sweep` applies
    the same update to every row at once in its Cholesky form: with ``U`` the upper factor of
    ``H^-1`` restricted to the columns not yet processed, ``[H^-1]_qq = U_qq^2`` and
    ``H^-1[q, :] = U_qq U[q, :]``, so the update is ``-(w_q / U_qq) U[q, :]``.
    """
    new = w_row - (w_row[q] / h_inv[q, q]) * h_inv[:, q]
    new[q] = 0.0
    return new


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of ``(H + damp * I)^-1``, and the mask of dead input columns.

    Dead columns (``H_jj == 0``: the input is always zero) get ``H_jj = 1`` so that ``H`` stays
    invertible; their weights are irrelevant and are zeroed by the caller. A Hessian that is not
    positive definite even after damping (too few calibration tokens for the layer's width, or
    non-finite activations) raises ``ValueError`` saying what to change.
    """
    H = hessian.detach().clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    try:
        H_inv = torch.cholesky_inverse(torch.linalg.cholesky(H))
        return torch.linalg.cholesky(H_inv, upper=True), dead
    except torch.linalg.LinAlgError:
        finite = bool(torch.isfinite(H).all())
        raise InputError(
            f"the {H.shape[0]}x{H.shape[0]} layer Hessian is not positive definite after damping by {percdamp:g} of its "
            + ("mean diagonal: raise percdamp (e.g. 0.1) or use more calibration samples"
               if finite else "mean diagonal: it holds inf or nan (the activations overflowed; use float32)")
        ) from None


class ColumnRule:
    """What :func:`obs_column_sweep` does with each input column: SparseGPT zeroes the pruned
    weights (:class:`PruneColumns`), GPTQ rounds to its grid (``quantize.gptq.QuantizeColumns``).

    The sweep works on ``W^T`` (``(in, out)``), so a column of ``W`` is a row of ``W_block``."""

    def start_block(self, start: int, end: int, W_block: torch.Tensor, d: torch.Tensor) -> None:
        """Called before the block of columns ``start:end``; ``d`` is the diagonal of its factor."""

    def target(self, col: int, i: int, W_block: torch.Tensor, d: torch.Tensor, Wt: torch.Tensor, end: int) -> torch.Tensor:
        """The new values of column ``col`` (row ``i`` of ``W_block``); the sweep compensates the difference."""
        raise NotImplementedError


class PruneColumns(ColumnRule):
    """SparseGPT's rule: keep or zero each weight, by the mask chosen adaptively (Sec. 3.3): the
    lowest OBS errors of each block of columns, or of each N:M group of columns just before the
    group is processed (Sec. 3.4)."""

    def __init__(self, shape_t: tuple[int, int], sparsity: float, nm, device):
        self.sparsity, self.nm = sparsity, nm
        self.keep_t = torch.ones(shape_t, dtype=torch.bool, device=device)

    def start_block(self, start, end, W_block, d):
        self.keep_block = self.keep_t[start:end]
        if self.nm is None:  # adaptive mask: lowest OBS saliency w^2 / [H^-1]_ii^2 over the whole block
            self.keep_block[:] = per_matrix_mask(obs_error(W_block, d.pow(2).unsqueeze(1)), self.sparsity)

    def target(self, col, i, W_block, d, Wt, end):
        if self.nm is not None and i % self.nm[1] == 0:  # the N:M group's mask, just before processing it
            n, m = self.nm
            saliency = obs_error(W_block[i : i + m], d[i : i + m].pow(2).unsqueeze(1))
            self.keep_block[i : i + m] = nm_mask(saliency.t(), n, m).t()
        return W_block[i] * self.keep_block[i]


@torch.no_grad()
def obs_column_sweep(weight: torch.Tensor, hessian: torch.Tensor, rule: ColumnRule, *, blocksize: int = 128,
                     percdamp: float = 0.01) -> torch.Tensor:
    """The column sweep of SparseGPT (Algorithm 1) and GPTQ (Algorithm 1): one loop, two rules.

    Left to right over the input columns, ``rule`` sets each column's new values ``q`` and the
    error ``err = (w - q) / U_ii`` is spread over the columns not yet processed,
    ``W[:, i:] -= err U[i, i:]`` with ``U`` the upper Cholesky factor of the dampened ``H^-1``
    (SparseGPT Eq. 3 / GPTQ Eq. 2-3). Updates of later blocks of ``blocksize`` columns are applied
    lazily, once per block (SparseGPT Sec. 3.2, GPTQ step 2). Dead input columns are zeroed first.
    Returns the new ``(out, in)`` weight in float32 on ``weight``'s device; ``weight`` itself is
    never modified (a copy, also for GPT-2's transposed linears, whose ``weight.t()`` is their own storage).

    The work is on ``W^T``, ``(in, out)``: column ``i`` of ``W`` is then the contiguous row ``i``,
    which makes the per-column rank-1 updates several times faster on a CPU; the math is unchanged.
    """
    Wt = weight.detach().t().float().clone(memory_format=torch.contiguous_format)
    H_inv, dead = inverse_hessian_factor(hessian.to(Wt.device), percdamp)
    Wt[dead] = 0
    cols = Wt.shape[0]
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        W_block = Wt[start:end].clone()  # (columns of this block, rows)
        H_inv_block = H_inv[start:end, start:end]
        d = torch.diag(H_inv_block)
        err_block = torch.zeros_like(W_block)
        rule.start_block(start, end, W_block, d)
        for i in range(end - start):
            w = W_block[i]
            q = rule.target(start + i, i, W_block, d, Wt, end)
            err = (w - q) / d[i]
            W_block[i:].addr_(H_inv_block[i, i:], err, alpha=-1.0)  # OBS update of the remaining columns
            W_block[i] = q  # exactly the rule's values (zeros where pruned)
            err_block[i] = err
        Wt[start:end] = W_block
        Wt[end:].addmm_(H_inv[start:end, end:].t(), err_block, alpha=-1.0)  # lazy update of later blocks
    return Wt.t()


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
    ``weight``) and the boolean keep-mask. The computation runs in float32 on ``weight``'s device
    (:func:`obs_column_sweep` with :class:`PruneColumns`).
    """
    sparsity, nm = resolve_target(sparsity, pattern)
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise InputError(f"the Hessian of a layer with {cols} inputs must be ({cols}, {cols}), got {tuple(hessian.shape)}")
    if nm is not None:
        n, m = nm
        if cols % m or blocksize % m:
            raise InputError(f"{n}:{m} needs M to divide the input width ({cols}) and the block size ({blocksize})")
    rule = PruneColumns((cols, rows), sparsity, nm, weight.device)
    W = obs_column_sweep(weight, hessian, rule, blocksize=blocksize, percdamp=percdamp)
    return W.to(weight.dtype), rule.keep_t.t()


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
