"""Wanda: Pruning by Weights and activations (Sun, Liu, Bair & Kolter, ICLR 2024).

Score of weight ``W_ij`` (Eq. 1):   ``S_ij = |W_ij| * ||X_j||_2``
where ``||X_j||_2`` is the L2 norm of input feature ``j`` over all calibration tokens. Weights are
ranked *within each output row* (Sec. 3, "per-output comparison group"), not across the matrix:
every output neuron loses the same fraction of its inputs. N:M sparsity ranks inside each group
of M consecutive input weights of a row. No weight update, no second-order information: one
forward pass per block and a sort.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..architectures import ArchitectureAdapter
from ..calibration import SquaredInputNorm
from ..masks import keep_mask, resolve_target
from ..oneshot import OneShotMethod
from ..schedules import BlockSparsity


def wanda_scores(weight: torch.Tensor, act_sq_norm: torch.Tensor) -> torch.Tensor:
    """``|W| * sqrt(act_sq_norm)`` broadcast over rows (Eq. 1).

    ``weight`` is ``(out, in)``; ``act_sq_norm[j]`` is the accumulated *squared* norm of input
    feature ``j`` (so its square root is the norm).
    """
    if act_sq_norm.shape != (weight.shape[1],):
        raise InputError(
            f"act_sq_norm must have one entry per input feature ({weight.shape[1]}), got shape {tuple(act_sq_norm.shape)}"
        )
    return weight.abs().float() * act_sq_norm.float().sqrt().unsqueeze(0)


def wanda_mask(weight: torch.Tensor, act_sq_norm: torch.Tensor, sparsity: float | None = 0.5, pattern=None) -> torch.Tensor:
    """Keep-mask of Wanda: per output row (or per N:M group), drop the lowest scores."""
    sparsity, nm = resolve_target(sparsity, pattern)
    return keep_mask(wanda_scores(weight, act_sq_norm), sparsity, nm, scope="row")


def wanda_prune_layer(weight: torch.Tensor, act_sq_norm: torch.Tensor, sparsity: float, nm=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Wanda's per-layer step: ``(weight * mask, mask)`` with the per-row (or N:M) mask of Eq. 1.
    No weight update: the kept weights are unchanged."""
    mask = wanda_mask(weight, act_sq_norm, sparsity, nm)
    return weight * mask, mask


WANDA = OneShotMethod("wanda", SquaredInputNorm, wanda_prune_layer, citation="Sun et al., ICLR 2024")


def prune_wanda(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    sparsity: BlockSparsity = 0.5,
    pattern=None,
    *,
    batch_size: int = 8,
    device=None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Prune every prunable linear of ``model`` with Wanda, block by block; return the keep-masks.

    ``sparsity`` is one float, or one per decoder block (a sequence or a callable of the block
    index, see :mod:`pruning_course.schedules`), e.g. OWL's non-uniform schedule.
    """
    return WANDA.prune(model, adapter, sparsity, pattern, windows, batch_size=batch_size, device=device, progress=progress)
