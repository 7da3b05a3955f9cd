"""The graded checks of notebook 02 (SparseGPT): the reference passes, each classic mistake gets its diagnosis,
and the reference formulas agree with the package's ``sparsegpt_prune`` and ``InputHessian``."""

from __future__ import annotations

import math

import torch

from pruning_course.checks.sparsegpt import (
    check_layer_hessian,
    check_obs_remove_weight,
    check_obs_saliency,
    check_relative_reconstruction_error,
)
from pruning_course.calibration import layer_hessian
from pruning_course.evaluate import relative_output_error
from pruning_course.unstructured import sparsegpt_prune
from pruning_course.unstructured.sparsegpt import inverse_hessian_factor, obs_remove_weight, obs_saliency


def relative_reconstruction_error(weight, new_weight, x):
    """Notebook 02's signature for the package's relative_output_error (the check's reference)."""
    return relative_output_error(x, weight, new_weight)

from check_support import fails_with, not_implemented


def flat(x):
    return x.reshape(-1, x.shape[-1])


# ---------------------------------------------------------------------------------------------
# the references agree with the package
# ---------------------------------------------------------------------------------------------


def test_reference_hessian_is_two_over_n_xtx():
    x = torch.randn(3, 10, 6, generator=torch.Generator().manual_seed(0))
    xf = flat(x).double()
    assert torch.allclose(layer_hessian(x).double(), 2 / 30 * xf.t() @ xf, rtol=1e-5, atol=1e-6)


def _problem(cols=12, tokens=200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=gen) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=gen))
    return x, layer_hessian(x)


def test_obs_update_is_sparsegpt_first_column_update():
    """Removing column 0 of a one-row weight: SparseGPT's update (Cholesky row of H^-1) is Eq. 3's."""
    x, hessian = _problem()
    w = torch.randn(12, generator=torch.Generator().manual_seed(1))
    w[0] = 1e-4  # the lowest saliency by far: SparseGPT removes exactly this weight at 1/12 sparsity
    new_weight, mask = sparsegpt_prune(w[None], hessian, 1 / 12, percdamp=0.0)
    assert mask[0].tolist() == [False] + [True] * 11
    h_inv = torch.linalg.inv(hessian.double())
    assert torch.allclose(new_weight[0].double(), obs_remove_weight(w.double(), h_inv, 0), atol=1e-6)


def test_obs_update_is_optimal_and_error_is_half_saliency():
    x, hessian = _problem()
    h_inv = torch.linalg.inv(hessian.double())
    w = torch.randn(12, generator=torch.Generator().manual_seed(2)).double()
    xd = x.double()
    for q in (0, 5, 11):
        new = obs_remove_weight(w, h_inv, q)
        assert new[q] == 0.0
        mse = float(((xd @ (w - new)) ** 2).mean())
        assert math.isclose(mse, float(obs_saliency(w, h_inv)[q]) / 2, rel_tol=1e-6)
        # least squares with w_q = 0 gives the same error: the OBS update is optimal
        others = [j for j in range(12) if j != q]
        refit = torch.linalg.lstsq(xd[:, others], (xd @ w)[:, None]).solution[:, 0]
        best = float(((xd @ w - xd[:, others] @ refit) ** 2).mean())
        assert math.isclose(mse, best, rel_tol=1e-6)


def test_cholesky_diagonal_gives_restricted_inverse():
    """SparseGPT's mask score w^2 / [chol(H^-1)]_ii^2 is the OBS saliency over the columns i.. not yet processed."""
    _, hessian = _problem()
    factor, _ = inverse_hessian_factor(hessian, percdamp=0.0)
    for i in (0, 4, 11):
        restricted = torch.linalg.inv(hessian.double()[i:, i:])
        assert math.isclose(float(factor[i, i]) ** 2, float(restricted[0, 0]), rel_tol=1e-4)


def test_reference_relative_error():
    x = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0))
    w = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    assert relative_reconstruction_error(w, w, x) == 0.0
    assert math.isclose(relative_reconstruction_error(w, torch.zeros_like(w), x), 1.0)


# ---------------------------------------------------------------------------------------------
# layer_hessian(x)
# ---------------------------------------------------------------------------------------------


def good_hessian(x):
    x = flat(x)
    return 2.0 / x.shape[0] * x.t() @ x


def test_hessian_reference_passes(capsys):
    check_layer_hessian(layer_hessian)
    check_layer_hessian(good_hessian, seed=1)
    check_layer_hessian(lambda x: good_hessian(x.double()))  # float64 is fine
    assert "\u2713" in capsys.readouterr().out


def test_hessian_mean_of_per_sequence_hessians_passes():
    check_layer_hessian(lambda x: torch.stack([good_hessian(s) for s in x]).mean(0) if x.dim() == 3 else good_hessian(x))


def test_hessian_mistakes():
    fails_with(check_layer_hessian, not_implemented, "not implemented yet")
    fails_with(check_layer_hessian, lambda x: flat(x).t() @ flat(x), "factor 2/n is missing")
    fails_with(check_layer_hessian, lambda x: flat(x).t() @ flat(x) / flat(x).shape[0], "factor 2")
    fails_with(check_layer_hessian, lambda x: 2 * flat(x).t() @ flat(x), "divide by the number of tokens")
    fails_with(check_layer_hessian, lambda x: 2 / flat(x).shape[0] * flat(x) @ flat(x).t(), "tokens x tokens", "X^T X")
    fails_with(check_layer_hessian, lambda x: 2 / (flat(x).shape[0] - 1) * flat(x).t() @ flat(x), "n - 1")
    centered = lambda x: good_hessian(flat(x) - flat(x).mean(0))  # noqa: E731
    fails_with(check_layer_hessian, centered, "subtracted the mean")
    fails_with(check_layer_hessian, lambda x: torch.diag(good_hessian(x).diagonal()), "only the diagonal")


def test_hessian_batch_mistakes():
    def per_sequence(x):
        if x.dim() == 2:
            return good_hessian(x)
        return 2.0 / x.shape[1] * x.transpose(1, 2) @ x

    fails_with(check_layer_hessian, per_sequence, "one 5x5 matrix per sequence", "x.reshape(-1, x.shape[-1])")

    def by_batch(x):
        return 2.0 / x.shape[0] * flat(x).t() @ flat(x)

    fails_with(check_layer_hessian, by_batch, "divided by the batch size 3", "batch x seq = 33")

    def by_seq(x):
        return 2.0 / x.shape[-2] * flat(x).t() @ flat(x) if x.dim() == 3 else good_hessian(x)

    fails_with(check_layer_hessian, by_seq, "divided by the sequence length 11")

    def transposed_3d(x):
        if x.dim() == 2:
            return good_hessian(x)
        return 2.0 / x.shape[0] * x.permute(2, 1, 0) @ x  # what x.T does to a 3-D x: the matmul crashes

    fails_with(check_layer_hessian, transposed_3d, "raised", "flatten batch and sequence")


def test_hessian_in_place():
    def in_place(x):
        x.mul_(2.0 ** 0.5)
        return good_hessian(x) / 2

    fails_with(check_layer_hessian, in_place, "modified x in place")


# ---------------------------------------------------------------------------------------------
# obs_remove_weight(w_row, h_inv, q)
# ---------------------------------------------------------------------------------------------


def formula_only(w_row, h_inv, q):
    return w_row - (w_row[q] / h_inv[q, q]) * h_inv[:, q]


def test_obs_update_reference_passes(capsys):
    check_obs_remove_weight(obs_remove_weight)
    check_obs_remove_weight(formula_only, seed=1)  # w_q = 0 up to rounding is fine
    assert "\u2713" in capsys.readouterr().out


def test_obs_update_mistakes():
    fails_with(check_obs_remove_weight, not_implemented, "not implemented yet")
    fails_with(check_obs_remove_weight, lambda w, h, q: w + (w[q] / h[q, q]) * h[:, q], "sign error")
    fails_with(check_obs_remove_weight, lambda w, h, q: w - (w[q] / h[q, q] ** 2) * h[:, q], "squared")

    def with_h(w, h_inv, q):
        h = torch.linalg.inv(h_inv)
        return w - (w[q] / h[q, q]) * h[:, q]

    fails_with(check_obs_remove_weight, with_h, "used H instead of H^-1")

    def keeps_q(w, h_inv, q):
        new = formula_only(w, h_inv, q)
        new[q] = w[q]
        return new

    fails_with(check_obs_remove_weight, keeps_q, "left w_q in place")

    def zero_only(w, h_inv, q):
        new = w.clone()
        new[q] = 0
        return new

    fails_with(check_obs_remove_weight, zero_only, "only zeroed w_q")
    fails_with(check_obs_remove_weight, lambda w, h, q: w - (w[q] * h[q, q]) * h[:, q], "multiply by [H^-1]_qq")
    fails_with(check_obs_remove_weight, lambda w, h, q: w - w[q] * h[:, q], "did not divide by [H^-1]_qq")


def test_obs_update_in_place_and_shape():
    def in_place(w, h_inv, q):
        w -= (w[q] / h_inv[q, q]) * h_inv[:, q]
        return w

    fails_with(check_obs_remove_weight, in_place, "modified w_row in place", "clone")
    fails_with(check_obs_remove_weight, lambda w, h, q: formula_only(w, h, q)[None], "should have shape (6,)")


# ---------------------------------------------------------------------------------------------
# obs_saliency(w, h_inv)
# ---------------------------------------------------------------------------------------------


def test_obs_saliency_reference_passes(capsys):
    check_obs_saliency(obs_saliency)
    check_obs_saliency(lambda w, h: w**2 / torch.diag(h), seed=3)
    assert "\u2713" in capsys.readouterr().out


def test_obs_saliency_mistakes():
    fails_with(check_obs_saliency, not_implemented, "not implemented yet")
    fails_with(check_obs_saliency, lambda w, h: w**2 / torch.diag(h) ** 2, "squared", "CHOLESKY")
    fails_with(check_obs_saliency, lambda w, h: w**2 / torch.diag(torch.linalg.inv(h)), "divide by H_qq")
    fails_with(check_obs_saliency, lambda w, h: w**2 * torch.diag(torch.linalg.inv(h)), "Optimal Brain Damage")
    fails_with(check_obs_saliency, lambda w, h: w**2 * torch.diag(torch.linalg.inv(h)) / 2, "Optimal Brain Damage")
    fails_with(check_obs_saliency, lambda w, h: w**2 / (2 * torch.diag(h)), "half of SparseGPT's eps_q")
    fails_with(check_obs_saliency, lambda w, h: w.abs() / torch.diag(h), "square the weight")
    fails_with(check_obs_saliency, lambda w, h: w / torch.diag(h), "square the weight")
    fails_with(check_obs_saliency, lambda w, h: w**2 * torch.diag(h), "multiply by [H^-1]_qq")
    fails_with(check_obs_saliency, lambda w, h: w**2, "squared magnitude")
    fails_with(check_obs_saliency, lambda w, h: w.abs(), "magnitude |w| alone")
    fails_with(check_obs_saliency, lambda w, h: w.abs() / torch.diag(h).sqrt(), "square root of eps_q")
    fails_with(check_obs_saliency, lambda w, h: w**2 / torch.diag(h) + 1, "differ from")


def test_obs_saliency_row_only():
    def row_only(w, h_inv):
        return torch.stack([w[j] ** 2 / h_inv[j, j] for j in range(len(w))])

    fails_with(check_obs_saliency, row_only, "shape (5, 12)", "assume a 1-D row")

    def crashes_on_matrix(w, h_inv):
        if w.dim() != 1:
            raise ValueError("expected a row")
        return w**2 / torch.diag(h_inv)

    fails_with(check_obs_saliency, crashes_on_matrix, "raised ValueError", "broadcasting")


# ---------------------------------------------------------------------------------------------
# relative_reconstruction_error(weight, new_weight, x)
# ---------------------------------------------------------------------------------------------


def test_relative_error_reference_passes(capsys):
    check_relative_reconstruction_error(relative_reconstruction_error)

    def tensor_version(weight, new_weight, x):
        return torch.linalg.norm(x @ weight.T - x @ new_weight.T) / torch.linalg.norm(x @ weight.T)

    check_relative_reconstruction_error(tensor_version, seed=2)
    assert "\u2713" in capsys.readouterr().out


def test_relative_error_mistakes():
    f = check_relative_reconstruction_error
    fails_with(f, not_implemented, "not implemented yet")
    fails_with(f, lambda w, n, x: (x @ w.T - x @ n.T).norm(), "absolute error")
    fails_with(f, lambda w, n, x: ((x @ w.T - x @ n.T).norm() / (x @ w.T).norm()) ** 2, "SQUARED norms")
    fails_with(f, lambda w, n, x: (w - n).norm() / w.norm(), "relative error of the WEIGHTS")
    fails_with(f, lambda w, n, x: (x @ w.T - x @ n.T).norm() / (x @ n.T).norm(), "PRUNED output")
    per_token = lambda w, n, x: (flat(x @ w.T - x @ n.T).norm(dim=1) / flat(x @ w.T).norm(dim=1)).mean()  # noqa: E731
    fails_with(f, per_token, "per-token")
    fails_with(f, lambda w, n, x: (x @ w - x @ n).norm() / (x @ w).norm(), "x @ W; a linear layer computes x @ W^T")

    def no_transpose_if_square(w, n, x):
        if w.shape[0] == w.shape[1]:
            return float((x @ w - x @ n).norm() / (x @ w).norm())
        return relative_reconstruction_error(w, n, x)

    fails_with(f, no_transpose_if_square, "x @ W^T")
    fails_with(f, lambda w, n, x: (x @ w.T - x @ n.T), "one number")
    fails_with(f, lambda w, n, x: "0.5", "should return a float")


def test_relative_error_3d():
    def two_d_only(w, n, x):
        if x.dim() != 2:
            raise RuntimeError("expected 2-D input")
        return relative_reconstruction_error(w, n, x)

    fails_with(check_relative_reconstruction_error, two_d_only, "x can be 3-D")
