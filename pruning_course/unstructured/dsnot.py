"""DSnoT: Dynamic Sparse No Training (Zhang, Zhao, Lin, Zhang, Zhong, Jiang, Liu & Ji, "Dynamic Sparse No
Training: Training-Free Fine-tuning for Sparse LLMs", ICLR 2024).

DSnoT takes the mask of a one-shot method (Wanda, SparseGPT, ...) and edits it, training-free and
without changing any kept weight's value: in every output row ``r`` it repeatedly *grows* one
pruned weight and *prunes* one kept weight (so the row keeps its number of weights), driven by the
row's **expected reconstruction error** over the calibration inputs ``x``:

    eps_r = E[ W_r x - W'_r x ] = sum_j (W_rj - W'_rj) E[x_j]

(``W`` dense, ``W'`` pruned). Each cycle (the paper's method section and its pseudocode):

* grow: among the pruned weights, the one with the largest ``sign(eps_r) * W_ri E[x_i] / Var[x_i]^p``
  (restoring it moves ``eps_r`` towards 0 the most, preferring inputs whose contribution varies
  least, so the expectation is a good estimate; ``p = 1``);
* prune: among the kept weights whose contribution has the opposite sign, ``sign(W'_rj E[x_j]) =
  -sign(eps_r)`` (removing it also moves ``eps_r`` towards 0), the one with the lowest Wanda score
  ``|W'_rj| ||x_j||``; for N:M, the lowest Wanda score among the kept weights of the grown
  weight's group of M, so every group keeps N;
* stop a row when ``|eps_r|`` is at most the update threshold, when the swap would flip the sign of
  ``eps_r`` (sign-consistent updates), when no candidate is left, or after ``max_cycles = 50`` cycles.

Where ours differs from the reference code (``lib/prune.py``, ``prune_DSnoT``) and why:

* **exact-error guard** (ours): a swap is made only if it lowers the row's exact squared
  reconstruction error ``E[((W_r - W'_r) x)^2] = (W_r - W'_r) E[x x^T] (W_r - W'_r)^T`` on the
  calibration inputs; the first swap that would not stops the row, as the reference's other
  stopping rules do. DSnoT's criteria only look at the *mean* error ``eps``, and a swap that zeroes
  the mean can still raise ``||X W^T - X W'^T||``: with the guard DSnoT never does worse than its
  base mask on the calibration data. It costs ``E[x x^T]`` per layer (what SparseGPT needs anyway)
  and one rank-2 update per cycle. ``guard=False`` gives the reference's rule; on the tiny random
  models of the tests it raises the reconstruction error of most block-0 layers above Wanda's.
* **units of the threshold**: the reference's ``eps`` sums over the tokens of a 2048-token window
  (its ``sum_metric_row``), so its ``--update_threshold 0.1`` is per window; ours is per token, and
  the default ``0.1 / 2048`` is the same threshold at the reference's window length, whatever the
  window length here.
* **variance**: ours is the exact ``E[x^2] - E[x]^2`` over all calibration tokens; the reference
  averages per-batch variances, which leaves out the spread of the batch means.
* **sign-consistency**: the reference's N:M branch always requires it; its unstructured branch
  skips it unless ``--without_same_sign`` is false, and that flag is ``type=bool, default=True``
  (argparse turns any given string, "False" too, into True), so it is always skipped there. We
  apply it in both (``same_sign=True``; ``False`` gives the reference's unstructured behaviour).
* **candidates run out**: the reference walks its sorted candidate lists by index and, past the
  weights of the helpful sign, goes on into the others (and in growing into weights that are not
  pruned); ours stops the row instead.
* **base weights**: the reference recomputes the base *mask* inside DSnoT (for SparseGPT, only its
  saliency ``w^2 / [U]_jj^2`` ranked per row, without SparseGPT's weight updates). Ours runs the
  registered base method itself and edits its result: SparseGPT's updated weights stay, a grown
  weight takes its dense value, a pruned one becomes 0; for Wanda this is the reference's rule.
* **which layers**: the reference skips the MLP linears by default (``--skip_layer mlp``); the
  guard makes DSnoT safe on every layer, so ours edits every prunable linear (one protocol for
  all methods).
* the N of a pattern is the number kept (:mod:`pruning_course.masks`); the reference prunes N of
  every M and only allows 2:4 and 4:8, where both readings agree.
* the reference's N:M branch uses the base method's score (not Wanda's) to choose which weight of
  the group to prune; ours uses Wanda's score in both branches.
"""

from __future__ import annotations

import numbers

import torch

from ..calibration import InputHessian, InputMoments, Moments, SquaredInputNorm
from ..errors import InputError
from ..oneshot import OneShotMethod

DEFAULT_THRESHOLD = 0.1 / 2048  # the reference's 0.1 per 2048-token window, per token


def expected_error(residual: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``eps_r = sum_j R_rj E[x_j]`` for the residual ``R = W - W'`` (``(out, in)``): the mean over the
    calibration tokens of each output's error ``W_r x - W'_r x`` (float64, ``(out,)``)."""
    return residual.double() @ mean.double()


def squared_error(residual: torch.Tensor, second_moment: torch.Tensor) -> torch.Tensor:
    """``E[(R_r x)^2] = R_r E[x x^T] R_r^T`` per output row (float64, ``(out,)``): the mean squared
    reconstruction error, ``||X W^T - X W'^T||^2 / tokens`` summed over the rows."""
    r = residual.double()
    return ((r @ second_moment.double()) * r).sum(dim=1)


def growth_scores(residual: torch.Tensor, moments: Moments, var_power: float = 1.0) -> torch.Tensor:
    """``R_ri E[x_i] / Var[x_i]^p``: how much restoring pruned weight ``i`` lowers ``eps_r``, per
    unit of its input's variance (the growing criterion; ``R_ri = W_ri`` for a pruned weight)."""
    variance = moments.variance.double().clamp_min(torch.finfo(torch.float64).tiny)
    return residual.double() * moments.mean.double() / variance.pow(var_power)


def _ranked(values: torch.Tensor, valid: torch.Tensor, descending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the column indices of the ``valid`` entries by ``values`` (then the rest), and how many are valid."""
    fill = float("-inf") if descending else float("inf")
    order = torch.argsort(torch.where(valid, values, fill), dim=1, descending=descending, stable=True)
    return order, valid.sum(dim=1)


def _at(order: torch.Tensor, pointer: torch.Tensor) -> torch.Tensor:
    return order.gather(1, pointer.clamp_max(order.shape[1] - 1).unsqueeze(1)).squeeze(1)


@torch.no_grad()
def dsnot_update(weight: torch.Tensor, pruned_weight: torch.Tensor, mask: torch.Tensor, moments: Moments, nm=None, *,
                 max_cycles: int = 50, threshold: float = DEFAULT_THRESHOLD, var_power: float = 1.0,
                 same_sign: bool = True, guard: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """DSnoT's prune-and-grow on one layer: ``(new pruned weight, new keep-mask)``.

    ``weight`` is the dense ``(out, in)`` matrix, ``pruned_weight`` and ``mask`` the base method's
    result (zero where the mask is False), ``moments`` the layer's :class:`~pruning_course.calibration.Moments`,
    ``nm`` an ``(n, m)`` pattern or None. Every row keeps its number of weights (and, for N:M,
    every group its N). All rows advance together, one swap per row per cycle, in float64.
    ``guard=False`` drops the exact-error guard (the reference's rule: swaps judged by the mean
    error alone)."""
    rows, cols = weight.shape
    W = weight.detach().double()
    pruned = pruned_weight.detach().double().clone()
    keep = mask.detach().bool().clone()
    residual = W - pruned
    mean = moments.mean.double().to(W.device)
    second = moments.second_moment.double().to(W.device)
    norm = moments.mean_sq.double().to(W.device).clamp_min(0).sqrt()
    moments = Moments(moments.tokens, mean, moments.mean_sq.to(W.device), second)

    eps = expected_error(residual, mean)
    initial_sign = torch.sign(eps)
    error_times_moment = residual @ second  # (R E[x x^T])_rj, kept up to date for the exact guard
    growth = growth_scores(residual, moments, var_power)
    grow_up, grow_up_count = _ranked(growth, ~keep & (growth > 0), descending=True)  # for eps > 0
    grow_down, grow_down_count = _ranked(growth, ~keep & (growth < 0), descending=False)  # for eps < 0
    wanda = pruned.abs() * norm
    contribution = pruned * mean
    prune_for_up, prune_up_count = _ranked(wanda, keep & (contribution < 0), descending=False)
    prune_for_down, prune_down_count = _ranked(wanda, keep & (contribution > 0), descending=False)
    pointers = {name: torch.zeros(rows, dtype=torch.long, device=W.device) for name in ("gu", "gd", "pu", "pd")}
    grown = torch.zeros_like(keep)
    active = torch.ones(rows, dtype=torch.bool, device=W.device)
    index = torch.arange(rows, device=W.device)

    for _ in range(max_cycles):
        live = active & (eps.abs() > threshold)
        if not bool(live.any()):
            break
        up = eps > 0
        grow = torch.where(up, _at(grow_up, pointers["gu"]), _at(grow_down, pointers["gd"]))
        can_grow = torch.where(up, pointers["gu"] < grow_up_count, pointers["gd"] < grow_down_count)
        if nm is None:
            prune = torch.where(up, _at(prune_for_up, pointers["pu"]), _at(prune_for_down, pointers["pd"]))
            can_prune = torch.where(up, pointers["pu"] < prune_up_count, pointers["pd"] < prune_down_count)
        else:
            m = nm[1]
            group = (grow - grow % m).unsqueeze(1) + torch.arange(m, device=W.device)
            candidates = keep.gather(1, group) & ~grown.gather(1, group)
            lowest = torch.where(candidates, wanda.gather(1, group), float("inf")).min(dim=1)
            prune = group.gather(1, lowest.indices.unsqueeze(1)).squeeze(1)
            can_prune = torch.isfinite(lowest.values)

        a = -residual[index, grow]  # change of R_ri when weight i is restored
        b = pruned[index, prune]  # change of R_rj when weight j is removed
        eps_change = a * mean[grow] + b * mean[prune]
        error_change = (2 * a * error_times_moment[index, grow] + 2 * b * error_times_moment[index, prune]
                        + a * a * second[grow, grow] + b * b * second[prune, prune] + 2 * a * b * second[grow, prune])
        accept = live & can_grow & can_prune
        if guard:
            accept &= error_change < 0
        if same_sign:
            accept &= torch.sign(eps + eps_change) == initial_sign

        r, i, j = index[accept], grow[accept], prune[accept]
        keep[r, i], keep[r, j] = True, False
        grown[r, i] = True
        pruned[r, i], pruned[r, j] = W[r, i], 0.0
        residual[r, i], residual[r, j] = 0.0, W[r, j]
        eps[r] += eps_change[accept]
        error_times_moment[r] += a[accept].unsqueeze(1) * second[i] + b[accept].unsqueeze(1) * second[j]
        pointers["gu"] += accept & up
        pointers["gd"] += accept & ~up
        pointers["pu"] += accept & up
        pointers["pd"] += accept & ~up
        active = accept
    return pruned.to(pruned_weight.dtype), keep


def base_method(name) -> OneShotMethod:
    """The registered one-shot method DSnoT starts from, or an InputError that says which can be."""
    from ..methods import REGISTRY

    usable = [n for n, method in REGISTRY.items() if method.statistic in _BASE_STATISTICS and n != "dsnot"]
    if not isinstance(name, str) or name not in usable:
        raise InputError(f"DSnoT edits the mask of a base method; unknown base method {name!r}: choose one of "
                         f"{', '.join(usable)} (default wanda)")
    return REGISTRY[name]


_BASE_STATISTICS = {None: lambda m: None, SquaredInputNorm: lambda m: m.mean_sq, InputHessian: lambda m: 2 * m.second_moment}


def check_dsnot_options(options: dict) -> None:
    """Validate DSnoT's own options (its base method and hyper-parameters) before any work."""
    base_method(options.get("base", "wanda"))
    cycles = options.get("max_cycles", 50)
    if not isinstance(cycles, numbers.Integral) or isinstance(cycles, bool) or cycles < 0:
        raise InputError(f"DSnoT's max_cycles is a whole number >= 0 (the paper uses 50); got {cycles!r}")
    for name in ("threshold", "var_power"):
        value = options.get(name, 0.0)
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or value < 0:
            raise InputError(f"DSnoT's {name} is a number >= 0; got {value!r}")


def dsnot_prune_layer(weight: torch.Tensor, moments: Moments, sparsity: float, nm=None, *, base: str = "wanda",
                      max_cycles: int = 50, threshold: float = DEFAULT_THRESHOLD, var_power: float = 1.0,
                      same_sign: bool = True, guard: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """DSnoT's per-layer step: the ``base`` method's per-layer step on the same statistics, then
    :func:`dsnot_update` of its mask."""
    check_dsnot_options({"base": base, "max_cycles": max_cycles, "threshold": threshold, "var_power": var_power})
    method = base_method(base)
    pruned, mask = method.prune_layer(weight, _BASE_STATISTICS[method.statistic](moments), sparsity, nm)
    return dsnot_update(weight, pruned, mask, moments, nm, max_cycles=max_cycles, threshold=threshold,
                        var_power=var_power, same_sign=same_sign, guard=guard)


class DSnoTMethod(OneShotMethod):
    """DSnoT in the registry: the one-shot driver, with the base method checked before any work."""

    def check_options(self, options: dict) -> None:
        super().check_options(options)
        check_dsnot_options(options)


DSNOT = DSnoTMethod("dsnot", InputMoments, dsnot_prune_layer,
                    options=("base", "max_cycles", "threshold", "var_power", "same_sign", "guard"),
                    citation="Zhang et al., ICLR 2024 (Dynamic Sparse No Training)")
