"""RIA: Relative Importance and Activations (Zhang, Bai, Lin, Zhao, Hou & Cannistraci, "Plug-and-Play: An
Efficient Post-training Pruning Method for Large Language Models", ICLR 2024).

Score of weight ``W_ij`` of an ``(out, in)`` matrix (the paper's definitions of RI and RIA):

    RI_ij  = |W_ij| / sum_k |W_kj|  +  |W_ij| / sum_k |W_ik|      (against its column's and its row's L1 sum)
    RIA_ij = RI_ij * (||X_j||_2)^a,   a = 0.5 by default

where ``||X_j||_2`` is the L2 norm of input feature ``j`` over the calibration tokens. A weight
matters if it is large *relative to the other weights of its input channel and of its output
neuron*, which keeps whole channels from being pruned away; ``a < 1`` damps the activation
outliers that dominate Wanda's ``|W| * ||X||``.

Channel permutation for N:M (the paper's second component): N:M keeps N of every M
*consecutive* input weights, so which input channels share a group decides what can be kept.
Permuting the input channels (columns) so that strong channels are spread over the groups keeps
more of the total score. :func:`ria_channel_permutation` implements the reference's *heuristic
channel reallocation* (columns ranked by the sum of their scores and dealt out to the groups in
snake order, so each group gets one channel of every importance band), then refines it with the
assignment problem of the reference's ``--lsa`` step, one position of the group at a time.

The un-permutation: we permute **only to choose the mask** and return the mask in the original
layout (``mask[:, perm]`` is N:M; :func:`unpermute_mask`). This is exact: ``W x = W[:, perm] x[perm]``
for any permutation, so the pruned model ``W * mask`` computes the same function whether its
weights are stored as they are, or stored permuted as ``(W * mask)[:, perm]`` -- a genuine N:M
matrix a 2:4 kernel can run -- with the input gathered as ``x[..., perm]``. The model itself is
never permuted, so nothing (the residual stream, a producer layer, tied embeddings, a saved
checkpoint) has to follow. The mask in the original layout is *not* N:M on consecutive columns;
it is N:M on the groups ``perm[g*M:(g+1)*M]``.

Where ours differs from the reference code (``lib/prune.py``, ``prune_ria``) and why:

* comparison group: the reference's default (without ``--per_outneuron``) ranks the whole matrix
  at once; so does ours (``scope="matrix"``), and ``scope="row"`` is its ``--per_outneuron``.
  The reference thresholds with ``W_metric <= sorted[int(numel * s)]``, which removes one weight
  more than ``int(numel * s)``; ours removes exactly ``floor(numel * s)`` (as every method here).
* ``||X_j||_2`` is ``sqrt`` of the *mean* of ``x_j^2`` over tokens (the calibration engine's
  :class:`~pruning_course.calibration.SquaredInputNorm`), not of the sum over samples: a constant
  factor per layer, which changes no ranking in any comparison group.
* a row or column whose weights are all zero (0/0 in the reference, NaN scores) gets RI 0.
* the refinement after the heuristic: the reference solves, for each position of the group, the
  linear sum assignment of columns to groups exactly (``scipy.optimize.linear_sum_assignment``,
  only with ``--lsa``, optionally in blocks with ``--fast``); ours solves the same assignment
  problem approximately by pairwise exchanges (2-opt: swap the columns of two groups while that
  increases the kept score), which needs no SciPy and never lowers the kept score. We also keep
  the identity permutation when the heuristic keeps less than it, so the permuted mask keeps at
  least the score of the plain N:M mask, which the reference does not guarantee.
* the N of a pattern: the reference (like the Wanda code it builds on) *prunes* N of every M
  (``topk(..., prune_n, largest=False)``), so its "1:4" keeps three; here N is the number *kept*
  (:mod:`pruning_course.masks`). For 2:4 and 4:8 the two readings agree.
* the reference's default importance of a column is the sum of its scores (``--importance_score
  sum``); its two "retained degree" variants are not implemented.
"""

from __future__ import annotations

import torch

from ..calibration import SquaredInputNorm
from ..errors import InputError
from ..masks import keep_mask, nm_mask, parse_pattern, resolve_target
from ..oneshot import OneShotMethod

RIA_SCOPES = ("matrix", "row")


def relative_importance(weight: torch.Tensor) -> torch.Tensor:
    """``RI_ij = |W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|`` for an ``(out, in)`` weight (float32).

    The first term compares ``W_ij`` with the other weights of input channel ``j`` (its column),
    the second with the other inputs of output neuron ``i`` (its row). An all-zero row or column
    contributes 0 instead of 0/0."""
    w = weight.detach().abs().float()
    column_sums = w.sum(dim=0, keepdim=True)
    row_sums = w.sum(dim=1, keepdim=True)
    by_column = torch.where(column_sums > 0, w / column_sums.clamp_min(torch.finfo(w.dtype).tiny), 0.0)
    by_row = torch.where(row_sums > 0, w / row_sums.clamp_min(torch.finfo(w.dtype).tiny), 0.0)
    return by_column + by_row


def ria_scores(weight: torch.Tensor, act_sq_norm: torch.Tensor, exponent: float = 0.5) -> torch.Tensor:
    """RIA's score ``RI_ij * (||X_j||_2)^a`` with ``a = exponent`` (0.5 in the paper and its code).

    ``act_sq_norm[j]`` is the accumulated *squared* norm of input feature ``j`` (what Wanda uses),
    so ``||X_j||_2^a = act_sq_norm[j] ** (a / 2)``."""
    if act_sq_norm.shape != (weight.shape[1],):
        raise InputError(
            f"act_sq_norm must have one entry per input feature ({weight.shape[1]}), got shape {tuple(act_sq_norm.shape)}"
        )
    try:
        exponent = float(exponent)
    except (TypeError, ValueError):
        raise InputError(f"RIA's activation exponent must be a number (the paper uses 0.5); got {exponent!r}") from None
    activation = act_sq_norm.detach().float().to(weight.device).clamp_min(0).sqrt().pow(exponent)
    return relative_importance(weight) * activation.unsqueeze(0)


def kept_score(scores: torch.Tensor, mask: torch.Tensor) -> float:
    """The total score a keep-mask keeps (what channel permutation maximises)."""
    return float((scores.double() * mask).sum())


def check_permutation(permute: bool, nm) -> None:
    """Channel permutation only exists for N:M: refuse it, with what to do, for anything else."""
    if permute and nm is None:
        raise InputError("RIA's channel permutation is for N:M patterns (it regroups columns into groups of M): "
                         "add a pattern such as 2:4, or drop the permutation")


def reallocation_order(scores: torch.Tensor, m: int) -> torch.Tensor:
    """The reference's heuristic channel reallocation: a permutation ``perm`` of the input columns.

    Columns are ranked by the sum of their scores (ascending) and cut into ``m`` bands of
    ``in / m`` columns; position ``p`` of group ``g`` gets the ``g``-th column of band ``p``, with
    every second band reversed (snake order), so each group holds one channel of each importance
    band and the strongest channels no longer compete inside one group. Group ``g`` is
    ``perm[g*m:(g+1)*m]`` (``scores[:, perm]`` is the permuted layout)."""
    cols = scores.shape[1]
    if cols % m:
        raise InputError(f"channel permutation groups the {cols} input columns in groups of {m}; {cols} is not a multiple of {m}")
    bands = torch.argsort(scores.double().sum(dim=0), stable=True).reshape(m, cols // m)
    bands[1::2] = bands[1::2].flip(1)
    return bands.t().reshape(-1)


def _position_swap_scores(permuted: torch.Tensor, n: int, position: int) -> torch.Tensor:
    """``S[g, k]``: the score group ``g`` keeps (N of M, summed over rows) when its column at
    ``position`` is replaced by the column at ``position`` of group ``k`` (float64, ``(G, G)``).

    ``permuted`` is ``(rows, G, m)``, the scores in the current permuted layout; this is the score
    matrix of the reference's linear-sum-assignment step. With the other ``m - 1`` scores ``o`` of
    a row of group ``g`` sorted, the N kept of ``o`` plus a candidate ``c`` are the top ``N - 1``
    of ``o`` and ``max(c, o_N)``, so ``S[g, k] = sum_rows (top_{N-1}(o) + max(c_k, o_N))``."""
    rows, groups, m = permuted.shape
    others = torch.cat([permuted[:, :, :position], permuted[:, :, position + 1:]], dim=2)  # (rows, G, m-1)
    ordered = torch.sort(others, dim=2, descending=True).values
    fixed = ordered[:, :, : n - 1].sum(dim=(0, 2))  # (G,)
    nth = ordered[:, :, n - 1]  # (rows, G): the N-th largest of the others
    candidates = permuted[:, :, position]  # (rows, G)
    chunk = max(1, (1 << 24) // max(1, rows * groups))
    out = torch.empty(groups, groups, dtype=torch.float64, device=permuted.device)
    for start in range(0, groups, chunk):
        own = nth[:, start:start + chunk].unsqueeze(2)  # (rows, c, 1)
        out[start:start + own.shape[1]] = torch.maximum(own, candidates.unsqueeze(1)).sum(dim=0)
    return out + fixed.unsqueeze(1)


def best_exchange_assignment(swap_scores: torch.Tensor, max_rounds: int = 200) -> torch.Tensor:
    """Approximately maximise ``sum_g S[g, a(g)]`` over permutations ``a`` by pairwise exchanges (2-opt).

    Start from the identity. Each round computes the gain of exchanging the assignments of every
    two groups, ``S[g, a(h)] + S[h, a(g)] - S[g, a(g)] - S[h, a(h)]``, and makes the best exchanges
    that touch disjoint groups (their gains add up) while the gain exceeds a rounding margin;
    rounds stop when none is left. Every exchange strictly raises the total, so it never ends
    below the identity's ``trace(S)``. Returns ``a`` as a LongTensor."""
    groups = swap_scores.shape[0]
    assignment = torch.arange(groups, device=swap_scores.device)
    margin = 1e-9 * float(swap_scores.abs().mean()) + 1e-12
    for _ in range(max_rounds):
        current = swap_scores[:, assignment]  # current[g, h] = S[g, a(h)]
        own = current.diagonal()
        gains = (current + current.t() - own.unsqueeze(1) - own.unsqueeze(0)).triu(1)
        values, flat = torch.topk(gains.flatten(), min(groups, gains.numel()))
        used: set[int] = set()
        pairs = []
        for value, index in zip(values.tolist(), flat.tolist()):
            if value <= margin:
                break
            g, h = divmod(index, groups)
            if g not in used and h not in used:
                used.update((g, h))
                pairs.append((g, h))
        if not pairs:
            break
        first = torch.tensor([g for g, _ in pairs], device=assignment.device)
        second = torch.tensor([h for _, h in pairs], device=assignment.device)
        assignment[first], assignment[second] = assignment[second].clone(), assignment[first].clone()
    return assignment


def ria_channel_permutation(scores: torch.Tensor, n: int, m: int, *, refine: bool = True) -> torch.Tensor:
    """A permutation ``perm`` of the input columns whose N:M mask keeps at least the score of the identity's.

    :func:`reallocation_order` (the reference's heuristic), or the identity where that keeps more,
    then with ``refine`` one round of :func:`best_exchange_assignment` per position of the group
    (the reference's ``--lsa`` rounds, solved by exchanges instead of the Hungarian method).
    The N:M mask of ``scores[:, perm]``, un-permuted with :func:`unpermute_mask`, is the mask."""
    cols = scores.shape[1]
    identity = torch.arange(cols, device=scores.device)
    heuristic = reallocation_order(scores, m)
    perm = max((identity, heuristic), key=lambda p: kept_score(scores[:, p], nm_mask(scores[:, p], n, m)))
    if refine:
        for position in range(m):
            permuted = scores[:, perm].double().reshape(scores.shape[0], cols // m, m)
            assignment = best_exchange_assignment(_position_swap_scores(permuted, n, position))
            grouped = perm.reshape(cols // m, m).clone()
            grouped[:, position] = grouped[assignment, position]
            perm = grouped.reshape(-1)
    return perm


def unpermute_mask(permuted_mask: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The keep-mask in the original column order of a mask chosen on ``scores[:, perm]``:
    ``mask[:, perm] = permuted_mask``."""
    mask = torch.empty_like(permuted_mask)
    mask[:, perm] = permuted_mask
    return mask


def ria_mask(weight: torch.Tensor, act_sq_norm: torch.Tensor, sparsity: float | None = 0.5, pattern=None, *,
             exponent: float = 0.5, scope: str = "matrix", permute: bool = False) -> torch.Tensor:
    """Keep-mask of RIA: the lowest RIA scores of the matrix (``scope="matrix"``, the reference's
    default) or of each row (``"row"``) are dropped; with an N:M pattern, inside each group of M
    input weights, after :func:`ria_channel_permutation` if ``permute``."""
    sparsity, nm = resolve_target(sparsity, pattern)
    check_permutation(permute, nm)
    if scope not in RIA_SCOPES:
        raise InputError(f"unknown RIA comparison scope {scope!r}; choose one of {', '.join(RIA_SCOPES)}")
    scores = ria_scores(weight, act_sq_norm, exponent)
    if nm is None:
        return keep_mask(scores, sparsity, None, scope=scope)
    if not permute:
        return nm_mask(scores, *nm)
    perm = ria_channel_permutation(scores, *nm)
    return unpermute_mask(nm_mask(scores[:, perm], *nm), perm)


def ria_prune_layer(weight: torch.Tensor, act_sq_norm: torch.Tensor, sparsity: float, nm=None, *,
                    exponent: float = 0.5, scope: str = "matrix", permute: bool = False):
    """RIA's per-layer step: ``(weight * mask, mask)``; like Wanda, no weight update."""
    mask = ria_mask(weight, act_sq_norm, sparsity, nm, exponent=exponent, scope=scope, permute=permute)
    return weight * mask, mask


class RiaMethod(OneShotMethod):
    """RIA in the registry: the driver of :class:`~pruning_course.oneshot.OneShotMethod`, with the
    permutation request checked against the pattern before any calibration or weight change."""

    def prune(self, model, adapter, sparsity=0.5, pattern=None, windows=None, **options):
        check_permutation(options.get("permute", False), parse_pattern(pattern))
        return super().prune(model, adapter, sparsity, pattern, windows, **options)


RIA = RiaMethod("ria", SquaredInputNorm, ria_prune_layer, options=("exponent", "scope", "permute"),
                citation="Zhang et al., ICLR 2024 (Plug-and-Play)")
