"""Notebook 02 (SparseGPT): layer_hessian, obs_remove_weight, obs_saliency, relative_reconstruction_error."""

import torch

from pruning_course.checks.sparsegpt import (
    check_layer_hessian,
    check_obs_remove_weight,
    check_obs_saliency,
    check_relative_reconstruction_error,
)

from . import CRASH, Wrong, crashes


def layer_hessian(x):
    x = x.reshape(-1, x.shape[-1]).float()
    return (2.0 / x.shape[0]) * x.t() @ x


def obs_remove_weight(w_row, h_inv, q):
    new = w_row - (w_row[q] / h_inv[q, q]) * h_inv[:, q]
    new[q] = 0.0
    return new


def obs_saliency(w, h_inv):
    return w.pow(2) / torch.diagonal(h_inv)


def relative_reconstruction_error(weight, new_weight, x):
    dense = x @ weight.T
    return float(torch.linalg.norm(dense - x @ new_weight.T) / torch.linalg.norm(dense))


REFERENCES = {check_layer_hessian: layer_hessian, check_obs_remove_weight: obs_remove_weight,
              check_obs_saliency: obs_saliency, check_relative_reconstruction_error: relative_reconstruction_error}


def _flat(x):
    return x.reshape(-1, x.shape[-1]).double()


def _damped(x):
    h = layer_hessian(x)
    return h + 0.01 * h.diagonal().mean() * torch.eye(h.shape[0])


def _per_sequence(x):
    if x.dim() == 2:
        return layer_hessian(x)
    return torch.stack([2.0 / x.shape[1] * s.t() @ s for s in x])


def _x_xt(x):
    x = _flat(x)
    return 2.0 / x.shape[0] * x @ x.t()


def _batch_divided(x):
    xs = _flat(x)
    return 2.0 / x.shape[0] * xs.t() @ xs


def _covariance(x):
    xs = _flat(x)
    xs = xs - xs.mean(0)
    return 2.0 / xs.shape[0] * xs.t() @ xs


def _obs(update):
    def learner(w, h_inv, q):
        new = update(w.clone(), h_inv, q)
        return new
    return learner


def _no_zero(w, h, q):
    return w - (w[q] / h[q, q]) * h[:, q] + 0 * w  # the same update, w_q set to exactly 0 only by arithmetic


def _in_place(w, h, q):
    w -= (w[q] / h[q, q]) * h[:, q]
    w[q] = 0.0
    return w


def _row_only(w, h):
    return w.pow(2) / torch.diagonal(h) if w.dim() == 1 else w[0].pow(2) / torch.diagonal(h)


def _error(body):
    def learner(weight, new_weight, x):
        xs = x.reshape(-1, x.shape[-1]).double()
        return float(body(xs, weight.double(), new_weight.double()))
    return learner


def _no_flatten(weight, new_weight, x):
    if x.dim() == 3:
        x = x[0]
    return relative_reconstruction_error(weight, new_weight, x)


WRONG = [
    Wrong(check_layer_hessian, "X^T X without 2/n", lambda x: _flat(x).t() @ _flat(x), r"factor 2/n is missing"),
    Wrong(check_layer_hessian, "mean, factor 2 missing", lambda x: _flat(x).t() @ _flat(x) / _flat(x).shape[0],
          r"has a factor 2"),
    Wrong(check_layer_hessian, "n - 1", lambda x: 2 * _flat(x).t() @ _flat(x) / (_flat(x).shape[0] - 1),
          r"divided by n - 1"),
    Wrong(check_layer_hessian, "damping inside H", _damped, r"added damping"),
    Wrong(check_layer_hessian, "one H per sequence", _per_sequence, r"one .* matrix per sequence"),
    Wrong(check_layer_hessian, "X X^T (tokens x tokens)", _x_xt, r"X X\^T"),
    Wrong(check_layer_hessian, "divided by the batch size", _batch_divided, r"divided by the batch size"),
    Wrong(check_layer_hessian, "covariance (mean subtracted)", _covariance, r"subtracted the mean"),
    Wrong(check_layer_hessian, "diagonal only", lambda x: torch.diag(layer_hessian(x).diagonal()), r"only the diagonal"),
    Wrong(check_layer_hessian, "integer result", lambda x: layer_hessian(x).long(), r"floating-point"),
    Wrong(check_layer_hessian, "crashes inside torch", crashes(), CRASH),

    Wrong(check_obs_remove_weight, "no division by [H^-1]_qq", lambda w, h, q: w - w[q] * h[:, q],
          r"did not divide by \[H\^-1\]_qq"),
    Wrong(check_obs_remove_weight, "sign error", lambda w, h, q: w + (w[q] / h[q, q]) * h[:, q], r"sign error"),
    Wrong(check_obs_remove_weight, "divides by the square", lambda w, h, q: w - (w[q] / h[q, q] ** 2) * h[:, q],
          r"squared"),
    Wrong(check_obs_remove_weight, "inverts h_inv again",
          lambda w, h, q: w - (w[q] / torch.linalg.inv(h)[q, q]) * torch.linalg.inv(h)[:, q], r"used H instead of H\^-1"),
    Wrong(check_obs_remove_weight, "multiplies by [H^-1]_qq", lambda w, h, q: w - (w[q] * h[q, q]) * h[:, q],
          r"multiply by \[H\^-1\]_qq"),
    Wrong(check_obs_remove_weight, "only zeroes w_q", lambda w, h, q: w.clone().index_fill_(0, torch.tensor([q]), 0.0),
          r"only zeroed w_q"),
    Wrong(check_obs_remove_weight, "w_q left in place",
          lambda w, h, q: torch.cat([obs_remove_weight(w, h, q)[:q], w[q:q + 1], obs_remove_weight(w, h, q)[q + 1:]]),
          r"left w_q in place"),
    Wrong(check_obs_remove_weight, "in-place update of the row", _in_place, r"modified w_row in place"),
    Wrong(check_obs_remove_weight, "returns a list", lambda w, h, q: obs_remove_weight(w, h, q).tolist(),
          r"should be a torch.Tensor"),
    Wrong(check_obs_remove_weight, "crashes inside torch", crashes(), CRASH),

    Wrong(check_obs_saliency, "w^2 / (2 [H^-1]_qq)", lambda w, h: w**2 / (2 * h.diagonal()), r"2 \[H\^-1\]_qq"),
    Wrong(check_obs_saliency, "divides by the square", lambda w, h: w**2 / h.diagonal() ** 2, r"squared"),
    Wrong(check_obs_saliency, "divides by H_qq", lambda w, h: w**2 / torch.linalg.inv(h).diagonal(), r"divide by H_qq"),
    Wrong(check_obs_saliency, "Optimal Brain Damage", lambda w, h: w**2 * torch.linalg.inv(h).diagonal() / 2,
          r"Optimal Brain Damage"),
    Wrong(check_obs_saliency, "|w| not squared", lambda w, h: w.abs() / h.diagonal(), r"square the weight"),
    Wrong(check_obs_saliency, "multiplies", lambda w, h: w**2 * h.diagonal(), r"multiply by"),
    Wrong(check_obs_saliency, "magnitude only", lambda w, h: w**2 + 0 * h.diagonal(), r"squared magnitude w\^2 alone"),
    Wrong(check_obs_saliency, "square root of eps", lambda w, h: w.abs() / h.diagonal().sqrt(), r"square root of eps_q"),
    Wrong(check_obs_saliency, "assumes a 1-D row", _row_only, r"one row's saliencies"),
    Wrong(check_obs_saliency, "crashes inside torch", crashes(), CRASH),

    Wrong(check_relative_reconstruction_error, "absolute error", _error(lambda x, w, n: (x @ w.T - x @ n.T).norm()),
          r"absolute error"),
    Wrong(check_relative_reconstruction_error, "squared norms",
          _error(lambda x, w, n: (x @ w.T - x @ n.T).norm() ** 2 / (x @ w.T).norm() ** 2), r"SQUARED norms"),
    Wrong(check_relative_reconstruction_error, "error of the weights", _error(lambda x, w, n: (w - n).norm() / w.norm()),
          r"error of the WEIGHTS"),
    Wrong(check_relative_reconstruction_error, "mean of per-token errors",
          _error(lambda x, w, n: ((x @ w.T - x @ n.T).norm(dim=1) / (x @ w.T).norm(dim=1)).mean()), r"per-token"),
    Wrong(check_relative_reconstruction_error, "divides by the pruned output",
          _error(lambda x, w, n: (x @ w.T - x @ n.T).norm() / (x @ n.T).norm()), r"norm of the PRUNED output"),
    Wrong(check_relative_reconstruction_error, "x @ W (not W^T)",
          lambda w, n, x: float((x @ w - x @ n).norm() / (x @ w).norm()), r"x @ W; a linear layer"),
    Wrong(check_relative_reconstruction_error, "notebook 03's argument order",
          lambda x, w, n: float((x @ w.T - x @ n.T).norm() / (x @ w.T).norm()), r"notebook 03's order"),
    Wrong(check_relative_reconstruction_error, "first sequence only", _no_flatten, r"only the FIRST sequence"),
    Wrong(check_relative_reconstruction_error, "returns a string",
          lambda w, n, x: f"{relative_reconstruction_error(w, n, x):.3f}", r"should return a float"),
    Wrong(check_relative_reconstruction_error, "crashes inside torch", crashes(), CRASH),
]
