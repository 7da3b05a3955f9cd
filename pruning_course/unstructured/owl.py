"""OWL: Outlier Weighed Layerwise sparsity (Yin et al., ICML 2024, "Outlier Weighed Layerwise Sparsity
(OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity").

Wanda and SparseGPT prune every decoder block to the same sparsity. At high sparsity (70%) this
removes too much from the blocks that carry many *outliers*, weights whose Wanda score
``A_ij = |W_ij| * ||X_j||_2`` is far above the rest. OWL measures, per decoder block ``l`` (all its
linears together), the outlier ratio of the paper's Layerwise Outlier Distribution (LOD)::

    D_l = #{ A_ij > M * mean(A) } / #A        (A: the Wanda scores of every weight of block l)

and sets ``S_l = 1 - D_l`` up to an affine map: blocks with more outliers are pruned *less*. The
ratios are min-max normalised and mapped linearly to a band of width ``2 * lambda`` whose mean is
the target ``S`` (the reference code, luuyin/OWL ``lib/prune_all.py``)::

    u_l = (D_l - min D) / (max D - min D),      s_l = S - 2 * lambda * (u_l - mean(u))

The paper describes this as "``S_l`` within ``[S - lambda, S + lambda]`` with average ``S``"; the
code's band is exactly that interval when ``mean(u) = 1/2`` and is shifted otherwise (every
``s_l`` stays within ``S +- 2 lambda``). We follow the code. The mean is over blocks, unweighted,
as in the reference; every decoder block of the supported models has the same number of weights,
so it is also the model-wide sparsity.

As in the reference, the ratios are measured on the *dense* model in one calibration pass
(:func:`owl_outlier_ratios`), then a second pass prunes with Wanda or SparseGPT at the per-block
sparsities (:func:`prune_owl`). The paper's defaults for LLaMA at 70% are ``M = 5``,
``lambda = 0.08``. ``||X_j||`` here is the root-mean-square over tokens rather than the
root-sum: a common factor for the whole block, which cancels in ``A > M * mean(A)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from ..architectures import ArchitectureAdapter, weight_matrix
from ..calibration import SquaredInputNorm, run_blockwise
from ..masks import validate_sparsity
from ..schedules import linear_schedule
from .wanda import wanda_scores


def outlier_ratio(scores: torch.Tensor | Sequence[torch.Tensor], M: float = 5.0) -> float:
    """Share of ``scores`` greater than ``M`` times their mean (OWL's ``D_l``).

    ``scores`` is one tensor or several (e.g. the Wanda scores of every linear of a block), pooled:
    the mean is over all of their entries together, not per tensor.
    """
    if not M > 0:
        raise InputError(f"the outlier threshold M must be positive (the paper uses 5), got {M}")
    tensors = [scores] if isinstance(scores, torch.Tensor) else list(scores)
    count = sum(t.numel() for t in tensors)
    if count == 0:
        raise InputError("need at least one score to measure an outlier ratio")
    mean = sum(float(t.double().sum()) for t in tensors) / count
    outliers = sum(int((t.double() > M * mean).sum()) for t in tensors)
    return outliers / count


def owl_sparsities(ratios: Sequence[float] | torch.Tensor, target: float, lam: float = 0.08) -> torch.Tensor:
    """Per-block sparsities from outlier ratios: ``s_l = target - 2 lam (u_l - mean(u))`` (see module doc).

    More outliers, lower sparsity; ``mean(s) = target``; ``max(s) - min(s) = 2 lam`` (0 when all
    ratios are equal). Raises ``ValueError`` for ``lam < 0`` or when some ``s_l`` leaves (0, 1)
    (lambda too large for this target).
    """
    target = validate_sparsity(target)
    if not lam >= 0:
        raise InputError(f"lambda must be >= 0 (the paper uses 0.08), got {lam}")
    try:
        return linear_schedule(ratios, target, 2.0 * lam)
    except ValueError as error:
        if "outside (0, 1)" in str(error):
            raise InputError(f"lambda = {lam} is too large for target sparsity {target}: {error}") from None
        raise


@torch.no_grad()
def owl_outlier_ratios(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    M: float = 5.0,
    *,
    batch_size: int = 8,
    device=None,
    progress: bool = True,
) -> torch.Tensor:
    """OWL's outlier ratio ``D_l`` of every decoder block, measured on the dense model.

    One pass of the calibration engine with Wanda's statistic; nothing is pruned, so every block
    sees the dense model's activations. Returns a float64 tensor with one ratio per block.
    """
    ratios: list[float] = []

    def on_block(index: int, block: nn.Module, stats: dict[str, SquaredInputNorm]) -> None:
        scores = [wanda_scores(weight_matrix(linear), stats[name].value) for name, linear in adapter.linears(block).items()]
        ratios.append(outlier_ratio(scores, M))

    run_blockwise(
        model, adapter, windows, on_block, statistic=SquaredInputNorm,
        batch_size=batch_size, device=device, progress=progress, description="owl outliers",
    )
    return torch.tensor(ratios, dtype=torch.float64)


@dataclass
class OwlResult:
    """What :func:`prune_owl` did: the keep-masks, the measured ratios and the schedule used."""

    masks: dict[str, torch.Tensor]
    outlier_ratios: torch.Tensor
    sparsities: torch.Tensor


def prune_owl(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    sparsity: float = 0.7,
    method: str = "wanda",
    M: float = 5.0,
    lam: float = 0.08,
    *,
    ratios: Sequence[float] | torch.Tensor | None = None,
    batch_size: int = 8,
    device=None,
    progress: bool = True,
    **options,
) -> OwlResult:
    """Prune ``model`` in place with ``method`` (any registered one-shot method) at OWL's per-block
    sparsities (mean ``sparsity``).

    ``ratios`` reuses outlier ratios already measured with :func:`owl_outlier_ratios` on this
    dense model (they do not depend on the method); otherwise they are measured first.
    ``options`` go to the method's driver (``blocksize``, ``percdamp`` for SparseGPT, ``scope``
    for magnitude). Unstructured only: OWL's N:M variant (a per-block N) is not implemented.
    """
    from ..methods import get_method  # the registry imports this package's methods: import it when called

    spec = get_method(method, purpose="OWL")
    num_blocks = len(adapter.blocks(model))
    if ratios is None:
        ratios = owl_outlier_ratios(model, adapter, windows, M, batch_size=batch_size, device=device, progress=progress)
    ratios = torch.as_tensor(ratios, dtype=torch.float64).flatten()
    if ratios.numel() != num_blocks:
        raise InputError(f"got {ratios.numel()} outlier ratios for a model with {num_blocks} decoder blocks")
    sparsities = owl_sparsities(ratios, sparsity, lam)
    masks = spec.prune(model, adapter, sparsities.tolist(), None, windows, batch_size=batch_size, device=device,
                       progress=progress, **options)
    return OwlResult(masks=masks, outlier_ratios=ratios, sparsities=sparsities)
