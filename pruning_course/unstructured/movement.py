"""Movement pruning: learn which weights to keep while fine-tuning (Sanh, Wolf & Rush, NeurIPS 2020).

Magnitude pruning keeps the weights that are *far from zero*; movement pruning keeps the weights
that *move away from zero* during fine-tuning. Every prunable weight ``W_ij`` gets a learnable
importance score ``S_ij``; the forward pass uses ``W' = W * M(S)`` with a binary mask ``M``, and the
backward pass lets the gradient through the non-differentiable mask unchanged (straight-through
estimator, Sec. 3):

    dL/dS_ij = dL/dW'_ij * W_ij            (so with SGD, S_ij = -lr * sum_t dL/dW_ij^(t) * W_ij^(t))

A score grows when the weight and its gradient step point the same way (the weight moves away
from zero) and shrinks when the weight is pulled towards zero.

* **Hard movement** (``"hard"``): ``M = Top_v(S)`` keeps the ``v`` highest scores of each matrix
  (:class:`TopKBinarizer`); the sparsity follows the cubic schedule below.
* **Soft movement** (``"soft"``): ``M = sigmoid(S) > tau`` (:class:`ThresholdBinarizer`) with an L1
  penalty ``lambda * mean sigmoid(S)`` (:func:`soft_movement_penalty`) that pushes the scores
  down; ``tau`` and ``lambda`` follow the cubic schedule (:func:`soft_threshold_schedule`). The
  final sparsity is *not* set directly: the penalty and the task gradient decide it (the paper
  tunes ``lambda`` per target). One ``tau`` serves every matrix, so each matrix ends at its own
  sparsity. To compare methods at a given sparsity, :func:`soft_threshold_for_sparsity` instead
  picks at each step the ``tau`` that removes the scheduled fraction of all soft scores together.
* **Gradual magnitude pruning** (``"magnitude"``, the baseline, Zhu & Gupta 2017): ``M`` keeps the
  largest ``|W|`` of each matrix (:func:`magnitude_binarize`) on the same schedule.

The sparsity schedule is Zhu & Gupta's cubic (:func:`cubic_sparsity`) with the warm-up and
cool-down of Sanh et al.'s code. :class:`MaskedLinear` wraps an existing ``nn.Linear`` or GPT-2
transposed linears; :func:`mask_model` swaps them in, :func:`fold_masks` turns the model back into plain
modules with exact zeros (a normal model that ``save_pretrained`` / ``from_pretrained`` handle).
The fine-tuning loop lives in :mod:`pruning_course.finetune`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..architectures import (
    PRUNABLE_KINDS, ArchitectureAdapter, apply_mask, is_prunable_linear, layout_for, replace_module, weight_matrix,
    weight_with_grad,
)
from ..masks import num_to_prune, validate_sparsity

METHODS = ("hard", "soft", "magnitude")

# In Sanh et al.'s soft movement code the threshold binarizer never keeps fewer than 0.5% of a matrix.
MIN_KEEP_FRACTION = 0.005

# ``select_linears(..., name_parts=MLP)``: the block's MLP linears, as its adapter's layout names them
# (Llama ``mlp.gate_proj/up_proj/down_proj``, GPT-2 ``mlp.c_fc/c_proj``, OPT ``fc1/fc2``).
MLP = "mlp"


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


def _check_schedule(step: int, total_steps: int, warmup_steps: int, cooldown_steps: int) -> None:
    if int(total_steps) != total_steps or total_steps < 1:
        raise InputError(f"total_steps must be a positive integer, got {total_steps!r}")
    if warmup_steps < 0 or cooldown_steps < 0:
        raise InputError(f"warmup_steps and cooldown_steps must be >= 0, got {warmup_steps} and {cooldown_steps}")
    if warmup_steps + cooldown_steps > total_steps:
        raise InputError(
            f"warmup_steps + cooldown_steps ({warmup_steps} + {cooldown_steps}) exceed total_steps ({total_steps}): "
            "the schedule needs steps left to prune in; shorten the warm-up/cool-down or train longer"
        )
    if step < 0:
        raise InputError(f"step must be >= 0, got {step}")


def cubic_schedule(step: int, total_steps: int, initial: float, final: float, warmup_steps: int = 0, cooldown_steps: int = 0) -> float:
    """Cubic interpolation from ``initial`` to ``final`` (Zhu & Gupta 2017, Eq. 1), with warm-up and cool-down.

    Steps count from 0. The first ``warmup_steps`` steps stay at ``initial``, the last
    ``cooldown_steps`` steps (``total - cooldown`` and later) sit at ``final``, and the ``n = total -
    warmup - cooldown`` steps in between follow Eq. 1 with ``t_0 = warmup - 1`` (the last step at
    ``initial``):

        v_t = final + (initial - final) * (1 - (t - t_0) / n)^3

    so the value changes fast at first, when there is a lot of redundancy, slowly near the end,
    and reaches ``final`` at the last pruning step. Sanh et al. use this schedule (their
    ``schedule_threshold``) with warm-up and cool-down set to multiples of the LR warm-up.
    """
    _check_schedule(step, total_steps, warmup_steps, cooldown_steps)
    if step < warmup_steps:
        return float(initial)
    if step >= total_steps - cooldown_steps:
        return float(final)
    span = total_steps - warmup_steps - cooldown_steps  # > 0 here: warmup <= step < total - cooldown
    remaining = 1.0 - (step - warmup_steps + 1) / span
    return float(final + (initial - final) * remaining**3)


def cubic_sparsity(
    step: int,
    total_steps: int,
    final_sparsity: float,
    initial_sparsity: float = 0.0,
    warmup_steps: int = 0,
    cooldown_steps: int = 0,
) -> float:
    """Target sparsity at ``step`` on the cubic schedule of Zhu & Gupta (2017, Eq. 1).

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t_w + 1) / (T - t_w - t_c))^3`` between ``t_w`` warm-up
    steps (dense fine-tuning at ``s_i``) and ``t_c`` cool-down steps (fine-tuning at ``s_f`` while
    the mask settles); see :func:`cubic_schedule` for the step conventions.
    """
    final_sparsity = validate_sparsity(final_sparsity)
    if not 0.0 <= initial_sparsity <= final_sparsity:
        raise InputError(
            f"initial_sparsity must be in [0, final_sparsity={final_sparsity}], got {initial_sparsity}: "
            "the schedule only ever removes weights"
        )
    return cubic_schedule(step, total_steps, initial_sparsity, final_sparsity, warmup_steps, cooldown_steps)


def soft_threshold_schedule(
    step: int,
    total_steps: int,
    final_threshold: float,
    final_lambda: float,
    initial_threshold: float = 0.0,
    warmup_steps: int = 0,
    cooldown_steps: int = 0,
) -> tuple[float, float]:
    """``(tau, lambda)`` of soft movement pruning at ``step``.

    As in Sanh et al.'s code, the threshold ``tau`` on ``sigmoid(S)`` follows the cubic schedule
    from ``initial_threshold`` to ``final_threshold``, and the L1 weight grows with it:
    ``lambda_t = final_lambda * tau_t / final_threshold``.
    """
    if not 0.0 < final_threshold < 1.0:
        raise InputError(f"final_threshold is a threshold on sigmoid(scores) and must be in (0, 1), got {final_threshold}")
    if not 0.0 <= initial_threshold <= final_threshold:
        raise InputError(f"initial_threshold must be in [0, final_threshold={final_threshold}], got {initial_threshold}")
    if final_lambda < 0:
        raise InputError(f"final_lambda must be >= 0, got {final_lambda}")
    tau = cubic_schedule(step, total_steps, initial_threshold, final_threshold, warmup_steps, cooldown_steps)
    return tau, final_lambda * tau / final_threshold


# ---------------------------------------------------------------------------------------------
# Binarizers: scores -> {0, 1} masks with a straight-through gradient
# ---------------------------------------------------------------------------------------------


def topk_mask(scores: torch.Tensor, sparsity: float, tiebreak: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask of the highest scores of the whole matrix, removing ``floor(numel * sparsity)``.

    ``sparsity = 0`` keeps everything (the dense warm-up of the schedule). Same mask as
    :func:`pruning_course.masks.per_matrix_mask` when the scores are distinct, computed with one
    ``kthvalue`` instead of a ``topk`` (several times faster at high sparsity; it runs at every
    training step). Exactly ``floor(numel * sparsity)`` weights go even when scores tie at the
    threshold: the ties with the highest ``tiebreak`` (e.g. ``|W|``) are kept, else the last ones.
    Ties are common early in training: scores start equal, and Adam's first steps move them all
    by the same amount, so breaking them by position would remove whole rows.
    """
    if sparsity == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    k = num_to_prune(scores.numel(), validate_sparsity(sparsity))
    flat = scores.detach().flatten()
    if k == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = flat.kthvalue(k).values
    keep = flat > threshold
    ties = (flat == threshold).nonzero().flatten()
    to_remove = k - int((flat < threshold).sum())  # how many of the tied scores go
    if tiebreak is not None and ties.numel() > to_remove:
        ties = ties[torch.argsort(tiebreak.detach().flatten()[ties], stable=True)]  # lowest tiebreak first
    keep[ties[to_remove:]] = True
    return keep.view_as(scores)


def threshold_mask(scores: torch.Tensor, threshold: float, sigmoid: bool = True) -> torch.Tensor:
    """Keep-mask ``sigmoid(S) > threshold`` (or ``S > threshold``), keeping at least 0.5% of the matrix.

    The floor follows Sanh et al.'s code: if the threshold removes more, the top 0.5% (+1) scores stay.
    ``sigmoid(S) > tau`` is evaluated as ``S > logit(tau)``: the same set, without float32 sigmoid
    values of nearby scores rounding to one number.
    """
    if sigmoid:
        threshold = -math.inf if threshold <= 0 else math.inf if threshold >= 1 else math.log(threshold / (1 - threshold))
    mask = scores.detach() > threshold
    min_keep = int(MIN_KEEP_FRACTION * scores.numel()) + 1
    if int(mask.sum()) < min_keep:
        mask = torch.zeros_like(mask)
        mask.view(-1)[torch.topk(scores.flatten(), min(min_keep, scores.numel())).indices] = True
    return mask


class TopKBinarizer(torch.autograd.Function):
    """Hard movement's mask ``Top_v(S)`` with a straight-through backward pass.

    Forward: a float ``{0, 1}`` mask keeping the top ``1 - sparsity`` of the scores (:func:`topk_mask`;
    ``tiebreak``, e.g. ``|W|``, decides between equal scores).
    Backward: the incoming gradient goes to the scores unchanged, as if ``M(S) = S``.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, sparsity: float, tiebreak: torch.Tensor | None = None) -> torch.Tensor:
        return topk_mask(scores, sparsity, tiebreak).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None, None


class ThresholdBinarizer(torch.autograd.Function):
    """Soft movement's mask ``sigmoid(S) > tau`` with a straight-through backward pass (:func:`threshold_mask`)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, threshold: float, sigmoid: bool = True) -> torch.Tensor:
        return threshold_mask(scores, threshold, sigmoid).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None, None


def magnitude_binarize(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Gradual magnitude pruning's mask: keep the largest ``|W|`` of the matrix (no gradient needed)."""
    return topk_mask(weight.detach().abs(), sparsity).to(weight.dtype)


def global_topk_masks(
    scores: dict[str, torch.Tensor], sparsity: float, tiebreak: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Keep-masks ranking several score matrices together: ``floor(total * sparsity)`` lowest go overall.

    Each matrix ends at its own sparsity (like soft movement's single threshold ``tau``).
    """
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten() for n in names])
    ties = None if tiebreak is None else torch.cat([tiebreak[n].detach().flatten() for n in names])
    keep = topk_mask(flat, sparsity, ties)
    masks, start = {}, 0
    for name in names:
        size = scores[name].numel()
        masks[name] = keep[start : start + size].view_as(scores[name])
        start += size
    return masks


# ---------------------------------------------------------------------------------------------
# Masked layers
# ---------------------------------------------------------------------------------------------


class MaskedLinear(nn.Module):
    """A linear layer computing ``x @ (W * M)^T + b`` with a mask recomputed at every forward pass.

    Wraps an existing prunable linear, ``nn.Linear`` or GPT-2's transposed one (kept as ``self.linear``, so its weight and
    bias keep their names and values). ``method`` chooses the mask:

    * ``"hard"``: ``TopKBinarizer(scores, sparsity)`` (equal scores: the larger ``|W|`` stays);
    * ``"soft"``: ``ThresholdBinarizer(scores, threshold)`` (or the per-matrix top-k when ``sparsity``
      is set, e.g. ``0`` for a dense start);
    * ``"magnitude"``: ``magnitude_binarize(weight, sparsity)`` (no scores).

    The movement methods own a score matrix ``scores`` shaped ``(out, in)`` like ``weight_matrix``,
    initialised to the constant ``score_init`` (Sanh et al. use ``mask_init="constant"``,
    ``mask_scale=0``). The training loop sets ``sparsity`` / ``threshold`` before each step
    (:func:`set_pruning_state`).
    """

    def __init__(self, linear: nn.Module, method: str = "hard", score_init: float = 0.0):
        super().__init__()
        if not is_prunable_linear(linear):
            raise TypeError(f"MaskedLinear wraps a prunable linear ({PRUNABLE_KINDS}), got {type(linear).__name__}")
        if method not in METHODS:
            raise InputError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
        self.linear = linear
        self.method = method
        self.sparsity: float | None = 0.0
        self.threshold: float | None = None
        self.last_kept_fraction: float = 1.0
        if method != "magnitude":
            weight = weight_matrix(linear)
            self.scores = nn.Parameter(torch.full(weight.shape, float(score_init), dtype=torch.float32, device=weight.device))
        else:
            self.register_parameter("scores", None)

    def mask(self) -> torch.Tensor:
        """The float ``{0, 1}`` mask of the current state, differentiable (STE) w.r.t. the scores."""
        if self.method == "magnitude":
            return magnitude_binarize(weight_with_grad(self.linear), self._sparsity())
        if self.method == "soft" and self.sparsity is None:
            if self.threshold is None:
                raise InputError("soft movement needs a threshold: call set_pruning_state(model, threshold=...)")
            return ThresholdBinarizer.apply(self.scores, self.threshold, True)
        return TopKBinarizer.apply(self.scores, self._sparsity(), weight_matrix(self.linear).abs())

    def _sparsity(self) -> float:
        if self.sparsity is None:
            raise InputError(f"{self.method} pruning needs a sparsity: call set_pruning_state(model, sparsity=...)")
        return self.sparsity

    @torch.no_grad()
    def keep_mask(self, sparsity: float | None = None) -> torch.Tensor:
        """Boolean ``(out, in)`` keep-mask: the current one, or the exact top-k at ``sparsity`` if given."""
        if sparsity is None:
            return self.mask().bool()
        magnitude = weight_matrix(self.linear).abs()
        if self.method == "magnitude":
            return topk_mask(magnitude, validate_sparsity(sparsity))
        return topk_mask(self.scores, validate_sparsity(sparsity), tiebreak=magnitude)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.mask()
        self.last_kept_fraction = float(mask.detach().mean())
        weight = weight_with_grad(self.linear)
        return F.linear(x, weight * mask.to(weight.dtype), self.linear.bias)

    def extra_repr(self) -> str:
        return f"method={self.method}, sparsity={self.sparsity}, threshold={self.threshold}"


def masked_linears(model: nn.Module) -> dict[str, MaskedLinear]:
    """Every :class:`MaskedLinear` of ``model`` by its module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MaskedLinear)}


def set_pruning_state(model: nn.Module, sparsity: float | None = None, threshold: float | None = None) -> None:
    """Set the schedule's current ``sparsity`` and/or soft ``threshold`` on every masked layer.

    ``sparsity=None`` on a soft layer means "use the threshold"; hard and magnitude layers keep
    their previous sparsity when ``sparsity`` is ``None``.
    """
    if sparsity is not None and sparsity != 0:
        validate_sparsity(sparsity)
    for module in masked_linears(model).values():
        if module.method == "soft":
            module.sparsity = sparsity
            if threshold is not None:
                module.threshold = float(threshold)
        elif sparsity is not None:
            module.sparsity = float(sparsity)


@torch.no_grad()
def soft_threshold_for_sparsity(model: nn.Module, sparsity: float) -> float:
    """The ``tau`` for which ``sigmoid(S) > tau`` removes a ``sparsity`` fraction of all soft scores together.

    ``tau = sigmoid(s_k)`` with ``s_k`` the ``k``-th smallest score over every soft layer,
    ``k = floor(total * sparsity)``; ``0`` (keep everything) at sparsity 0. Exact up to scores
    that tie with ``s_k``.
    """
    layers = [m for m in masked_linears(model).values() if m.method == "soft"]
    if not layers:
        raise InputError("the model has no soft movement layers: call mask_model(..., method='soft') first")
    if sparsity == 0:
        return 0.0
    flat = torch.cat([m.scores.detach().flatten() for m in layers])
    k = num_to_prune(flat.numel(), validate_sparsity(sparsity))
    if k == 0:
        return 0.0
    return 1.0 / (1.0 + math.exp(-float(flat.kthvalue(k).values)))  # float64: logit(tau) gives back s_k


def soft_movement_penalty(model: nn.Module) -> torch.Tensor:
    """Sanh et al.'s L1 regularizer: the mean over masked matrices of ``mean(sigmoid(S))``.

    ``sigmoid(S) > 0``, so its L1 norm is its sum; dividing by the size of each matrix and
    averaging over matrices gives every matrix the same weight whatever its shape.
    """
    terms = [torch.sigmoid(m.scores).mean() for m in masked_linears(model).values() if m.scores is not None]
    if not terms:
        raise InputError("the model has no masked layers with scores: call mask_model(..., method='soft') first")
    return torch.stack(terms).mean()


def score_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The score matrices, for their own optimizer parameter group (own learning rate)."""
    return [m.scores for m in masked_linears(model).values() if m.scores is not None]


# ---------------------------------------------------------------------------------------------
# Model-level: swap masked layers in, fold them out
# ---------------------------------------------------------------------------------------------


def select_linears(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    blocks: Iterable[int] | None = None,
    name_parts: Iterable[str] | str | None = MLP,
) -> list[str]:
    """Full names of the prunable linears in decoder ``blocks`` whose block-relative name contains one of ``name_parts``.

    ``blocks=None``: every block (negative indices count from the top, ``[-2, -1]``: the last two);
    ``name_parts=None``: every linear of those blocks; the default, :data:`MLP`: the block's MLP
    linears (from the adapter's layout).
    """
    all_blocks = adapter.blocks(model)
    n = len(all_blocks)
    indices = range(n) if blocks is None else [b + n if b < 0 else b for b in blocks]
    mlp = set(layout_for(adapter).mlp_linears) if name_parts == MLP else None
    parts = None if name_parts is None or mlp is not None else tuple(name_parts)
    names = []
    for index in indices:
        if not 0 <= index < n:
            raise InputError(f"block index {index} is out of range: the model has {n} decoder blocks")
        for name in adapter.linears(all_blocks[index]):
            if (name in mlp) if mlp is not None else (parts is None or any(p in name for p in parts)):
                names.append(f"{adapter.blocks_path}.{index}.{name}")
    if not names:
        raise InputError(f"no prunable linear matches {parts} in blocks {list(indices)}")
    return names


def mask_model(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    which_linears: Iterable[str] | Callable[[str], bool] | None = None,
    method: str = "hard",
    score_init: float = 0.0,
) -> dict[str, MaskedLinear]:
    """Replace the chosen prunable linears of ``model`` by :class:`MaskedLinear` wrappers, in place.

    ``which_linears``: full module names (see :func:`select_linears`), a predicate on the full name,
    or ``None`` for every prunable linear of the decoder blocks (never embeddings or the LM head).
    The masks start dense (sparsity 0). Returns ``{name: MaskedLinear}``.
    """
    if method not in METHODS:
        raise InputError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    if masked_linears(model):
        raise InputError("the model already has masked layers: fold_masks(model) first, or mask a fresh copy")
    available = adapter.named_linears(model)
    if which_linears is None:
        names = list(available)
    elif callable(which_linears):
        names = [n for n in available if which_linears(n)]
    else:
        names = list(which_linears)
        unknown = [n for n in names if n not in available]
        if unknown:
            example = next(iter(available), "")
            raise InputError(
                f"{unknown[:3]} are not prunable linears of the decoder blocks (names look like {example!r}; "
                "embeddings and the LM head are never masked)"
            )
    if not names:
        raise InputError("no linear selected for masking")
    wrapped = {}
    for name in names:
        wrapped[name] = MaskedLinear(available[name], method=method, score_init=score_init)
        replace_module(model, name, wrapped[name])
    return wrapped


@torch.no_grad()
def fold_masks(model: nn.Module, sparsity: float | None = None, scope: str = "matrix") -> dict[str, torch.Tensor]:
    """Turn every :class:`MaskedLinear` back into its plain layer with the pruned weights set to zero.

    The mask is the layer's current one (the end of the schedule after training), or, with
    ``sparsity``, the exact top-k of its scores (of ``|W|`` for magnitude) at that sparsity, per
    matrix (``scope="matrix"``) or over all masked layers together (``scope="global"``, the
    soft-movement way: each matrix keeps its own sparsity, the total is exact). The model is then
    a normal ``transformers`` model: ``save_pretrained`` / ``from_pretrained`` work and its logits
    equal the masked model's. Returns the boolean keep-masks by layer name.
    """
    if scope not in ("matrix", "global"):
        raise InputError(f"unknown scope {scope!r}; choose 'matrix' or 'global'")
    layers = masked_linears(model)
    if scope == "global" and sparsity is not None:
        ranking = {n: weight_matrix(m.linear).abs() if m.scores is None else m.scores for n, m in layers.items()}
        magnitude = {n: weight_matrix(m.linear).abs() for n, m in layers.items()}
        masks = global_topk_masks(ranking, validate_sparsity(sparsity), tiebreak=magnitude)
    else:
        masks = {name: module.keep_mask(sparsity) for name, module in layers.items()}
    for name, module in layers.items():
        apply_mask(module.linear, masks[name])
        replace_module(model, name, module.linear)
    return masks


def pruned_fraction(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of removed weights over all the given keep-masks."""
    total = sum(m.numel() for m in masks.values())
    return sum(int((~m).sum()) for m in masks.values()) / max(total, 1)

