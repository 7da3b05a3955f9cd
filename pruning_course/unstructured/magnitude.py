"""Magnitude pruning: remove the weights with the smallest absolute value.

The oldest and simplest criterion (Han et al., 2015, "Learning both Weights and Connections"),
and the baseline in the SparseGPT (Table 1) and Wanda (Table 2) papers, where each weight matrix
is thresholded on its own ("layer-wise" magnitude). At 50% on LLMs it already hurts, and beyond
that it collapses, which is what motivates the calibrated methods.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..architectures import ArchitectureAdapter, apply_mask, attach_torch_prune_mask, weight_matrix
from ..masks import global_masks, keep_mask, resolve_target
from ..oneshot import OneShotMethod
from ..schedules import BlockSparsity, block_sparsities, is_uniform

SCOPES = ("matrix", "row", "global")


def magnitude_mask(weight: torch.Tensor, sparsity: float | None, pattern=None, scope: str = "matrix") -> torch.Tensor:
    """Keep-mask removing the smallest ``|W|`` of one ``(out, in)`` matrix.

    ``scope="matrix"`` ranks the whole matrix (the papers' baseline), ``"row"`` each output row;
    with an N:M ``pattern`` the ranking is inside groups of M consecutive input weights.
    """
    sparsity, nm = resolve_target(sparsity, pattern)
    return keep_mask(weight.abs(), sparsity, nm, scope=scope)


@torch.no_grad()
def magnitude_masks(
    model: nn.Module, adapter: ArchitectureAdapter, sparsity: BlockSparsity, pattern=None, scope: str = "matrix"
) -> dict[str, torch.Tensor]:
    """Keep-masks for every prunable linear of ``model`` (embeddings and LM head excluded).

    ``sparsity`` is one float, or one per decoder block (see :mod:`pruning_course.schedules`).
    """
    if scope not in SCOPES:
        raise InputError(f"unknown magnitude scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if scope == "global" and not is_uniform(sparsity):
        raise InputError("a global threshold has one sparsity for the whole model: use scope 'matrix' or 'row' with per-block sparsities")
    blocks = adapter.blocks(model)
    targets, nm = block_sparsities(sparsity, len(blocks), pattern)
    if scope == "global" and nm is None:
        linears = adapter.named_linears(model)
        return global_masks({name: weight_matrix(m).abs() for name, m in linears.items()}, targets[0])
    if scope == "global":
        raise InputError("an N:M pattern is local to each group of M weights: use scope 'matrix' or 'row' with it")
    return {
        f"{adapter.blocks_path}.{index}.{name}": magnitude_mask(weight_matrix(m), targets[index], nm, scope)
        for index, block in enumerate(blocks)
        for name, m in adapter.linears(block).items()
    }


def magnitude_prune_layer(weight: torch.Tensor, _statistic, sparsity: float, nm=None, *, scope: str = "matrix"):
    """Magnitude's per-layer step: ``(weight * mask, mask)``; it needs no statistic."""
    mask = magnitude_mask(weight, sparsity, nm, scope)
    return weight * mask, mask


class MagnitudeMethod(OneShotMethod):
    """Magnitude in the registry. Its ``prune`` is :func:`prune_magnitude`: the ``"global"`` scope
    ranks every layer of the model at once, which no per-layer step can do, and the masks can
    also be attached through ``torch.nn.utils.prune``."""

    def prune(self, model, adapter, sparsity=0.5, pattern=None, windows=None, *, batch_size=8, device=None,
              progress=True, calib_dtype=None, **options):
        self.check_options(options)
        return prune_magnitude(model, adapter, sparsity, pattern, **options)


MAGNITUDE = MagnitudeMethod("magnitude", None, magnitude_prune_layer, options=("scope", "use_torch_prune"),
                            citation="Han et al., NeurIPS 2015")


@torch.no_grad()
def prune_magnitude(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    sparsity: BlockSparsity = 0.5,
    pattern=None,
    scope: str = "matrix",
    use_torch_prune: bool = False,
) -> dict[str, torch.Tensor]:
    """Magnitude-prune every prunable linear in place and return the keep-masks.

    With ``use_torch_prune=True`` the masks are attached through ``torch.nn.utils.prune`` (as in the
    PyTorch pruning tutorial) instead of zeroing the weights; make them permanent with
    ``torch.nn.utils.prune.remove(module, "weight")``.
    """
    masks = magnitude_masks(model, adapter, sparsity, pattern, scope)
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if use_torch_prune:
            attach_torch_prune_mask(modules[name], mask)
        else:
            apply_mask(modules[name], mask)
    return masks
