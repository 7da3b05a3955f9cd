"""Graded checks of notebook 11 (movement pruning, Sanh, Wolf & Rush, NeurIPS 2020).

Every check calls the learner's code on seeded inputs, compares the result with the package
(:mod:`pruning_course.unstructured.movement`: ``TopKBinarizer`` / ``topk_mask``, ``cubic_sparsity``,
the score gradient of ``MaskedLinear``) and, when they differ, recomputes the classic wrong variants
to say which mistake the learner's result matches.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..masks import num_to_prune, per_row_mask
from ..unstructured.movement import MaskedLinear, cubic_sparsity, topk_mask
from . import call, close_to, describe_largest_difference, diagnose, fail, fmt_values, generator, graded_check, passed

__all__ = ["check_topk_binarizer", "check_cubic_sparsity", "check_movement_score_update"]


# ---------------------------------------------------------------------------------------------
# 1. TopKBinarizer: forward = top-k mask of the whole matrix, backward = straight-through
# ---------------------------------------------------------------------------------------------

_FORWARD_CASES = [((7, 13), 0.3), ((5, 33), 0.9), ((1, 9), 0.5), ((12, 10), 0.75), ((9, 7), 0.6), ((16, 16), 0.5)]


def _apply(binarizer, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    __tracebackhide__ = True
    try:
        return call(binarizer.apply, scores, sparsity, name="TopKBinarizer.apply", returns="the float keep-mask Top_v(scores), of the scores' shape")
    except AssertionError as error:
        message = str(error)
        if "incorrect number of gradients" in message:
            message += (". backward must return one gradient per input of forward (after ctx): "
                        "`return grad_output, None` (None for the sparsity, a plain number)")
        elif sparsity == 0 and ("kthvalue" in message or "out of range" in message or "selected" in message):
            message += (". At sparsity 0 (the dense warm-up of the schedule) nothing is removed: return a mask of "
                        "ones before calling kthvalue/topk with k = 0")
        fail(message)


def _diagnose_topk_mask(mask: torch.Tensor, scores: torch.Tensor, sparsity: float, where: str) -> None:
    """Fail with the mistake the boolean ``mask`` matches."""
    __tracebackhide__ = True
    n = scores.numel()
    k = num_to_prune(n, sparsity)
    reference = topk_mask(scores, sparsity)
    removed = n - int(mask.sum())
    if torch.equal(mask, ~reference):
        fail(f"{where}: your mask is inverted: it keeps exactly the {k} scores that should be REMOVED. The mask "
             "multiplies the weights: 1 means the weight STAYS, 0 means it is pruned.")
    if scores.shape[0] > 1 and torch.equal(mask, per_row_mask(scores, sparsity)):
        fail(f"{where}: your mask ranks the scores within each ROW (every row loses floor(in * sparsity) weights). "
             "Hard movement pruning keeps the top v of the whole matrix (Top_v over all its entries): flatten the "
             "scores and use one threshold, so that some rows keep more weights than others.")
    if scores.shape[1] > 1 and torch.equal(mask, per_row_mask(scores.t().contiguous(), sparsity).t()):
        fail(f"{where}: your mask ranks the scores within each COLUMN. Hard movement pruning ranks all the scores "
             "of the matrix together: flatten them and use one threshold.")
    flat, keep = scores.flatten(), mask.flatten()
    kept, dropped = flat[keep], flat[~keep]
    if kept.numel() and dropped.numel() and float(kept.max()) < float(dropped.min()):
        fail(f"{where}: your mask keeps the {kept.numel()} LOWEST scores and removes the highest. Movement pruning "
             "keeps the weights with the HIGHEST scores (those moving away from zero): remove the floor(numel * "
             "sparsity) smallest scores (torch.kthvalue gives the k-th smallest; keep `scores > threshold`).")
    is_top = not kept.numel() or not dropped.numel() or float(kept.min()) > float(dropped.max())
    if is_top:
        if removed in (k - 1, k + 1):
            fail(f"{where}: off by one: your mask removes {removed} of the {n} scores, hard movement removes "
                 f"floor(numel * sparsity) = floor({n} * {sparsity}) = {k}. Use int(numel * sparsity) (floor, not "
                 "round or ceil); torch.kthvalue(flat, k) is the k-th SMALLEST value (1-based), so `scores > "
                 "kthvalue` removes exactly k and `scores >= kthvalue` only k - 1.")
        if n - removed == k or abs((n - removed) - n * sparsity) < 1:
            fail(f"{where}: your mask KEEPS {n - removed} of the {n} scores, a fraction `sparsity` = {sparsity}. "
                 "The sparsity is the fraction REMOVED: remove the floor(numel * sparsity) lowest scores and keep "
                 "the rest.")
        fail(f"{where}: your mask keeps the highest scores but removes {removed} of {n} (a sparsity of "
             f"{removed / n:.1%}); it should remove floor(numel * sparsity) = {k} ({sparsity:.0%} of the matrix).")
    wrong = int((mask != reference).flatten().nonzero()[0])
    position = tuple(int(i) for i in torch.unravel_index(torch.tensor(wrong), scores.shape))
    fail(f"{where}: your mask differs from the top-(1 - sparsity) mask of the whole matrix: at position {position} "
         f"(score {float(flat[wrong]):.4g}) you {'keep' if bool(keep[wrong]) else 'remove'} the weight, the "
         f"reference {'keeps' if bool(reference.flatten()[wrong]) else 'removes'} it (the reference removes the "
         f"{k} lowest scores, i.e. those <= {float(flat.kthvalue(k).values) if k else float('-inf'):.4g}).")


def _check_forward(binarizer) -> None:
    __tracebackhide__ = True
    gen = generator(110)
    for shape, sparsity in _FORWARD_CASES:
        scores = torch.randn(shape, generator=gen)
        before = scores.clone()
        where = f"scores of shape {shape}, sparsity {sparsity}"
        mask = _apply(binarizer, scores, sparsity)
        if not torch.equal(scores, before):
            fail(f"{where}: your forward changed the scores in place; build a new mask tensor instead "
                 "(e.g. `(scores > threshold).to(scores.dtype)`), the scores are trained parameters")
        if not isinstance(mask, torch.Tensor):
            fail(f"{where}: TopKBinarizer.apply should return a torch.Tensor mask, got {type(mask).__name__}")
        if tuple(mask.shape) != tuple(shape):
            hint = " (reshape the flat mask back with .view_as(scores))" if mask.numel() == scores.numel() else ""
            fail(f"{where}: the mask should have the shape of the scores {shape}, got {tuple(mask.shape)}{hint}")
        if not mask.dtype.is_floating_point:
            fail(f"{where}: your mask has dtype {mask.dtype}; return a FLOAT mask of 0s and 1s "
                 "(`mask.to(scores.dtype)`): it multiplies the weights, and autograd sends no gradient back "
                 "through a bool or integer output, so the scores would never learn")
        values = mask.detach()
        if not bool(((values == 0) | (values == 1)).all()):
            if close_to(values, scores * topk_mask(scores, sparsity)):
                fail(f"{where}: your forward returns the masked SCORES (scores * mask); return the mask itself, "
                     "1.0 where the weight stays and 0.0 where it is pruned")
            fail(f"{where}: the mask should hold only 0.0 and 1.0, got values such as {fmt_values(values)}")
        mask = values.bool()
        if not torch.equal(mask, topk_mask(scores, sparsity)):
            _diagnose_topk_mask(mask, scores, sparsity, where)
    scores = torch.randn(4, 6, generator=gen)
    mask = _apply(binarizer, scores, 0.0)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (4, 6) or not bool((mask.detach() == 1).all()):
        fail("at sparsity 0 (the dense warm-up of the schedule) the mask should keep every weight (all ones); "
             f"yours removes {int((mask.detach() == 0).sum()) if isinstance(mask, torch.Tensor) else '?'} of 24")


def _grad_through(binarizer, scores: torch.Tensor, sparsity: float, loss_of_mask: Callable) -> tuple:
    """``(scores.grad, mask)`` after ``loss_of_mask(TopKBinarizer.apply(scores, sparsity)).backward()``."""
    __tracebackhide__ = True
    scores = scores.detach().clone().requires_grad_(True)
    mask = _apply(binarizer, scores, sparsity)
    if not isinstance(mask, torch.Tensor) or not mask.requires_grad:
        fail("the mask returned by TopKBinarizer.apply does not require grad although the scores do: autograd will "
             "never call your backward. Return a float tensor computed in forward (not a bool, not detached "
             "from the Function's output)")
    try:
        loss_of_mask(mask).backward()
    except NotImplementedError:
        fail("TopKBinarizer.backward is not implemented yet: replace `raise NotImplementedError()` with your code")
    except Exception as error:  # the learner's backward crashed or returned the wrong number of values
        message = f"the backward pass through your TopKBinarizer raised {type(error).__name__}: {error}"
        if "incorrect number of gradients" in str(error):
            message += (". backward must return one gradient per input of forward (after ctx): "
                        "`return grad_output, None` (None for the sparsity)")
        fail(message)
    return scores.grad, mask.detach()


def _diagnose_grad(grad, expected: torch.Tensor, mask: torch.Tensor, where: str) -> None:
    __tracebackhide__ = True
    if grad is None or float(grad.detach().abs().sum()) == 0.0:
        fail(f"{where}: the scores receive no gradient (None or all zeros). The mask is a step function whose true "
             "derivative is 0 almost everywhere; movement pruning uses the STRAIGHT-THROUGH estimator instead: "
             "backward returns grad_output unchanged (`return grad_output, None`), as if the mask were the identity.")
    grad = grad.detach()
    if tuple(grad.shape) != tuple(expected.shape):
        fail(f"{where}: the gradient of the scores has shape {tuple(grad.shape)}, expected {tuple(expected.shape)}")
    if close_to(grad, expected):
        return
    if close_to(grad, expected * mask):
        fail(f"{where}: your backward multiplies the gradient by the mask, so pruned weights get no gradient and "
             "their scores can never grow back. Straight-through means grad_output passes UNCHANGED to every "
             "score, kept or pruned: `return grad_output, None`.")
    if close_to(grad, expected * (1 - mask)):
        fail(f"{where}: only the pruned scores receive a gradient (you multiply by 1 - mask); straight-through "
             "passes grad_output unchanged to every score: `return grad_output, None`.")
    if close_to(grad, -expected):
        fail(f"{where}: your gradient has the wrong sign: straight-through returns grad_output itself, not its "
             "negative")
    fail(f"{where}: the gradient of the scores is not the straight-through one (grad_output unchanged): "
         f"{describe_largest_difference(grad, expected)}")


@graded_check
def check_topk_binarizer(binarizer) -> None:
    """Check a ``torch.autograd.Function`` ``TopKBinarizer`` used as ``TopKBinarizer.apply(scores, sparsity)``.

    Forward: a float ``{0, 1}`` mask of the shape of ``scores`` that removes the ``floor(numel *
    sparsity)`` lowest scores of the whole matrix (:func:`pruning_course.unstructured.movement.topk_mask`).
    Backward: the straight-through estimator, ``grad_output`` passed unchanged to the scores
    (``None`` for the sparsity). The gradient is also checked on a small masked linear layer, where
    the straight-through ``dL/dS = W * dL/dW'`` has a closed form.
    """
    __tracebackhide__ = True
    if not (isinstance(binarizer, type) and issubclass(binarizer, torch.autograd.Function)):
        kind = "an instance" if isinstance(binarizer, torch.autograd.Function) else type(binarizer).__name__
        fail(f"pass the class itself (a subclass of torch.autograd.Function with @staticmethod forward(ctx, scores, "
             f"sparsity) and backward(ctx, grad_output)); got {kind}. It is used as TopKBinarizer.apply(scores, "
             "sparsity).")
    _check_forward(binarizer)

    # backward 1: an arbitrary upstream gradient on the mask itself
    gen = generator(111)
    scores = torch.randn(6, 10, generator=gen)
    upstream = torch.randn(6, 10, generator=gen)
    grad, mask = _grad_through(binarizer, scores, 0.6, lambda m: (m * upstream).sum())
    _diagnose_grad(grad, upstream, mask, "L = sum(G * mask) with random G, sparsity 0.6")

    # backward 2: a small masked linear layer y = x (W * M(S))^T, L = sum(G * y)
    weight = torch.randn(3, 5, generator=gen)
    scores = torch.randn(3, 5, generator=gen)
    x = torch.randn(4, 5, generator=gen)
    upstream = torch.randn(4, 3, generator=gen)
    grad_w_eff = upstream.t() @ x  # dL/dW' for W' = W * M
    grad, mask = _grad_through(binarizer, scores, 0.4, lambda m: (upstream * (x @ (weight * m).t())).sum())
    _diagnose_grad(grad, weight * grad_w_eff, mask,
                   "a 3x5 masked linear layer y = x (W * M(S))^T, L = sum(G * y), sparsity 0.4 (analytic dL/dS = "
                   "W * G^T x)")
    passed("TopKBinarizer keeps the top (1 - sparsity) scores of the whole matrix and passes the gradient straight "
           "through (dL/dS = W * dL/dW' on a small layer, as computed by hand)")


# ---------------------------------------------------------------------------------------------
# 2. The cubic sparsity schedule with warm-up and cool-down
# ---------------------------------------------------------------------------------------------

# (total_steps, final_sparsity, initial_sparsity, warmup_steps, cooldown_steps)
_SCHEDULE_CASES = [(40, 0.9, 0.0, 4, 8), (23, 0.8, 0.2, 3, 5), (10, 0.5, 0.0, 0, 0), (100, 0.97, 0.0, 10, 20)]


def _schedule_variants(total: int, final: float, initial: float, warmup: int, cooldown: int) -> list:
    """(values for every step, message) of the classic wrong schedules."""
    __tracebackhide__ = True
    span = total - warmup - cooldown

    def piecewise(progress: Callable[[int], float], shape: Callable[[float], float], clamp: bool = True) -> list:
        __tracebackhide__ = True
        values = []
        for t in range(total):
            if t < warmup:
                values.append(initial)
            elif clamp and t >= total - cooldown:
                values.append(final)
            else:
                values.append(final + (initial - final) * shape(progress(t)))
        return values

    def cubic(p):
        __tracebackhide__ = True
        return (1 - p) ** 3

    def reference(t, w=warmup, c=cooldown, s_i=initial):
        __tracebackhide__ = True
        return cubic_sparsity(t, total, final, s_i, w, c)

    variants = [
        (piecewise(lambda t: (t - warmup + 1) / span, lambda p: 1 - p),
         "your schedule is LINEAR in the step. Zhu & Gupta's schedule is cubic: s_t = s_f + (s_i - s_f) * "
         "(1 - p)^3 with p = (t - warmup + 1) / (total - warmup - cooldown): it prunes fast while there is much "
         "redundancy and slowly at the end"),
        (piecewise(lambda t: (t - warmup + 1) / span, lambda p: 1 - p**3),
         "your schedule prunes slowly at first and fast at the end (s_i + (s_f - s_i) * p^3). Zhu & Gupta do the "
         "opposite: s_t = s_f + (s_i - s_f) * (1 - p)^3, fast at first, slowly near the end"),
        ([100 * reference(t) for t in range(total)],
         "your values are in percent; return the sparsity as a fraction between 0 and 1"),
    ]
    if warmup:
        variants.append(([reference(t, 0, cooldown) for t in range(total)],
                         f"your schedule ignores the warm-up: the first warmup_steps = {warmup} steps must stay at "
                         "initial_sparsity (dense fine-tuning), and the pruning steps start after them: p = (t - "
                         "warmup + 1) / (total - warmup - cooldown)"))
        variants.append((piecewise(lambda t: (t + 1) / span, cubic),
                         "you hold the sparsity during the warm-up but count the progress from step 0, not from the "
                         "end of the warm-up: use p = (t - warmup + 1) / (total - warmup - cooldown)"))
        variants.append((piecewise(lambda t: min((t + 1) / (total - cooldown), 1.0), cubic),
                         "you hold the sparsity during the warm-up but count the progress from step 0 over "
                         "total - cooldown steps: the pruning phase has n = total - warmup - cooldown steps and "
                         "p = (t - warmup + 1) / n"))
    if cooldown:
        variants.append((piecewise(lambda t: (t - warmup + 1) / (total - warmup), cubic),
                         f"you reach final_sparsity too late, only at the last step: the schedule must reach it at "
                         f"step total - cooldown - 1 = {total - cooldown - 1} and hold it during the cool-down (the "
                         "pruning phase has n = total - warmup - cooldown steps)"))
        variants.append((piecewise(lambda t: (t - warmup + 1) / span, cubic, clamp=False),
                         f"after the pruning phase (from step total - cooldown = {total - cooldown}) your sparsity "
                         "keeps moving (the cubic goes past p = 1); during the cool-down it must stay at "
                         "final_sparsity"))
    variants.append((piecewise(lambda t: (t - warmup) / span, cubic),
                     f"off by one: you reach final_sparsity one step late and the first step after the warm-up "
                     f"(t = warmup) prunes nothing. The first pruning step already prunes: p = (t - warmup + 1) / n, "
                     f"so that p = 1 at step total - cooldown - 1 = {total - cooldown - 1}"))
    if initial:
        variants.append(([reference(t, s_i=0.0) for t in range(total)],
                         f"your schedule ignores initial_sparsity (= {initial} here): it starts from and "
                         "interpolates between initial_sparsity and final_sparsity"))
    return variants


def _exponent(values: list, total: int, final: float, initial: float, warmup: int, cooldown: int) -> float | None:
    """The exponent ``e`` with ``values = s_f + (s_i - s_f)(1 - p)^e`` on the pruning steps, if one fits."""
    __tracebackhide__ = True
    span = total - warmup - cooldown
    fits = []
    for t in range(warmup, total - cooldown - 1):
        p = (t - warmup + 1) / span
        ratio = (values[t] - final) / (initial - final)
        if not 0 < ratio < 1:
            return None
        fits.append(math.log(ratio) / math.log(1 - p))
    if len(fits) < 3:
        return None
    e = sum(fits) / len(fits)
    return e if max(abs(f - e) for f in fits) < 1e-3 * max(abs(e), 1) else None


@graded_check
def check_cubic_sparsity(schedule: Callable) -> None:
    """Check ``cubic_sparsity(step, total_steps, final_sparsity, initial_sparsity, warmup_steps, cooldown_steps)``.

    Steps count from 0. Warm-up steps ``t < warmup`` return ``initial_sparsity``; steps ``t >= total
    - cooldown`` return ``final_sparsity``; in between ``s_f + (s_i - s_f) * (1 - p)^3`` with ``p =
    (t - warmup + 1) / (total - warmup - cooldown)`` (Zhu & Gupta 2017, Eq. 1), as
    :func:`pruning_course.unstructured.movement.cubic_sparsity`.
    """
    __tracebackhide__ = True
    name = "cubic_sparsity"
    for total, final, initial, warmup, cooldown in _SCHEDULE_CASES:
        where = (f"total_steps={total}, final_sparsity={final}, initial_sparsity={initial}, warmup_steps={warmup}, "
                 f"cooldown_steps={cooldown}")
        values = []
        for t in range(total):
            value = call(schedule, t, total, final, initial_sparsity=initial, warmup_steps=warmup,
                         cooldown_steps=cooldown, name=name, returns="the sparsity at that step, a Python float")
            if isinstance(value, torch.Tensor):
                fail(f"return a Python float, not a tensor: float(value) or value.item()\n{where}: {name} returned "
                     f"a {tuple(value.shape)} tensor at step {t}; the exercise asks for the sparsity as a Python float.")
            try:
                values.append(float(value))
            except (TypeError, ValueError):
                fail(f"{where}: {name} should return a number (the sparsity at that step), got {type(value).__name__} "
                     f"at step {t}")
        reference = [cubic_sparsity(t, total, final, initial, warmup, cooldown) for t in range(total)]
        if all(abs(v - r) <= 1e-6 for v, r in zip(values, reference)):
            continue
        diagnose(
            _schedule_variants(total, final, initial, warmup, cooldown),
            lambda variant: all(abs(v - r) <= 1e-6 for v, r in zip(values, variant)),
            where,
        )
        bad = next(t for t, (v, r) in enumerate(zip(values, reference)) if abs(v - r) > 1e-6)
        if bad < warmup:
            fail(f"{where}: at warm-up step {bad} you return {values[bad]:.6g}; during the first warmup_steps steps "
                 f"the sparsity stays at initial_sparsity = {initial}.")
        if bad >= total - cooldown:
            fail(f"{where}: at cool-down step {bad} you return {values[bad]:.6g}; from step total - cooldown = "
                 f"{total - cooldown} on the sparsity stays at final_sparsity = {final}.")
        e = _exponent(values, total, final, initial, warmup, cooldown)
        if e is not None:
            fail(f"{where}: your schedule follows (1 - p)^{e:.3g}; Zhu & Gupta's exponent is 3: "
                 "s_t = s_f + (s_i - s_f) * (1 - p)^3.")
        phase = "the last pruning step" if bad == total - cooldown - 1 else "pruning step"
        progress = (bad - warmup + 1) / (total - warmup - cooldown)
        around = slice(max(warmup, bad - 2), bad + 2)
        fail(f"{where}: at {phase} {bad} you return {values[bad]:.6g}, the cubic schedule gives {reference[bad]:.6g} "
             f"(p = (t - warmup + 1) / (total - warmup - cooldown) = {progress:.4g}); "
             f"reference from step {around.start}: {[round(r, 4) for r in reference[around]]}, "
             f"yours {[round(v, 4) for v in values[around]]}.")
    passed("cubic_sparsity holds initial_sparsity during the warm-up, follows s_f + (s_i - s_f)(1 - p)^3 and reaches "
           "final_sparsity at the last pruning step, then holds it during the cool-down")


# ---------------------------------------------------------------------------------------------
# 3. One SGD step on the movement scores
# ---------------------------------------------------------------------------------------------


def _reference_score_step(weight, scores, sparsity, x, upstream, lr) -> tuple[torch.Tensor, torch.Tensor]:
    """Autograd through the package's ``MaskedLinear`` and one ``torch.optim.SGD`` step on the scores."""
    __tracebackhide__ = True
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    masked = MaskedLinear(layer, method="hard")
    with torch.no_grad():
        masked.scores.copy_(scores)
    masked.sparsity = sparsity
    optimizer = torch.optim.SGD([masked.scores], lr=lr)
    (upstream * masked(x)).sum().backward()
    optimizer.step()
    return masked.scores.detach().clone(), upstream.t() @ x


@graded_check
def check_movement_score_update(update: Callable) -> None:
    """Check ``movement_score_update(scores, weight, grad, lr)``: one SGD step ``S - lr * W * grad``.

    ``grad`` is ``dL/dW'``, the gradient of the loss with respect to the masked weight ``W' = W * M(S)``;
    the straight-through estimator makes ``dL/dS = W * dL/dW'`` (Sanh et al. 2020, Sec. 3). The
    reference is autograd through the package's ``MaskedLinear`` followed by ``torch.optim.SGD``.
    """
    __tracebackhide__ = True
    name = "movement_score_update"
    gen = generator(112)
    for (out_features, in_features), lr, sparsity in (((4, 7), 0.1, 0.5), ((6, 3), 0.01, 0.3), ((1, 5), 1.0, 0.4)):
        weight = torch.randn(out_features, in_features, generator=gen)
        scores = torch.randn(out_features, in_features, generator=gen)
        x = torch.randn(3, in_features, generator=gen)
        upstream = torch.randn(3, out_features, generator=gen)
        reference, grad = _reference_score_step(weight, scores, sparsity, x, upstream, lr)
        where = f"a {out_features}x{in_features} layer, lr={lr}"
        inputs = {"weight": weight.clone(), "grad": grad.clone()}
        result = call(update, scores.clone(), inputs["weight"], inputs["grad"], lr, name=name, returns="the updated scores, a tensor of the scores' shape")
        for what, tensor in inputs.items():
            if not torch.equal(tensor, weight if what == "weight" else grad):
                fail(f"{where}: {name} changed the {what} in place; only the scores are updated")
        if not isinstance(result, torch.Tensor):
            fail(f"{where}: {name} should return the updated scores as a torch.Tensor, got {type(result).__name__}")
        if tuple(result.shape) != tuple(scores.shape):
            fail(f"{where}: the updated scores should have the shape of the scores {tuple(scores.shape)}, "
                 f"got {tuple(result.shape)}")
        result = result.detach()
        if close_to(result, reference):
            continue
        step = lr * weight * grad
        variants = [
            (scores + step, "your scores move the wrong way: gradient DEscent subtracts, S <- S - lr * dL/dS. With "
                            "your sign a weight that moves towards zero would gain importance"),
            (-step, "you return the update -lr * W * grad alone; return the updated scores S - lr * W * grad"),
            (scores - lr * weight.abs() * grad,
             "you use |W|; the score gradient is dL/dS = W * dL/dW' with the SIGNED weight: -W * dL/dW' is "
             "positive exactly when the gradient step moves W away from zero, whatever its sign"),
            (scores - lr * grad, "you leave out the weight: by the chain rule through W' = W * M(S) with the "
                                 "straight-through dM/dS = 1, dL/dS = W * dL/dW'"),
            (scores - weight * grad, "you left out the learning rate: S <- S - lr * W * grad"),
            (weight - lr * grad, "that is the SGD step of the WEIGHT; the scores move by -lr * W * dL/dW'"),
        ]
        diagnose(variants, lambda variant: close_to(result, variant), where)
        fail(f"{where}: your updated scores differ from S - lr * W * grad: {describe_largest_difference(result, reference)}.")
    passed("movement_score_update takes the SGD step S - lr * W * dL/dW' that autograd gives through the "
           "straight-through mask: scores grow for weights moving away from zero")
