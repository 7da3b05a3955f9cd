"""Graded checks of notebook 02 (SparseGPT: one-shot pruning by layer-wise reconstruction, Frantar & Alistarh, 2023).

The notebook's exercises are the building blocks of SparseGPT, written for one layer:

``layer_hessian(x)``
    ``H = 2/n X^T X`` over the ``n`` calibration tokens (the package's
    :class:`pruning_course.calibration.InputHessian`).
``obs_remove_weight(w_row, h_inv, q)``
    the optimal-brain-surgeon update of one row when weight ``q`` is removed, SparseGPT Eq. 3:
    ``delta = -(w_q / [H^-1]_qq) * H^-1[:, q]``, so that ``w'_q = 0``.
``obs_saliency(w, h_inv)``
    the OBS error of removing each weight, SparseGPT Eq. 3: ``eps_q = w_q^2 / [H^-1]_qq``.
``relative_reconstruction_error(weight, new_weight, x)``
    ``||X W^T - X W'^T||_F / ||X W^T||_F``.

The reference versions of the three formulas are defined here (the package's ``sparsegpt_prune``
applies them inline, column by column, with the Cholesky factor of ``H^-1``); ``tests/
test_checks_sparsegpt.py`` ties them to ``sparsegpt_prune``. The notebook's later cells use
these references, so that a bug in an exercise cannot skew the experiments.

Each check calls the learner's function on seeded random inputs (several shapes, non-square and
odd widths), compares with the reference and, on a mismatch, recomputes the classic wrong variants
to say which mistake the learner's result matches. ``seed`` selects another set of inputs (the
notebook's hidden tests use it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..calibration import layer_hessian
from ..evaluate import relative_output_error
from ..unstructured.sparsegpt import obs_remove_weight, obs_saliency
from . import (
    graded_check,
    in_another_order,
    CheckFailed,
    call,
    close_to,
    diagnose,
    expect_tensor,
    fail,
    generator,
    describe_largest_difference,
    expect_number,
    fmt_values,
    passed,
    scale_factor,
)

__all__ = [
    "check_layer_hessian",
    "check_obs_remove_weight",
    "check_obs_saliency",
    "check_relative_reconstruction_error",
]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _unchanged(before: torch.Tensor, after: torch.Tensor, what: str, fn_name: str, where: str) -> None:
    __tracebackhide__ = True
    if not torch.equal(before, after):
        fail(f"{where}: {fn_name} modified {what} in place; work on a copy (e.g. w_row.clone()) or use "
             "out-of-place operations")


def _spd_problem(gen: torch.Generator, cols: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A layer Hessian of correlated, unevenly scaled inputs (dampened like SparseGPT's), its inverse, and the inputs."""
    __tracebackhide__ = True
    mixing = torch.randn(cols, cols, generator=gen) / math.sqrt(cols) + torch.eye(cols)
    x = (torch.randn(tokens, cols, generator=gen) * torch.logspace(-0.5, 0.5, cols)) @ mixing
    x = x.double()
    hessian = 2.0 / tokens * x.t() @ x
    hessian += 0.01 * hessian.diagonal().mean() * torch.eye(cols, dtype=torch.float64)
    return hessian.float(), torch.linalg.inv(hessian).float(), x.float()


# ---------------------------------------------------------------------------------------------
# 1. the layer Hessian
# ---------------------------------------------------------------------------------------------


@graded_check
def check_layer_hessian(fn: Callable, seed: int = 0) -> None:
    """Check ``layer_hessian(x)`` = ``2/n X^T X`` for ``x`` of shape ``(tokens, in)`` or ``(batch, seq, in)``.

    Any floating dtype is accepted (float32 or float64)."""
    __tracebackhide__ = True
    name = "layer_hessian"
    gen = generator(200 + seed)
    cases = [(50, 7), (3, 11, 5), (4, 6, 9), (2, 40, 6), (13, 13)]
    for shape in cases:
        x = torch.randn(*shape, generator=gen) * torch.logspace(-0.5, 0.5, shape[-1]) + 0.3
        if shape == (13, 13):
            x = x.double()
        cols = shape[-1]
        n = math.prod(shape[:-1])
        where = f"with x of shape {tuple(shape)} ({n} tokens, {cols} inputs{', float64' if x.dtype == torch.float64 else ''})"
        x_in = x.clone()
        try:
            result = call(fn, x_in, name=name, returns="H, an (in, in) floating-point tensor")
        except CheckFailed as error:
            if x.dim() == 3:
                raise CheckFailed(f"{error}\n{where}: x can be 3-D (batch, seq, in): flatten batch and sequence "
                                  "into one token axis first, x.reshape(-1, x.shape[-1])") from None
            raise
        _unchanged(x, x_in, "x", name, where)
        if isinstance(result, torch.Tensor) and x.dim() == 3 and tuple(result.shape) == (shape[0], cols, cols):
            fail(f"{where}: you returned one {cols}x{cols} matrix per sequence, shape {tuple(result.shape)}. "
                 "Flatten batch and sequence into one token axis first (x.reshape(-1, x.shape[-1])) and sum over "
                 "all n = batch x seq tokens")
        if isinstance(result, torch.Tensor) and result.dim() == 2 and result.shape[0] == result.shape[1] == n != cols:
            fail(f"{where}: your H is {n}x{n}, tokens x tokens: that is X X^T. With X as (tokens, in) the Hessian "
                 f"is X^T X, one row and column per INPUT feature: ({cols}, {cols})")
        expect_tensor(result, (cols, cols), f"H {where}")
        if not result.dtype.is_floating_point:
            fail(f"{where}: H should be a floating-point tensor, got {result.dtype}")
        reference = layer_hessian(x)
        if close_to(result, reference):
            continue
        xd = x.reshape(-1, cols).double()
        gram = xd.t() @ xd
        c = scale_factor(result, gram)
        if c is not None:
            diagnoses = [
                (1.0, "you returned X^T X: the factor 2/n is missing"),
                (1.0 / n, "you returned X^T X / n, the mean of x x^T: SparseGPT's H = 2/n X^T X has a factor 2 "
                          "(it is the Hessian of the squared error, whose derivative brings down the 2)"),
                (2.0, f"you returned 2 X^T X: divide by the number of tokens n = {n}"),
                (2.0 / (n - 1), "you divided by n - 1 (as for a sample covariance); divide by n"),
                (1.0 / (n - 1), "you returned X^T X / (n - 1), a sample covariance; SparseGPT's H = 2/n X^T X"),
            ]
            if x.dim() == 3:
                b, s = shape[0], shape[1]
                diagnoses += [
                    (2.0 / b, f"you divided by the batch size {b}: n is the number of TOKENS, batch x seq = {n}"),
                    (2.0 / s, f"you divided by the sequence length {s}: n is the number of TOKENS, batch x seq = {n}"),
                    (1.0 / b, f"you returned X^T X / {b} (the batch size): H = 2/n X^T X with n = batch x seq = {n}"),
                    (1.0 / s, f"you returned X^T X / {s} (the sequence length): H = 2/n X^T X with n = batch x seq = {n}"),
                ]
            diagnose(diagnoses, lambda factor: math.isclose(c, factor, rel_tol=1e-4), where)
            fail(f"{where}: your H is {c * n / 2:.4g} times the expected 2/n X^T X (n = {n} tokens): check the "
                 "scaling factor")
        extra = result.detach().double() - reference.double()
        off_diagonal = extra - torch.diag(extra.diagonal())
        if float(extra.diagonal().min()) > 0 and float(off_diagonal.abs().max()) <= 1e-4 * float(reference.abs().max()):
            fail(f"{where}: you added damping to H; layer_hessian returns 2/n X^T X alone\n{where}: your H is "
                 f"2/n X^T X plus {fmt_values(extra.diagonal())} on the diagonal. SparseGPT dampens H^-1's input, lambda I with "
                 "lambda = 1% of the mean diagonal, later, when it inverts H; the Hessian itself has no damping.")
        centered = xd - xd.mean(dim=0)
        if scale_factor(result, centered.t() @ centered) is not None:
            fail(f"{where}: you subtracted the mean of the inputs (a covariance). The Hessian of the reconstruction "
                 "error uses the raw inputs: H = 2/n X^T X")
        if n == cols and close_to(result, 2.0 / n * xd @ xd.t()):
            fail(f"{where}: you computed 2/n X X^T, tokens x tokens (it has the right shape only because this x is "
                 "square). With X as (tokens, in) the Hessian is 2/n X^T X, one row and column per INPUT feature")
        if close_to(result, torch.diag(reference.diagonal())):
            fail(f"{where}: you returned only the diagonal of H; SparseGPT needs the full matrix 2/n X^T X "
                 "(its off-diagonal entries say how correlated the inputs are)")
        fail(f"{where}: H differs from 2/n X^T X {describe_largest_difference(result, reference)}")
    passed("layer_hessian(x) = 2/n X^T X over all tokens, shape (in, in)")


# ---------------------------------------------------------------------------------------------
# 2. the OBS update of one row
# ---------------------------------------------------------------------------------------------


@graded_check
def check_obs_remove_weight(fn: Callable, seed: int = 0) -> None:
    """Check ``obs_remove_weight(w_row, h_inv, q)`` = ``w - (w_q / [H^-1]_qq) H^-1[:, q]`` with ``w'_q = 0``."""
    __tracebackhide__ = True
    name = "obs_remove_weight"
    gen = generator(300 + seed)
    for cols, qs in ((6, (0, 5)), (9, (4,)), (16, (0, 7, 15))):
        hessian, h_inv, _ = _spd_problem(gen, cols, tokens=3 * cols)
        w = torch.randn(cols, generator=gen)
        for q in qs:
            where = f"with {cols} weights and q = {q}"
            w_in, h_in = w.clone(), h_inv.clone()
            result = call(fn, w_in, h_in, q, name=name, returns="the updated row, a tensor of shape (in,)")
            _unchanged(w, w_in, "w_row", name, where)
            _unchanged(h_inv, h_in, "h_inv", name, where)
            result = expect_tensor(result, (cols,), f"the updated row {where}")
            if not result.dtype.is_floating_point:
                fail(f"{where}: the updated row should be a floating-point tensor, got {result.dtype}")
            reference = obs_remove_weight(w, h_inv, q)
            scale = float(w.abs().max())
            if close_to(result, reference, rtol=1e-4) and abs(float(result[q])) <= 1e-5 * scale:
                continue
            wd, hd, hid = w.double(), hessian.double(), h_inv.double()
            col, d = hid[:, q], hid[q, q]
            zeroed = wd.clone()
            zeroed[q] = 0.0
            kept_q = reference.double().clone()
            kept_q[q] = wd[q]
            variants = [
                (wd + (wd[q] / d) * col,
                 "sign error: w' = w + delta with delta = -(w_q / [H^-1]_qq) * H^-1[:, q], that is "
                 "w - (w_q / [H^-1]_qq) * H^-1[:, q] (with your sign w'_q becomes 2 w_q instead of 0)"),
                (wd - (wd[q] / d**2) * col,
                 "you divide by [H^-1]_qq squared; the update divides by [H^-1]_qq once: "
                 "delta = -(w_q / [H^-1]_qq) * H^-1[:, q] (the square belongs to SparseGPT's mask score written "
                 "with the Cholesky factor)"),
                (wd - (wd[q] / hd[q, q]) * hd[:, q],
                 "you used H instead of H^-1: the function receives the INVERSE Hessian h_inv already; do not "
                 "invert it again"),
                (wd - (wd[q] * d) * col,
                 "you multiply by [H^-1]_qq; divide: delta = -(w_q / [H^-1]_qq) * H^-1[:, q]"),
                (wd - wd[q] * col,
                 "you did not divide by [H^-1]_qq: delta = -(w_q / [H^-1]_qq) * H^-1[:, q]; only with that division "
                 "does w'_q become exactly 0"),
                (kept_q,
                 "you updated the other weights but left w_q in place: removing weight q means w'_q = 0 (the update "
                 "applied to the whole row, including entry q, gives w_q - w_q = 0)"),
                (zeroed,
                 "you only zeroed w_q: the optimal brain surgeon also moves the remaining weights by "
                 "delta = -(w_q / [H^-1]_qq) * H^-1[:, q] to compensate"),
            ]
            diagnose(variants, lambda variant: close_to(result, variant), where)
            if close_to(result, reference, rtol=1e-4):
                fail(f"{where}: w'_q should be 0 after removing weight q, you have {float(result[q]):.3g}")
            fail(f"{where}: the updated row differs from w - (w_q / [H^-1]_qq) * H^-1[:, q] "
                 f"{describe_largest_difference(result, reference)}")
    passed("obs_remove_weight: w' = w - (w_q / [H^-1]_qq) * H^-1[:, q], with w'_q = 0")


# ---------------------------------------------------------------------------------------------
# 3. the OBS saliency
# ---------------------------------------------------------------------------------------------


@graded_check
def check_obs_saliency(fn: Callable, seed: int = 0) -> None:
    """Check ``obs_saliency(w, h_inv)`` = ``w^2 / [H^-1]_qq`` for a row ``(in,)`` and a matrix ``(out, in)``."""
    __tracebackhide__ = True
    name = "obs_saliency"
    gen = generator(400 + seed)
    for shape in ((7,), (5, 12), (8, 8), (3, 33)):
        cols = shape[-1]
        hessian, h_inv, _ = _spd_problem(gen, cols, tokens=4 * cols)
        w = torch.randn(*shape, generator=gen)
        where = f"with w of shape {tuple(shape)}"
        w_in, h_in = w.clone(), h_inv.clone()
        try:
            result = call(fn, w_in, h_in, name=name, returns="the saliencies, a tensor of w's shape")
        except CheckFailed as error:
            if w.dim() == 2:
                raise CheckFailed(f"{error}\n{where}: w may be a whole (out, in) matrix; broadcasting handles a row "
                                  "and a matrix alike: w.pow(2) / torch.diagonal(h_inv)") from None
            raise
        _unchanged(w, w_in, "w", name, where)
        _unchanged(h_inv, h_in, "h_inv", name, where)
        if isinstance(result, torch.Tensor) and w.dim() == 2 and tuple(result.shape) == (cols,):
            fail(f"{where}: you return one row's saliencies, shape ({cols},), for an (out, in) matrix\n"
                 f"{where}: w may be a whole (out, in) matrix; w.pow(2) / torch.diagonal(h_inv) broadcasts over its "
                 f"rows and returns shape {tuple(shape)}.")
        result = expect_tensor(result, shape, f"the saliencies {where}")
        reference = obs_saliency(w, h_inv)
        if close_to(result, reference):
            continue
        wd, d, h_diag = w.double(), h_inv.double().diagonal(), hessian.double().diagonal()
        variants = [
            (wd**2 / (2 * d),
             "you return w^2 / (2 [H^-1]_qq): that is the increase of the MEAN squared output error (with "
             "H = 2/n X^T X), half of SparseGPT's eps_q. Return the paper's form, Eq. 3: eps_q = w_q^2 / [H^-1]_qq"),
            (wd**2 / d**2,
             "you divide by [H^-1]_qq squared. The square in SparseGPT's mask score w^2 / [H^-1]_cc^2 is on an "
             "entry of the CHOLESKY factor of H^-1, whose square is a diagonal entry of the inverse; with the plain "
             "inverse it is eps_q = w_q^2 / [H^-1]_qq"),
            (wd**2 / h_diag,
             "you divide by H_qq: use the INVERSE Hessian's diagonal, eps_q = w_q^2 / [H^-1]_qq (h_inv is H^-1 "
             "already)"),
            (wd**2 * h_diag,
             "that is w^2 H_qq, the diagonal approximation of Optimal Brain Damage; the optimal brain surgeon divides "
             "by the diagonal of the INVERSE: eps_q = w_q^2 / [H^-1]_qq"),
            (wd**2 * h_diag / 2,
             "that is Optimal Brain Damage's w^2 H_qq / 2 (it ignores correlations between inputs); the optimal brain "
             "surgeon uses the inverse: eps_q = w_q^2 / [H^-1]_qq"),
            (wd**2 * d, "you multiply by [H^-1]_qq; divide: eps_q = w_q^2 / [H^-1]_qq"),
            (wd.abs() / d, "square the weight: eps_q = w_q^2 / [H^-1]_qq (you used |w_q|)"),
            (wd / d, "square the weight: eps_q = w_q^2 / [H^-1]_qq (you used w_q, which can be negative)"),
            (wd.abs() / d.sqrt(),
             "you return |w_q| / sqrt([H^-1]_qq), the square root of eps_q: return eps_q = w_q^2 / [H^-1]_qq itself"),
            (wd**2, "that is the squared magnitude w^2 alone: divide by the inverse Hessian's diagonal [H^-1]_qq"),
            (wd.abs(), "that is the magnitude |w| alone: OBS scores eps_q = w_q^2 / [H^-1]_qq"),
        ]
        diagnose(variants, lambda variant: close_to(result, variant.expand(shape)), where)
        hint = (" (w here is a whole (out, in) matrix: does your code assume a 1-D row? w.pow(2) / "
                "torch.diagonal(h_inv) broadcasts over the rows)") if w.dim() == 2 else ""
        fail(f"{where}: the saliencies differ from w^2 / [H^-1]_qq {describe_largest_difference(result, reference)}{hint}")
    passed("obs_saliency: eps_q = w_q^2 / [H^-1]_qq, for a row and for a matrix")


# ---------------------------------------------------------------------------------------------
# 4. the relative reconstruction error
# ---------------------------------------------------------------------------------------------


@graded_check
def check_relative_reconstruction_error(fn: Callable, seed: int = 0) -> None:
    """Check ``relative_reconstruction_error(weight, new_weight, x)`` = ``||X W^T - X W'^T||_F / ||X W^T||_F``
    for ``x`` of shape ``(tokens, in)`` or ``(batch, seq, in)``."""
    __tracebackhide__ = True
    name = "relative_reconstruction_error"
    gen = generator(500 + seed)
    # the square weight first: there x @ W (instead of x @ W^T) runs, and can be named
    for x_shape, out_f in (((30, 6), 6), ((40, 10), 6), ((64, 8), 12), ((3, 9, 7), 5)):
        in_f = x_shape[-1]
        x = torch.randn(*x_shape, generator=gen) * torch.logspace(-1, 1, in_f)
        weight = torch.randn(out_f, in_f, generator=gen)
        keep = torch.rand(out_f, in_f, generator=gen) > 0.5
        new_weight = weight * keep + 0.1 * torch.randn(out_f, in_f, generator=gen) * keep  # pruned and updated
        where = f"with x of shape {tuple(x_shape)} and a {out_f}x{in_f} weight"
        args = (weight.clone(), new_weight.clone(), x.clone())
        reference = relative_output_error(x, weight, new_weight)

        def fail_if_in_03s_order() -> None:  # tried only once the answer is wrong: a right one runs once
            __tracebackhide__ = True
            if in_another_order(fn, (weight.clone(), new_weight.clone(), x.clone()), (2, 0, 1),
                                lambda value: math.isclose(float(value), reference, rel_tol=1e-4)):
                fail(f"{where}: your arguments are in notebook 03's order, (x, weight, pruned_weight)\n{where}: "
                     f"{name} takes (weight, new_weight, x), in that order; your function computes the right value "
                     "when given x first.")

        try:
            result = call(fn, *args, name=name, returns="one number, a float (or a 0-d tensor)")
        except CheckFailed as error:
            if "not implemented" not in str(error):
                fail_if_in_03s_order()
            if x.dim() == 3:
                raise CheckFailed(f"{error}\n{where}: x can be 3-D (batch, seq, in); x @ weight.T works for any "
                                  "number of leading dimensions, or flatten with x.reshape(-1, x.shape[-1])") from None
            raise
        for before, after, what in zip((weight, new_weight, x), args, ("weight", "new_weight", "x")):
            _unchanged(before, after, what, name, where)
        result = expect_number(result, f"{where}: {name}")
        if math.isclose(result, reference, rel_tol=1e-4):
            continue
        fail_if_in_03s_order()
        xd = x.reshape(-1, in_f).double()
        wd, nd = weight.double(), new_weight.double()
        dense, sparse = xd @ wd.t(), xd @ nd.t()
        variants = [
            (float((dense - sparse).norm()),
             "that is the absolute error ||XW^T - XW'^T||_F; divide by ||XW^T||_F to make it relative"),
            (reference**2, "that is the ratio of SQUARED norms; take the norms themselves (torch.linalg.norm / .norm())"),
            (float((wd - nd).norm() / wd.norm()),
             "that is the relative error of the WEIGHTS, ||W - W'|| / ||W||; the exercise asks for the error of the "
             "layer's OUTPUTS on the inputs x: ||XW^T - XW'^T|| / ||XW^T||"),
            (float(((dense - sparse).norm(dim=1) / dense.norm(dim=1)).mean()),
             "that is the mean of per-token relative errors; take the Frobenius norm over all tokens and outputs at "
             "once"),
            (float((dense - sparse).norm() / sparse.norm()),
             "you divide by the norm of the PRUNED output ||XW'^T||; divide by the dense output ||XW^T||"),
        ]
        if x.dim() == 3:
            first, first_pruned = x[0].double() @ wd.t(), x[0].double() @ nd.t()
            variants.append((float((first - first_pruned).norm() / first.norm()),
                             "you used only the FIRST sequence of a 3-D x: flatten batch and sequence, "
                             "x.reshape(-1, x.shape[-1]), or let x @ W^T broadcast over both"))
        if out_f == in_f:
            variants.append((float((xd @ wd - xd @ nd).norm() / (xd @ wd).norm()),
                             "you multiplied x @ W; a linear layer computes x @ W^T (W is (out, in))"))
        diagnose(
            variants,
            lambda value: math.isclose(result, value, rel_tol=1e-4),
            describe=lambda message: f"{where}: your value {result:.6g}: {message} (expected {reference:.6g}).",
        )
        fail(f"{where}: {name} returned {result:.6g}, expected ||XW^T - XW'^T||_F / ||XW^T||_F = {reference:.6g}")
    passed("relative_reconstruction_error = ||XW^T - XW'^T||_F / ||XW^T||_F")
