"""Per-block sparsity schedules: one target sparsity per decoder block instead of one for the model.

Magnitude, Wanda and SparseGPT prune every layer to the same sparsity ("uniform"). A non-uniform
schedule gives decoder block ``l`` its own sparsity ``s_l`` while keeping the model-wide sparsity,
the parameter-weighted mean ``sum_l n_l s_l / sum_l n_l`` (``n_l``: prunable weights of block
``l``), at the target. Schedules come from a sensitivity scan
(:mod:`pruning_course.unstructured.sensitivity`) or from outlier ratios
(OWL, :mod:`pruning_course.unstructured.owl`); the drivers accept any of:

* a float: the same sparsity for every block (uniform);
* a sequence with one float per decoder block;
* a callable ``f(block_index) -> float``.

Both non-uniform schedules use :func:`linear_schedule`: a per-block score (sensitivity, outlier
ratio; higher = more important) is min-max normalised to ``u_l`` in [0, 1] and mapped linearly,
``s_l = target - spread * (u_l - mean_w(u))``, where ``mean_w`` is the weighted mean. The most
important block gets the lowest sparsity, the spread ``max s - min s`` equals ``spread`` and the
weighted mean of ``s`` is exactly ``target``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .errors import InputError
from .architectures import ArchitectureAdapter, weight_matrix
from .masks import resolve_target, validate_sparsity

BlockSparsity = float | Sequence[float] | Callable[[int], float] | None


def is_uniform(sparsity: BlockSparsity) -> bool:
    """True for one number (or ``None``, i.e. implied by an N:M pattern); False for a schedule."""
    if isinstance(sparsity, torch.Tensor):
        return sparsity.dim() == 0
    return sparsity is None or isinstance(sparsity, numbers.Real)


def block_sparsities(
    sparsity: BlockSparsity, num_blocks: int, pattern=None
) -> tuple[list[float], tuple[int, int] | None]:
    """Resolve a float / per-block sequence / callable to ``(one sparsity per block, N:M or None)``.

    Raises ``ValueError`` for a sequence of the wrong length, a value outside (0, 1), or a
    non-uniform schedule together with an N:M pattern (N:M fixes ``1 - N/M`` in every block).
    """
    if isinstance(sparsity, torch.Tensor) and sparsity.dim() == 0:
        sparsity = float(sparsity)
    if is_uniform(sparsity):
        target, nm = resolve_target(sparsity, pattern)
        return [target] * num_blocks, nm
    if pattern is not None and resolve_target(None, pattern)[1] is not None:
        raise InputError(
            "an N:M pattern fixes the sparsity of every block to 1 - N/M; per-block sparsities are for "
            "unstructured pruning: drop the pattern or pass a single sparsity"
        )
    if callable(sparsity):
        values = [sparsity(index) for index in range(num_blocks)]
    elif isinstance(sparsity, (str, bytes)):
        raise InputError(f"sparsity must be a number in (0, 1) or one number per decoder block; got {sparsity!r}")
    else:
        values = sparsity.tolist() if isinstance(sparsity, torch.Tensor) else list(sparsity)
        if len(values) != num_blocks:
            raise InputError(
                f"got {len(values)} per-block sparsities for a model with {num_blocks} decoder blocks; "
                f"give exactly one value per block (or a single float)"
            )
    return [validate_sparsity(v) for v in values], None


def block_parameter_counts(model: nn.Module, adapter: ArchitectureAdapter) -> list[int]:
    """Prunable weights per decoder block (the ``n_l`` that weight a schedule's model-wide sparsity)."""
    return [
        sum(weight_matrix(m).numel() for m in adapter.linears(block).values())
        for block in adapter.blocks(model)
    ]


def schedule_sparsity(schedule: Sequence[float], counts: Sequence[int]) -> float:
    """Model-wide sparsity of a per-block schedule: ``sum_l n_l s_l / sum_l n_l``.

    ``counts`` are the prunable weights per block (:func:`block_parameter_counts`). Pruning
    removes ``floor`` of each row's or matrix's share, so the realised sparsity
    (:func:`pruning_course.evaluate.sparsity_report`) can be lower by a rounding step per row.
    """
    if len(schedule) != len(counts):
        raise InputError(f"schedule has {len(schedule)} entries but counts has {len(counts)}; give one per block")
    total = sum(counts)
    if total <= 0:
        raise InputError("counts must contain at least one positive parameter count")
    return float(sum(float(s) * n for s, n in zip(schedule, counts)) / total)


def linear_schedule(
    scores: Sequence[float] | torch.Tensor,
    target: float,
    spread: float,
    weights: Sequence[float] | torch.Tensor | None = None,
    bounds: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Map per-block importance ``scores`` linearly to sparsities whose weighted mean is ``target``.

    ``u = (scores - min) / (max - min)``, ``s = target - spread * (u - sum(w u) / sum(w))``
    (``w``: ``weights``, equal when ``None``). Higher score, lower sparsity; ``max s - min s =
    spread``. Equal scores give the uniform schedule. With ``bounds=(lo, hi)`` the spread is
    shrunk, if needed, until every ``s`` lies in ``[lo, hi]`` (the weighted mean stays ``target``).
    Returns a float64 tensor; raises ``ValueError`` when a sparsity would leave (0, 1).
    """
    target = validate_sparsity(target)
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if scores.numel() == 0:
        raise InputError("need at least one score (one per decoder block)")
    if not torch.isfinite(scores).all():
        raise InputError("scores must be finite numbers")
    if not spread >= 0:
        raise InputError(f"spread must be >= 0, got {spread}")
    w = torch.ones_like(scores) if weights is None else torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.shape != scores.shape or (w < 0).any() or w.sum() <= 0:
        raise InputError(f"weights must be {scores.numel()} non-negative numbers, one per score, not all zero")
    span = scores.max() - scores.min()
    if span <= 0:
        return torch.full_like(scores, target)
    u = (scores - scores.min()) / span
    offsets = -(u - (w * u).sum() / w.sum())  # weighted mean zero; max - min = 1
    if bounds is not None:
        lo, hi = bounds
        if not 0.0 <= lo < target < hi <= 1.0:
            raise InputError(f"bounds must satisfy 0 <= min < target < max <= 1; got ({lo}, {hi}) for target {target}")
        limits = [spread]
        if offsets.max() > 0:
            limits.append((hi - target) / float(offsets.max()))
        if offsets.min() < 0:
            limits.append((lo - target) / float(offsets.min()))
        spread = min(limits)
    schedule = target + spread * offsets
    if schedule.min() <= 0 or schedule.max() >= 1:
        raise InputError(
            f"the schedule spans [{float(schedule.min()):.3f}, {float(schedule.max()):.3f}], outside (0, 1): "
            f"reduce the spread (or lambda) for target {target}"
        )
    return schedule
