"""The graded checks of notebook 03 (Wanda): the reference passes, each classic mistake gets its diagnosis."""

from __future__ import annotations

import math

import pytest
import torch

from pruning_course.calibration import SquaredInputNorm
from pruning_course.checks.wanda import (
    check_activation_norm_hook,
    check_nm_mask,
    check_relative_output_error,
    check_wanda_mask,
    check_wanda_scores,
)
from pruning_course.evaluate import relative_output_error
from pruning_course.masks import nm_mask, num_to_prune, per_matrix_mask, per_row_mask
from pruning_course.unstructured import wanda_scores

from check_support import fails_with, not_implemented


# ---------------------------------------------------------------------------------------------
# collect_act_sq_norms(linear, model, batches)
# ---------------------------------------------------------------------------------------------


def collect_reference(linear, model, batches):
    stat = SquaredInputNorm(linear)
    handle = linear.register_forward_hook(lambda _m, args, _out: stat.add(args[0]))
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        handle.remove()
    return stat.value


def collect_with(update, finish=lambda acc, tokens, batches: acc, use_output=False, remove=True):
    """A hook-based collector whose accumulation rule is ``update(acc, x) -> acc``."""

    def collect(linear, model, batches):
        state = {"acc": None, "tokens": 0, "batches": 0}

        def hook(_module, args, output):
            x = (output if use_output else args[0]).detach()
            state["acc"] = update(state["acc"], x)
            state["tokens"] += x.reshape(-1, x.shape[-1]).shape[0]
            state["batches"] += 1

        handle = linear.register_forward_hook(hook)
        with torch.no_grad():
            for batch in batches:
                model(batch)
        if remove:
            handle.remove()
        return finish(state["acc"], state["tokens"], state["batches"])

    return collect


def flat_sq(x):
    return x.reshape(-1, x.shape[-1]).pow(2).sum(dim=0)


def add(acc, value):
    return value if acc is None else acc + value


def test_reference_collector_passes(capsys):
    check_activation_norm_hook(collect_reference)
    assert "\u2713" in capsys.readouterr().out


def test_plain_sum_and_mean_of_batch_sums_pass_as_constant_multiples(capsys):
    # the sum of squares (no division) and "mean over batches" of per-batch SUMS are constant multiples
    check_activation_norm_hook(collect_with(lambda acc, x: add(acc, flat_sq(x))))
    assert "constant factor" in capsys.readouterr().out
    check_activation_norm_hook(collect_with(lambda acc, x: add(acc, flat_sq(x)), lambda acc, t, b: acc / b))


def test_collector_not_implemented():
    fails_with(check_activation_norm_hook, not_implemented, "not implemented yet")


def test_collector_returning_norms_instead_of_squared_norms():
    fails_with(check_activation_norm_hook,
               collect_with(lambda acc, x: add(acc, flat_sq(x)), lambda acc, t, b: (acc / t).sqrt()),
               "norms ||X_j||", "SQUARED")


def test_collector_taking_a_norm_per_batch():
    fails_with(check_activation_norm_hook, collect_with(lambda acc, x: add(acc, flat_sq(x).sqrt())),
               "norm (sqrt) per batch")


def test_collector_averaging_per_batch_means():
    fails_with(check_activation_norm_hook,
               collect_with(lambda acc, x: add(acc, flat_sq(x) / x.reshape(-1, x.shape[-1]).shape[0]),
                            lambda acc, t, b: acc / b),
               "per-batch means", "6, 9, 3 tokens")


def test_collector_reducing_per_token():
    fails_with(check_activation_norm_hook,
               collect_with(lambda acc, x: x.reshape(-1, x.shape[-1]).pow(2).sum(dim=1)),
               "one value per token")


def test_collector_not_flattening_the_batch():
    fails_with(check_activation_norm_hook, collect_with(lambda acc, x: add(acc, x.pow(2).sum(dim=0))),
               "flatten batch AND sequence")


def test_collector_keeping_only_the_last_batch():
    fails_with(check_activation_norm_hook, collect_with(lambda acc, x: flat_sq(x)), "only the last batch", "+=")


def test_collector_hooking_the_output():
    fails_with(check_activation_norm_hook, collect_with(lambda acc, x: add(acc, flat_sq(x)), use_output=True),
               "OUTPUT", "args[0]")


def test_collector_hooking_the_output_of_a_square_layer():
    """On a square layer the shapes agree: the diagnosis comes from the values."""
    def collect(linear, model, batches):
        if linear.in_features != linear.out_features:
            return collect_reference(linear, model, batches)
        return collect_with(lambda acc, x: add(acc, flat_sq(x)), use_output=True)(linear, model, batches)

    fails_with(check_activation_norm_hook, collect, "o_proj", "OUTPUT", "args[0]")


def test_collector_leaving_its_hook_registered():
    fails_with(check_activation_norm_hook, collect_with(lambda acc, x: add(acc, flat_sq(x)), remove=False),
               "handle.remove()")


# ---------------------------------------------------------------------------------------------
# wanda_scores(weight, act_sq_norm)
# ---------------------------------------------------------------------------------------------


def test_reference_scores_pass():
    check_wanda_scores(wanda_scores)


def test_scores_not_implemented():
    fails_with(check_wanda_scores, not_implemented, "not implemented yet")


@pytest.mark.parametrize("wrong,fragment", [
    (lambda w, a: w.abs() * a, "square root"),
    (lambda w, a: w * a.sqrt(), "sign of W"),
    (lambda w, a: w.pow(2) * a, "SQUARE of Wanda's score"),
    (lambda w, a: w.pow(2) * a.sqrt(), "W^2 where the score has |W|"),
    (lambda w, a: w.abs() * a.sqrt().unsqueeze(1), "wrong dimension"),
])
def test_wrong_scores_are_diagnosed(wrong, fragment):
    fails_with(check_wanda_scores, wrong, fragment)


def test_scores_broadcast_over_rows_crashing_on_a_non_square_weight_get_a_hint():
    def wrong(w, a):
        if w.shape[0] == w.shape[1]:
            return wanda_scores(w, a)
        return w.abs() * a.sqrt().reshape(-1, 1)

    fails_with(check_wanda_scores, wrong, "raised RuntimeError", "one entry per INPUT feature")


def test_scores_modifying_the_weight_in_place():
    fails_with(check_wanda_scores, lambda w, a: w.abs_() * a.sqrt(), "in place")


# ---------------------------------------------------------------------------------------------
# wanda_mask(scores, sparsity)
# ---------------------------------------------------------------------------------------------


def test_reference_mask_passes():
    check_wanda_mask(per_row_mask)


def test_kthvalue_solution_passes():
    def kth(scores, sparsity):
        k = int(scores.shape[1] * sparsity + 1e-9)
        if k == 0:
            return torch.ones_like(scores, dtype=torch.bool)
        threshold = torch.kthvalue(scores, k, dim=1, keepdim=True).values
        return scores > threshold

    check_wanda_mask(kth)


def test_mask_not_implemented():
    fails_with(check_wanda_mask, not_implemented, "not implemented yet")


def test_global_threshold_mask():
    message = fails_with(check_wanda_mask, per_matrix_mask, "one threshold for the whole matrix",
                         "Wanda ranks within each output row", "Your mask keeps")
    assert "% of row" in message


def test_per_column_mask():
    fails_with(check_wanda_mask, lambda s, p: per_row_mask(s.t().contiguous(), p).t(), "within each COLUMN")


def test_inverted_mask():
    fails_with(check_wanda_mask, lambda s, p: ~per_row_mask(s, p), "inverted", "STAY")


def test_mask_removing_the_highest_scores():
    fails_with(check_wanda_mask, lambda s, p: per_row_mask(-s, p), "HIGHEST")


def _remove_lowest(scores, r):
    mask = torch.ones_like(scores, dtype=torch.bool)
    if r:
        mask.scatter_(1, torch.topk(scores, r, dim=1, largest=False).indices, False)
    return mask


def test_kthvalue_off_by_one():
    def strict(scores, sparsity):  # scores < k-th smallest: removes only k - 1
        k = num_to_prune(scores.shape[1], sparsity)
        return scores >= torch.kthvalue(scores, k, dim=1, keepdim=True).values

    fails_with(check_wanda_mask, strict, "off by one", "kthvalue")
    fails_with(check_wanda_mask, lambda s, p: _remove_lowest(s, num_to_prune(s.shape[1], p) + 1), "off by one")


def test_keeping_instead_of_removing_the_fraction():
    fails_with(check_wanda_mask, lambda s, p: _remove_lowest(s, s.shape[1] - num_to_prune(s.shape[1], p)),
               "fraction REMOVED")


def test_sparsity_off_target():
    fails_with(check_wanda_mask, lambda s, p: _remove_lowest(s, max(num_to_prune(s.shape[1], p) - 2, 0)),
               "sparsity off target")


def test_float_mask_with_wrong_values_and_uneven_rows():
    fails_with(check_wanda_mask, lambda s, p: s * 2, "only True/False")

    def uneven(scores, sparsity):
        mask = per_row_mask(scores, sparsity)
        mask[0] = True
        return mask

    fails_with(check_wanda_mask, uneven, "row 0 keeps", "EVERY output row")


# ---------------------------------------------------------------------------------------------
# relative_output_error(x, weight, pruned_weight)
# ---------------------------------------------------------------------------------------------


def test_reference_error_passes():
    check_relative_output_error(relative_output_error)
    check_relative_output_error(lambda x, w, p: float(torch.linalg.norm(x @ w.T - x @ p.T) / torch.linalg.norm(x @ w.T)))


def test_error_as_a_tensor_is_told_to_return_a_python_float():
    fails_with(check_relative_output_error,
               lambda x, w, p: torch.linalg.norm(x @ w.T - x @ p.T) / torch.linalg.norm(x @ w.T), "Python float")


def test_error_not_implemented():
    fails_with(check_relative_output_error, not_implemented, "not implemented yet")


@pytest.mark.parametrize("wrong,fragment", [
    (lambda x, w, p: float((x @ w.T - x @ p.T).norm()), "absolute error"),
    (lambda x, w, p: float((x @ w.T - x @ p.T).norm() ** 2 / (x @ w.T).norm() ** 2), "SQUARED norms"),
    (lambda x, w, p: float((w - p).norm() / w.norm()), "WEIGHTS"),
    (lambda x, w, p: float(((x @ w.T - x @ p.T).norm(dim=1) / (x @ w.T).norm(dim=1)).mean()), "per-token"),
    (lambda x, w, p: float((x @ w.T - x @ p.T).norm() / (x @ p.T).norm()), "PRUNED output"),
    (lambda x, w, p: 0.5, "expected"),
])
def test_wrong_errors_are_diagnosed(wrong, fragment):
    fails_with(check_relative_output_error, wrong, fragment)


# ---------------------------------------------------------------------------------------------
# nm_mask(scores, n, m)
# ---------------------------------------------------------------------------------------------


def test_reference_nm_mask_passes():
    check_nm_mask(nm_mask)


def test_nm_not_implemented():
    fails_with(check_nm_mask, not_implemented, "not implemented yet")


def _unchecked_nm(scores, n, m):
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, torch.topk(groups, n, dim=2).indices, True)
    return keep.reshape(rows, cols)


def test_nm_groups_along_the_output_dimension():
    fails_with(check_nm_mask, lambda s, n, m: _unchecked_nm(s.t().contiguous(), n, m).t(), "OUTPUT dimension")


def test_nm_keeping_the_lowest():
    fails_with(check_nm_mask, lambda s, n, m: _unchecked_nm(-s, n, m), "LOWEST")


def test_nm_inverted():
    fails_with(check_nm_mask, lambda s, n, m: ~_unchecked_nm(s, n, m), "inverted")


def test_nm_pruning_n_instead_of_keeping_n():
    fails_with(check_nm_mask, lambda s, n, m: _unchecked_nm(s, m - n, m), "PRUNE")


def test_nm_swapped_crashing_gets_a_hint():
    def swapped(scores, n, m):  # groups of N, keep M: topk fails
        rows, cols = scores.shape
        groups = scores.reshape(rows, cols // n, n)
        idx = torch.topk(groups, m, dim=2).indices
        return torch.zeros_like(groups, dtype=torch.bool).scatter_(2, idx, True).reshape(rows, cols)

    fails_with(check_nm_mask, swapped, "swap N and M")


def test_nm_swapped_into_the_wrong_group_size():
    # "2:4" read as groups of 2 keeping 1 (the same 50%, the wrong groups)
    fails_with(check_nm_mask, lambda s, n, m: _unchecked_nm(s, 1, m // n) if m % n == 0 else _unchecked_nm(s, n, m),
               "swap N and M")


def test_nm_strided_groups():
    def strided(scores, n, m):
        rows, cols = scores.shape
        groups = scores.reshape(rows, m, cols // m).transpose(1, 2)
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, torch.topk(groups, n, dim=2).indices, True)
        return keep.transpose(1, 2).reshape(rows, cols)

    fails_with(check_nm_mask, strided, "CONSECUTIVE")


def test_nm_width_not_divisible():
    fails_with(check_nm_mask, _unchecked_nm, "raised RuntimeError", "raise ValueError")

    def padded(scores, n, m):  # returns something for any width instead of raising
        if scores.shape[1] % m:
            return torch.ones_like(scores, dtype=torch.bool)
        return nm_mask(scores, n, m)

    fails_with(check_nm_mask, padded, "instead of raising ValueError")


def test_nm_wrong_count_in_a_group():
    def one_group_off(scores, n, m):
        mask = nm_mask(scores, n, m)
        mask[0, :m] = True
        return mask

    fails_with(check_nm_mask, one_group_off, "row 0, group 0", "keeps exactly")


def test_checks_do_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_activation_norm_hook(collect_reference)
    assert torch.equal(torch.rand(3), expected)
    assert math.isfinite(relative_output_error(torch.randn(4, 3), torch.randn(2, 3), torch.zeros(2, 3)))
