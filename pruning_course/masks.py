"""Masks: which weights to keep, given a score per weight.

Convention (the same as ``torch.nn.utils.prune``): a mask is a boolean tensor shaped like the
``(out_features, in_features)`` weight matrix, ``True`` where the weight is **kept**.
Every method in the course is "compute a score, then keep the highest scores" at one of four
comparison scopes:

* per row (Wanda): each output neuron keeps the same fraction of its inputs;
* per matrix (the magnitude baseline of the SparseGPT and Wanda papers);
* global (one threshold over many matrices);
* N:M (semi-structured): in every group of M consecutive weights along the input dimension,
  keep the N with the highest score, e.g. 2:4 for NVIDIA's sparse tensor cores.
"""

from __future__ import annotations

import torch

from .errors import InputError


def validate_sparsity(sparsity: float) -> float:
    """Return ``sparsity`` as a float, or raise a ``ValueError`` that says what is allowed."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise InputError(f"sparsity must be a number in (0, 1), e.g. 0.5 for 50%; got {sparsity!r}") from None
    if not 0.0 < value < 1.0:
        hint = " (did you mean a fraction, e.g. 0.5 for 50%?)" if 1.0 <= value <= 100.0 else ""
        raise InputError(f"sparsity must be in (0, 1), got {sparsity!r}{hint}")
    return value


def parse_pattern(pattern: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """Parse an N:M pattern such as ``"2:4"`` into ``(2, 4)``; ``None``/``"unstructured"`` give ``None``."""
    if pattern is None or pattern == "unstructured":
        return None
    if isinstance(pattern, str):
        parts = pattern.split(":")
        try:
            n, m = (int(p) for p in parts)
        except ValueError:
            raise InputError(f"an N:M pattern looks like '2:4' (keep N of every M weights); got {pattern!r}") from None
    else:
        n, m = pattern
    if not (0 < n < m):
        raise InputError(f"an N:M pattern needs 0 < N < M (keep N of every M weights); got {n}:{m}")
    return n, m


def num_to_prune(count: int, sparsity: float) -> int:
    """How many of ``count`` weights a ``sparsity`` removes: ``floor(count * sparsity)``.

    The reference implementations use ``int(count * sparsity)``; the small epsilon keeps float
    noise (``0.29 * 100 = 28.999...``) from removing one weight too few.
    """
    return int(count * sparsity + 1e-9)


def per_row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask removing the ``floor(in_features * sparsity)`` lowest scores of every row."""
    sparsity = validate_sparsity(sparsity)
    k = num_to_prune(scores.shape[1], sparsity)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k:
        lowest = torch.topk(scores, k, dim=1, largest=False).indices
        mask.scatter_(1, lowest, False)
    return mask


def per_matrix_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask removing the ``floor(numel * sparsity)`` lowest scores of the whole matrix."""
    sparsity = validate_sparsity(sparsity)
    k = num_to_prune(scores.numel(), sparsity)
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        mask[torch.topk(scores.flatten(), k, largest=False).indices] = False
    return mask.view_as(scores)


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Keep-masks for several matrices ranked together, removing the lowest ``sparsity`` overall."""
    sparsity = validate_sparsity(sparsity)
    names = list(scores)
    flat = torch.cat([scores[n].flatten().float().cpu() for n in names])
    keep = torch.ones_like(flat, dtype=torch.bool)
    k = num_to_prune(flat.numel(), sparsity)
    if k:
        keep[torch.topk(flat, k, largest=False).indices] = False
    masks, start = {}, 0
    for name in names:
        size = scores[name].numel()
        masks[name] = keep[start : start + size].view_as(scores[name]).to(scores[name].device)
        start += size
    return masks


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask keeping the ``n`` highest scores in each group of ``m`` consecutive input weights."""
    n, m = parse_pattern((n, m))
    rows, cols = scores.shape
    if cols % m:
        raise InputError(
            f"an {n}:{m} pattern groups the {cols} input columns in groups of {m}, but {cols} is not a "
            f"multiple of {m}; choose M dividing the input width or leave this layer unstructured"
        )
    groups = scores.reshape(rows, cols // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.topk(groups, n, dim=2).indices, True)
    return mask.reshape(rows, cols)


def is_nm_sparse(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive input weights has at most ``n`` non-zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    return bool(((weight.reshape(rows, cols // m, m) != 0).sum(dim=2) <= n).all())



def resolve_target(sparsity: float | None, pattern: str | tuple[int, int] | None) -> tuple[float, tuple[int, int] | None]:
    """Validate a (sparsity, pattern) request and return ``(sparsity, (n, m) or None)``.

    With an N:M pattern the sparsity is implied, ``1 - N/M``; a different explicit sparsity is an error.
    """
    nm = parse_pattern(pattern)
    if nm is None:
        if sparsity is None:
            raise InputError("give a sparsity in (0, 1), e.g. 0.5, or an N:M pattern such as 2:4")
        return validate_sparsity(sparsity), None
    implied = 1.0 - nm[0] / nm[1]
    if sparsity is not None and abs(validate_sparsity(sparsity) - implied) > 1e-9:
        raise InputError(
            f"the pattern {nm[0]}:{nm[1]} keeps {nm[0]} of every {nm[1]} weights, i.e. sparsity {implied:g}; "
            f"got sparsity {sparsity}. Drop --sparsity or set it to {implied:g}"
        )
    return implied, nm


def keep_mask(scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None, scope: str = "row") -> torch.Tensor:
    """Keep-mask for ``scores`` at ``sparsity``: N:M groups if ``nm`` is given, else per ``scope`` (row or matrix)."""
    if nm is not None:
        return nm_mask(scores, *nm)
    if scope == "row":
        return per_row_mask(scores, sparsity)
    if scope == "matrix":
        return per_matrix_mask(scores, sparsity)
    raise InputError(f"unknown comparison scope {scope!r}; choose 'row' or 'matrix' (or use global_masks)")
