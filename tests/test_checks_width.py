"""The graded checks of notebook 06 (MLP width): the reference passes, each classic mistake gets its diagnosis."""

from __future__ import annotations

import pytest
import torch

from pruning_course.checks.width import check_slice_mlp, check_wanda_sp_scores, reference_wanda_sp_scores

from check_support import fails_with, not_implemented


# ---------------------------------------------------------------------------------------------
# wanda_sp_scores(down_weight, activations)
# ---------------------------------------------------------------------------------------------


def wanda_sp_scores(down_weight, activations):
    a = activations.reshape(-1, activations.shape[-1])
    return down_weight.abs().mean(dim=0) * a.pow(2).mean(dim=0).sqrt()


def flat(a):
    return a.reshape(-1, a.shape[-1])


def test_reference_scores_pass(capsys):
    check_wanda_sp_scores(wanda_sp_scores)
    check_wanda_sp_scores(wanda_sp_scores, seed=1)
    check_wanda_sp_scores(reference_wanda_sp_scores)
    assert "\u2713" in capsys.readouterr().out


def test_scores_not_implemented():
    fails_with(check_wanda_sp_scores, not_implemented, "not implemented yet")


@pytest.mark.parametrize("wrong,fragment", [
    (lambda w, a: w.abs().mean(dim=1) * flat(a).pow(2).mean(dim=0).sqrt(), "COLUMN j"),
    (lambda w, a: w.abs().mean(dim=0) * flat(a).norm(dim=0), "L2 norm of a_j"),
    (lambda w, a: w.mean(dim=0) * flat(a).pow(2).mean(dim=0).sqrt(), "can be negative"),
    (lambda w, a: w.mean(dim=0).abs() * flat(a).pow(2).mean(dim=0).sqrt(), "abs after averaging"),
    (lambda w, a: w.abs().sum(dim=0) * flat(a).pow(2).mean(dim=0).sqrt(), "summed |W[i, j]|"),
    (lambda w, a: w.abs().mean(dim=0) * flat(a).pow(2).mean(dim=0), "take its square root"),
    (lambda w, a: w.abs().mean(dim=0) * flat(a).abs().mean(dim=0), "mean of |a_j|"),
    (lambda w, a: w.norm(dim=0) * flat(a).pow(2).mean(dim=0).sqrt(), "L2 norm of W's column"),
    (lambda w, a: w.abs().mean(dim=0).clone(), "ignore the activations"),
    (lambda w, a: w.abs().mean(dim=0) * a.pow(2).mean(dim=0).sqrt(), "flatten the leading"),
    (lambda w, a: w.abs_().mean(dim=0) * flat(a).pow(2).mean(dim=0).sqrt(), "in place"),
])
def test_wrong_scores_are_diagnosed(wrong, fragment):
    fails_with(check_wanda_sp_scores, wrong, fragment)


def test_rows_instead_of_columns_on_a_square_weight():
    def rows_when_square(w, a):
        if w.shape[0] != w.shape[1]:
            return wanda_sp_scores(w, a)
        return w.abs().mean(dim=1) * flat(a).pow(2).mean(dim=0).sqrt()

    fails_with(check_wanda_sp_scores, rows_when_square, "COLUMNS (dim 1)")


def test_rows_instead_of_columns_crashing_gets_a_hint():
    def crash(w, a):
        return w.abs().mean(dim=1) * flat(a).pow(2).mean(dim=0).sqrt() if w.shape[0] < w.shape[1] else wanda_sp_scores(w, a)

    fails_with(check_wanda_sp_scores, crash, "raised RuntimeError", "COLUMN j")


def test_scores_generic_message():
    fails_with(check_wanda_sp_scores, lambda w, a: wanda_sp_scores(w, a) + 0.1, "for neuron", "expected scores start")


# ---------------------------------------------------------------------------------------------
# slice_mlp(gate_weight, up_weight, down_weight, keep)
# ---------------------------------------------------------------------------------------------


def slice_mlp(gate, up, down, keep):
    keep = keep.sort().values
    return gate[keep], up[keep], down[:, keep]


def test_reference_slicing_passes(capsys):
    check_slice_mlp(slice_mlp)
    check_slice_mlp(slice_mlp, seed=1)
    assert "\u2713" in capsys.readouterr().out


def test_index_select_solution_passes():
    def by_index_select(gate, up, down, keep):
        keep = torch.sort(keep).values
        return gate.index_select(0, keep), up.index_select(0, keep), down.index_select(1, keep)

    check_slice_mlp(by_index_select)


def test_slicing_not_implemented():
    fails_with(check_slice_mlp, not_implemented, "not implemented yet")


def test_slicing_down_rows():
    # first case: hidden 12 > 5 kept neurons, rows exist: diagnosed by shape
    fails_with(check_slice_mlp, lambda g, u, d, k: (g[k.sort().values], u[k.sort().values], d[k.sort().values]),
               "ROWS of down_proj")


def test_slicing_down_rows_crashing_gets_a_hint():
    def crash(g, u, d, k):
        k = k.sort().values
        if d.shape[0] >= d.shape[1]:
            return slice_mlp(g, u, d, k)
        return g[k], u[k], d[k]

    fails_with(check_slice_mlp, crash, "raised IndexError", "COLUMN")


def test_slicing_forgetting_gate():
    fails_with(check_slice_mlp, lambda g, u, d, k: (g, *slice_mlp(g, u, d, k)[1:]), "gate still has all")


def test_slicing_forgetting_up():
    fails_with(check_slice_mlp, lambda g, u, d, k: (slice_mlp(g, u, d, k)[0], u, slice_mlp(g, u, d, k)[2]), "up still has all")


def test_slicing_with_unsorted_indices():
    fails_with(check_slice_mlp, lambda g, u, d, k: (g[k], u[k], d[:, k]), "original order", "keep.sort()")


def test_slicing_with_inconsistent_orders():
    fails_with(check_slice_mlp, lambda g, u, d, k: (g[k.sort().values], u[k.sort().values], d[:, k]),
               "same neurons, in the same order")


def test_slicing_the_neurons_to_remove():
    def removed(g, u, d, k):
        drop = torch.tensor([j for j in range(g.shape[0]) if j not in set(k.tolist())])
        return g[drop], u[drop], d[:, drop]

    fails_with(check_slice_mlp, removed, "neurons to REMOVE")


def test_slicing_sorting_keep_in_place():
    fails_with(check_slice_mlp, lambda g, u, d, k: slice_mlp(g, u, d, k.copy_(k.sort().values)), "in place", "keep.sort()")


def test_checks_do_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_slice_mlp(slice_mlp)
    check_wanda_sp_scores(wanda_sp_scores)
    assert torch.equal(torch.rand(3), expected)
