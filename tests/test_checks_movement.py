"""The graded checks of notebook 11 (movement pruning): the reference passes, each classic mistake gets its diagnosis."""

from __future__ import annotations

import math

import pytest
import torch

from pruning_course.checks.movement import check_cubic_sparsity, check_movement_score_update, check_topk_binarizer
from pruning_course.masks import num_to_prune, per_row_mask
from pruning_course.unstructured.movement import TopKBinarizer, cubic_sparsity, topk_mask

from check_support import fails_with, not_implemented


# ---------------------------------------------------------------------------------------------
# TopKBinarizer (an autograd.Function)
# ---------------------------------------------------------------------------------------------


def straight_through(ctx, grad_output):
    return grad_output, None


def binarizer(forward, backward=straight_through, save_mask=False):
    """A TopKBinarizer-like autograd.Function made of ``forward(scores, sparsity) -> mask`` and ``backward``."""

    class Binarizer(torch.autograd.Function):
        @staticmethod
        def forward(ctx, scores, sparsity):
            mask = forward(scores, sparsity)
            if save_mask:
                ctx.save_for_backward(mask)
            return mask

        @staticmethod
        def backward(ctx, grad_output):
            return backward(ctx, grad_output)

    return Binarizer


def kth_solution(scores, sparsity):
    """The notebook's solution: one kthvalue threshold over the whole matrix."""
    k = int(scores.numel() * sparsity)
    if k == 0:
        return torch.ones_like(scores)
    threshold = scores.flatten().kthvalue(k).values
    return (scores > threshold).to(scores.dtype)


def remove_lowest(scores, r):
    """Float mask removing the ``r`` lowest scores of the whole matrix."""
    mask = torch.ones(scores.numel(), dtype=scores.dtype)
    if r:
        mask[torch.topk(scores.flatten(), r, largest=False).indices] = 0
    return mask.view_as(scores)


def test_reference_binarizer_passes(capsys):
    check_topk_binarizer(TopKBinarizer)
    assert "\u2713" in capsys.readouterr().out


def test_kthvalue_solution_passes():
    check_topk_binarizer(binarizer(kth_solution))


def test_binarizer_not_implemented():
    fails_with(check_topk_binarizer, binarizer(not_implemented), "not implemented yet")


def test_binarizer_backward_not_implemented():
    fails_with(check_topk_binarizer, binarizer(kth_solution, lambda ctx, g: not_implemented()),
               "backward is not implemented yet")


def test_binarizer_passed_as_a_function_or_an_instance():
    fails_with(check_topk_binarizer, kth_solution, "pass the class itself", "autograd.Function")


def test_binarizer_keeping_the_lowest_scores():
    fails_with(check_topk_binarizer, binarizer(lambda s, p: kth_solution(-s, p)), "LOWEST", "HIGHEST")


def test_binarizer_inverted():
    fails_with(check_topk_binarizer, binarizer(lambda s, p: 1 - topk_mask(s, p).float() if p else torch.ones_like(s)),
               "inverted", "STAYS")


@pytest.mark.parametrize("count", [
    lambda n, p: num_to_prune(n, p) - 1,   # scores >= kthvalue
    lambda n, p: math.ceil(n * p),          # ceil instead of floor
    lambda n, p: round(n * p),              # round instead of floor
])
def test_binarizer_off_by_one(count):
    fails_with(check_topk_binarizer, binarizer(lambda s, p: remove_lowest(s, count(s.numel(), p))), "off by one",
               "floor(numel * sparsity)")


def test_binarizer_strict_kthvalue_comparison():
    def at_least(scores, sparsity):
        k = int(scores.numel() * sparsity)
        if k == 0:
            return torch.ones_like(scores)
        return (scores >= scores.flatten().kthvalue(k).values).float()

    fails_with(check_topk_binarizer, binarizer(at_least), "off by one", "kthvalue")


def test_binarizer_keeping_the_fraction_sparsity():
    fails_with(check_topk_binarizer, binarizer(lambda s, p: remove_lowest(s, s.numel() - num_to_prune(s.numel(), p))),
               "fraction `sparsity`", "REMOVED")


def test_binarizer_sparsity_off_target():
    fails_with(check_topk_binarizer, binarizer(lambda s, p: remove_lowest(s, num_to_prune(s.numel(), p) // 2)),
               "keeps the highest scores but removes")


def test_binarizer_ranking_per_row():
    fails_with(check_topk_binarizer, binarizer(lambda s, p: per_row_mask(s, p).float()), "within each ROW",
               "whole matrix")


def test_binarizer_ranking_per_column():
    fails_with(check_topk_binarizer, binarizer(lambda s, p: per_row_mask(s.t().contiguous(), p).t().float()),
               "within each COLUMN")


def test_binarizer_returning_a_bool_mask():
    fails_with(check_topk_binarizer, binarizer(lambda s, p: topk_mask(s, p)), "FLOAT mask", "torch.bool")


def test_binarizer_returning_the_masked_scores():
    fails_with(check_topk_binarizer, binarizer(lambda s, p: s * topk_mask(s, p)), "masked SCORES")


def test_binarizer_changing_the_scores_in_place():
    def in_place(scores, sparsity):
        mask = topk_mask(scores, sparsity).float()
        scores.mul_(mask)
        return mask

    fails_with(check_topk_binarizer, binarizer(in_place), "in place")


def test_binarizer_crashing_at_sparsity_zero():
    def no_zero_case(scores, sparsity):
        threshold = scores.flatten().kthvalue(int(scores.numel() * sparsity)).values
        return (scores > threshold).float()

    fails_with(check_topk_binarizer, binarizer(no_zero_case), "sparsity 0", "mask of ones")


def test_binarizer_with_zero_gradient():
    fails_with(check_topk_binarizer, binarizer(kth_solution, lambda ctx, g: (torch.zeros_like(g), None)),
               "no gradient", "STRAIGHT-THROUGH")


def test_binarizer_with_no_gradient():
    fails_with(check_topk_binarizer, binarizer(kth_solution, lambda ctx, g: (None, None)), "no gradient")


def test_binarizer_multiplying_the_gradient_by_the_mask():
    def masked_grad(ctx, grad_output):
        (mask,) = ctx.saved_tensors
        return grad_output * mask, None

    fails_with(check_topk_binarizer, binarizer(kth_solution, masked_grad, save_mask=True),
               "multiplies the gradient by the mask", "UNCHANGED")


def test_binarizer_with_a_negated_gradient():
    fails_with(check_topk_binarizer, binarizer(kth_solution, lambda ctx, g: (-g, None)), "wrong sign")


def test_binarizer_with_a_scaled_gradient():
    fails_with(check_topk_binarizer, binarizer(kth_solution, lambda ctx, g: (2 * g, None)), "not the straight-through")


def test_binarizer_backward_returning_one_value():
    fails_with(check_topk_binarizer, binarizer(kth_solution, lambda ctx, g: g), "return grad_output, None")


def test_binarizer_detaching_its_output():
    class Detached(torch.autograd.Function):
        @staticmethod
        def forward(ctx, scores, sparsity):
            return kth_solution(scores, sparsity)

        @staticmethod
        def backward(ctx, grad_output):
            return grad_output, None

        @classmethod
        def apply(cls, scores, sparsity):
            return super().apply(scores, sparsity).detach()

    fails_with(check_topk_binarizer, Detached, "does not require grad")


# ---------------------------------------------------------------------------------------------
# cubic_sparsity(step, total_steps, final_sparsity, initial_sparsity, warmup_steps, cooldown_steps)
# ---------------------------------------------------------------------------------------------


def schedule(shape=lambda p: (1 - p) ** 3, progress=None, clamp=True, hold_warmup=True, use_initial=True, scale=1.0):
    """A cubic_sparsity built from its parts; the defaults give the correct schedule."""

    def cubic(step, total_steps, final_sparsity, initial_sparsity=0.0, warmup_steps=0, cooldown_steps=0):
        s_i = initial_sparsity if use_initial else 0.0
        if hold_warmup and step < warmup_steps:
            return scale * s_i
        if clamp and step >= total_steps - cooldown_steps:
            return scale * final_sparsity
        p = (progress or (lambda t, T, w, c: (t - w + 1) / (T - w - c)))(step, total_steps, warmup_steps, cooldown_steps)
        return scale * (final_sparsity + (s_i - final_sparsity) * shape(p))

    return cubic


def test_reference_schedule_passes(capsys):
    check_cubic_sparsity(cubic_sparsity)
    assert "\u2713" in capsys.readouterr().out


def test_independent_schedule_passes():
    check_cubic_sparsity(schedule())


def test_schedule_returning_a_tensor_is_told_to_return_a_python_float():
    # the notebook asks for "s_t as a Python float"
    fails_with(check_cubic_sparsity, lambda *a, **k: torch.tensor(cubic_sparsity(*a, **k)), "Python float")


def test_schedule_not_implemented():
    fails_with(check_cubic_sparsity, not_implemented, "not implemented yet")


@pytest.mark.parametrize("wrong,fragments", [
    (schedule(shape=lambda p: 1 - p), ["LINEAR"]),
    (schedule(shape=lambda p: 1 - p**3), ["slowly at first"]),
    (schedule(shape=lambda p: (1 - p) ** 2), ["(1 - p)^2", "exponent is 3"]),
    (schedule(scale=100.0), ["percent"]),
    (schedule(hold_warmup=False, progress=lambda t, T, w, c: (t + 1) / (T - c)), ["ignores the warm-up"]),
    (schedule(progress=lambda t, T, w, c: (t + 1) / (T - w - c)), ["from step 0"]),
    (schedule(progress=lambda t, T, w, c: (t - w + 1) / (T - w)), ["too late", "cool-down"]),
    (schedule(clamp=False), ["keeps moving", "cool-down"]),
    (schedule(progress=lambda t, T, w, c: (t - w) / (T - w - c)), ["off by one", "one step late"]),
    (schedule(use_initial=False), ["ignores initial_sparsity"]),
])
def test_wrong_schedules_are_diagnosed(wrong, fragments):
    fails_with(check_cubic_sparsity, wrong, *fragments)


def test_schedule_wrong_during_the_warmup():
    def wrong(step, total_steps, final_sparsity, initial_sparsity=0.0, warmup_steps=0, cooldown_steps=0):
        if step == warmup_steps - 1:
            return 0.01
        return cubic_sparsity(step, total_steps, final_sparsity, initial_sparsity, warmup_steps, cooldown_steps)

    fails_with(check_cubic_sparsity, wrong, "warm-up step 3")


def test_schedule_wrong_at_one_pruning_step():
    def wrong(step, total_steps, final_sparsity, initial_sparsity=0.0, warmup_steps=0, cooldown_steps=0):
        value = cubic_sparsity(step, total_steps, final_sparsity, initial_sparsity, warmup_steps, cooldown_steps)
        return value + 0.01 if step == 10 else value

    fails_with(check_cubic_sparsity, wrong, "at pruning step 10", "p = (t - warmup + 1)")


def test_schedule_returning_something_else():
    fails_with(check_cubic_sparsity, lambda *a, **k: None, "should return a number")


# ---------------------------------------------------------------------------------------------
# movement_score_update(scores, weight, grad, lr)
# ---------------------------------------------------------------------------------------------


def test_reference_score_update_passes(capsys):
    check_movement_score_update(lambda s, w, g, lr: s - lr * w * g)
    assert "\u2713" in capsys.readouterr().out


def test_in_place_score_update_passes():
    check_movement_score_update(lambda s, w, g, lr: s.sub_(lr * w * g))


def test_score_update_not_implemented():
    fails_with(check_movement_score_update, not_implemented, "not implemented yet")


@pytest.mark.parametrize("wrong,fragment", [
    (lambda s, w, g, lr: s + lr * w * g, "wrong way"),
    (lambda s, w, g, lr: -lr * w * g, "update -lr * W * grad alone"),
    (lambda s, w, g, lr: s - lr * w.abs() * g, "SIGNED weight"),
    (lambda s, w, g, lr: s - lr * g, "leave out the weight"),
    (lambda s, w, g, lr: s - w * g, "learning rate"),
    (lambda s, w, g, lr: w - lr * g, "SGD step of the WEIGHT"),
    (lambda s, w, g, lr: s * 0.5, "differ from S - lr * W * grad"),
])
def test_wrong_score_updates_are_diagnosed(wrong, fragment):
    fails_with(check_movement_score_update, wrong, fragment)


def test_score_update_changing_the_weight_in_place():
    fails_with(check_movement_score_update, lambda s, w, g, lr: s - lr * w.mul_(g), "changed the weight in place")


def test_checks_do_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_topk_binarizer(TopKBinarizer)
    check_movement_score_update(lambda s, w, g, lr: s - lr * w * g)
    assert torch.equal(torch.rand(3), expected)
