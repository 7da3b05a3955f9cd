"""Graded checks of notebook 06 (MLP width: remove intermediate neurons).

The notebook's exercises, at the tensor level:

``wanda_sp_scores(down_weight, activations)``
    the Wanda-sp neuron score (An et al., 2024, FLAP's structured Wanda baseline): for every
    intermediate neuron ``j``, ``S_j = mean_i |W_down[i, j]| * rms(a_j)``, with ``rms(a_j)`` the root
    mean square of the down projection's input ``a_j`` over all tokens (the package's
    ``neuron_scores(..., metric="wanda_sp")`` on the ``ActivationMoments`` of those inputs).
``slice_mlp(gate_weight, up_weight, down_weight, keep)``
    the weights of one Llama MLP after keeping only the neurons ``keep``: rows of ``gate_proj`` and
    ``up_proj``, columns of ``down_proj``, in the neurons' original order (compared with the package's
    ``prune_mlp_width`` on a one-block Llama).

Each check calls the learner's function on seeded inputs (non-square weights, a square one where
shapes cannot tell rows from columns), compares with the package and, on a mismatch, recomputes the
classic wrong variants to say which mistake the learner's result matches. ``seed`` selects another
set of inputs (the notebook's hidden tests use it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..architectures import adapter_for
from ..testing import tiny_random_model
from ..structured.width import ActivationMoments, neuron_scores, prune_mlp_width
from . import (
    CheckFailed,
    call,
    close_to,
    diagnose,
    expect_tensor,
    fail,
    fmt_values,
    generator,
    graded_check,
    passed,
    scale_factor,
)

__all__ = ["check_wanda_sp_scores", "check_slice_mlp", "reference_wanda_sp_scores"]


def reference_wanda_sp_scores(down_weight: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """The package's Wanda-sp score of every neuron from the down projection's inputs ``(..., intermediate)``."""
    __tracebackhide__ = True
    moments = ActivationMoments(nn.Linear(down_weight.shape[1], 1, bias=False))
    moments.add(activations.detach())
    return neuron_scores(down_weight, moments.mean_sq, metric="wanda_sp")


# ---------------------------------------------------------------------------------------------
# 1. Wanda-sp neuron scores
# ---------------------------------------------------------------------------------------------


def _score_cases(seed: int):
    __tracebackhide__ = True
    gen = generator(80 + seed)
    cases = []
    for out_features, in_features, act_shape in ((6, 10, (2, 5)), (7, 7, (3, 4)), (12, 5, (9,)), (4, 16, (2, 3))):
        weight = torch.randn(out_features, in_features, generator=gen) * torch.logspace(-1, 0.5, in_features)
        scales = torch.logspace(-1, 1, in_features)[torch.randperm(in_features, generator=gen)]
        activations = (torch.randn(*act_shape, in_features, generator=gen) + 0.5) * scales
        cases.append((weight, activations))
    return cases


@graded_check
def check_wanda_sp_scores(wanda_sp_scores: Callable, seed: int = 0) -> None:
    """Check ``wanda_sp_scores(down_weight, activations)``.

    ``down_weight``: ``(hidden, intermediate)`` (PyTorch's ``(out, in)``); ``activations``:
    ``(..., intermediate)``, the inputs of the down projection. Returns ``(intermediate,)``:
    ``mean_i |W[i, j]| * sqrt(mean over tokens of a_j^2)``.
    """
    __tracebackhide__ = True
    name = "wanda_sp_scores"
    for weight, activations in _score_cases(seed):
        out_features, in_features = weight.shape
        tokens = activations.reshape(-1, in_features).shape[0]
        where = f"with a ({out_features}, {in_features}) down_proj weight and activations of shape {tuple(activations.shape)}"
        w_in, a_in = weight.clone(), activations.clone()
        try:
            result = call(wanda_sp_scores, w_in, a_in, name=name, returns="one score per intermediate neuron, a tensor of shape (intermediate,)")
        except CheckFailed as error:
            if "size of tensor" in str(error) or "must match" in str(error):
                raise CheckFailed(f"{error}\n{where}: neuron j is COLUMN j of the (hidden, intermediate) down_proj "
                                  "weight; average |W| over the rows (dim 0) to get one value per neuron, shape "
                                  f"({in_features},).") from None
            raise
        if not torch.equal(w_in, weight) or not torch.equal(a_in, activations):
            fail(f"{where}: wanda_sp_scores modified its inputs in place (e.g. .abs_() or .pow_()); use out-of-place "
                 "operations.")
        if isinstance(result, torch.Tensor) and tuple(result.shape) == (out_features,) and out_features != in_features:
            fail(f"{where}: your scores have shape ({out_features},), one per ROW of down_proj (one per hidden feature). "
                 f"Neuron j is COLUMN j of the (hidden, intermediate) weight: reduce over dim 0 to get ({in_features},).")
        if isinstance(result, torch.Tensor) and result.dim() >= 2 and result.shape[-1] == in_features:
            fail(f"{where}: your scores have shape {tuple(result.shape)}: reduce over every token (flatten the leading "
                 f"dimensions, activations.reshape(-1, {in_features})) and over the rows of W, to get ({in_features},).")
        result = expect_tensor(result, (in_features,), f"the scores {where}").detach().double()
        w = weight.double()
        a = activations.double().reshape(-1, in_features)
        reference = reference_wanda_sp_scores(weight, activations).double()
        if close_to(result, reference):
            continue
        rms = a.pow(2).mean(dim=0).sqrt()
        col_mean = w.abs().mean(dim=0)
        factor = scale_factor(result, reference)
        if factor is not None and abs(factor - tokens**0.5) < 1e-3 * tokens**0.5:
            fail(f"{where}: your scores are sqrt({tokens}) = {factor:.4g} times the reference: you took the L2 norm of "
                 f"a_j over the {tokens} tokens, sqrt(sum a_j^2); Wanda-sp here uses the root mean square, "
                 "sqrt(mean a_j^2), so that scores do not grow with the number of calibration tokens.")
        if factor is not None and abs(factor - out_features) < 1e-3 * out_features:
            fail(f"{where}: your scores are {out_features} times the reference: you summed |W[i, j]| over the "
                 f"{out_features} rows; take the mean.")
        variants = [
            (w.mean(dim=0).abs() * rms, "you took abs after averaging W's column: positive and negative weights cancel. "
             "Average |W[i, j]| (abs first)"),
            (w.mean(dim=0) * rms, "your scores can be negative: use |W[i, j]| (the weights' absolute values)"),
            (col_mean * rms.pow(2), "you multiplied by the mean of a_j^2; take its square root (the RMS)"),
            (col_mean * a.abs().mean(dim=0), "you used the mean of |a_j|; Wanda-sp uses the root mean square "
             "sqrt(mean a_j^2), which weighs large activations more"),
            (w.pow(2).mean(dim=0).sqrt() * rms, "you took the RMS of W's column; average |W[i, j]| instead"),
            (w.norm(dim=0) * rms, "you took the L2 norm of W's column; average |W[i, j]| instead"),
            (col_mean, "your scores ignore the activations: multiply by rms(a_j)"),
            (rms, "your scores ignore the weights: multiply by the mean of |W[:, j]|"),
            (w.abs().mean(dim=1) * rms if out_features == in_features else None,
             "you averaged |W| over its COLUMNS (dim 1), one value per hidden feature; neuron j is COLUMN j of "
             "down_proj: average over the rows (dim 0)"),
        ]
        diagnose(variants, lambda variant: variant is not None and close_to(result, variant), where)
        j = int((result - reference).abs().argmax())
        fail(f"{where}: for neuron {j} you return {float(result[j]):.6g}, expected mean_i |W[i, {j}]| * rms(a_{j}) = "
             f"{float(col_mean[j]):.4g} * {float(rms[j]):.4g} = {float(reference[j]):.6g}; expected scores start "
             f"{fmt_values(reference)}, yours {fmt_values(result)}.")
    passed("wanda_sp_scores = mean_i |W_down[i, j]| * rms(a_j) for every intermediate neuron j")


# ---------------------------------------------------------------------------------------------
# 2. slicing gate/up rows and down columns together
# ---------------------------------------------------------------------------------------------


def _tiny_llama_mlp(hidden: int, intermediate: int, seed: int) -> nn.Module:
    __tracebackhide__ = True
    return tiny_random_model("llama", seed=seed, vocab_size=32, hidden_size=hidden, intermediate_size=intermediate,
                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=2,
                             max_position_embeddings=64)


def _package_width_slices(gate, up, down, keep, seed):
    __tracebackhide__ = True
    model = _tiny_llama_mlp(gate.shape[1], gate.shape[0], seed)
    adapter = adapter_for(model)
    mlp = adapter.blocks(model)[0].mlp
    with torch.no_grad():
        mlp.gate_proj.weight.copy_(gate)
        mlp.up_proj.weight.copy_(up)
        mlp.down_proj.weight.copy_(down)
    prune_mlp_width(model, adapter, {0: keep})
    return tuple(m.weight.detach().clone() for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))


def _mlp(x, gate, up, down):
    __tracebackhide__ = True
    return (F.silu(x @ gate.t()) * (x @ up.t())) @ down.t()


def _width_slice_cases(seed: int):
    __tracebackhide__ = True
    gen = generator(90 + seed)
    cases = []
    for hidden, intermediate, kept in ((12, 8, 5), (6, 10, 4), (8, 16, 8), (10, 7, 6)):
        keep = torch.randperm(intermediate, generator=gen)[:kept]
        if bool((keep[1:] > keep[:-1]).all()):  # make sure the indices come unsorted
            keep = keep.flip(0)
        cases.append((hidden, intermediate, keep))
    return cases


@graded_check
def check_slice_mlp(slice_mlp: Callable, seed: int = 0) -> None:
    """Check ``slice_mlp(gate_weight, up_weight, down_weight, keep)``.

    ``gate_weight``, ``up_weight``: ``(intermediate, hidden)``; ``down_weight``: ``(hidden, intermediate)``;
    ``keep``: a 1-D tensor of the neurons to keep, in any order. Returns ``(gate, up, down)`` with the
    kept neurons' rows of gate and up and columns of down, in the neurons' original order. The
    reference is the package's ``prune_mlp_width`` on a one-block Llama.
    """
    __tracebackhide__ = True
    name = "slice_mlp"
    gen = generator(95 + seed)
    for hidden, intermediate, keep in _width_slice_cases(seed):
        gate = torch.randn(intermediate, hidden, generator=gen)
        up = torch.randn(intermediate, hidden, generator=gen)
        down = torch.randn(hidden, intermediate, generator=gen)
        where = (f"with hidden {hidden}, {intermediate} neurons and keep = {keep.tolist()}")
        inputs = [gate.clone(), up.clone(), down.clone(), keep.clone()]
        try:
            result = call(slice_mlp, *inputs, name=name, returns="(gate_weight, up_weight, down_weight) with only the kept neurons")
        except CheckFailed as error:
            if "index" in str(error).lower():
                raise CheckFailed(f"{error}\n{where}: gate_proj and up_proj weights are (intermediate, hidden): a neuron "
                                  "is a ROW; down_proj's weight is (hidden, intermediate): a neuron is a COLUMN, "
                                  "down_weight[:, keep].") from None
            raise
        for before, after, label in zip((gate, up, down, keep), inputs, ("gate_weight", "up_weight", "down_weight", "keep")):
            if not torch.equal(before, after):
                fail(f"{where}: slice_mlp modified {label} in place; return new tensors"
                     + (" (keep.sort() returns a sorted copy; keep.sort_() would not)" if label == "keep" else "") + ".")
        if not isinstance(result, (tuple, list)) or len(result) != 3:
            fail(f"{where}: return the three weights (gate, up, down) as a tuple, got {type(result).__name__}")
        got = [r.detach() if isinstance(r, torch.Tensor) else r for r in result]
        for label, value in zip(("gate", "up", "down"), got):
            if not isinstance(value, torch.Tensor):
                fail(f"{where}: {label} should be a torch.Tensor, got {type(value).__name__}")
        ref = _package_width_slices(gate, up, down, keep, seed)
        if all(g.shape == r.shape and torch.equal(g, r) for g, r in zip(got, ref)):
            continue
        n = keep.numel()
        g_got, u_got, d_got = got
        if g_got.shape == gate.shape:
            fail(f"{where}: gate still has all {intermediate} neurons: slice gate_proj's rows too. In a Llama MLP the "
                 "neuron's value is silu(gate_j . x) * (up_j . x): gate, up and down must lose the same neurons.")
        if u_got.shape == up.shape:
            fail(f"{where}: up still has all {intermediate} neurons: slice up_proj's rows too.")
        if d_got.shape == (n, intermediate) and n != hidden:
            fail(f"{where}: down has shape {tuple(d_got.shape)}: you sliced the ROWS of down_proj. Its weight is "
                 f"(hidden, intermediate): a neuron is a COLUMN, down_weight[:, keep].")
        if d_got.shape == down.shape:
            fail(f"{where}: down still has all {intermediate} neurons as columns: slice down_proj's columns "
                 "(down_weight[:, keep]).")
        removed = torch.tensor([j for j in range(intermediate) if j not in set(keep.tolist())], dtype=torch.long)
        if g_got.shape[0] == removed.numel() and torch.equal(g_got, gate[removed]):
            fail(f"{where}: you kept the neurons to REMOVE; keep those listed in keep.")
        for label, value, reference in zip(("gate", "up", "down"), got, ref):
            if value.shape != reference.shape:
                fail(f"{where}: {label} should have shape {tuple(reference.shape)}, got {tuple(value.shape)}")
        in_given_order = (gate[keep], up[keep], down[:, keep])
        if all(torch.equal(g, r) for g, r in zip(got, in_given_order)):
            fail(f"{where}: you kept the right neurons in the order keep lists them; keep them in their original order "
                 "(sort the indices first: keep.sort().values), as the package's prune_mlp_width does, so that "
                 "neuron i of the smaller layer is the i-th surviving neuron of the original.")
        x = torch.randn(3, hidden, generator=gen)
        if not close_to(_mlp(x, *got), _mlp(x, *ref), 1e-4):
            matches = [label for label, g, r in zip(("gate", "up", "down"), got, ref) if torch.equal(g, r)]
            fail(f"{where}: the sliced MLP computes something else than the full MLP with the other neurons removed"
                 + (f" ({', '.join(matches)} match(es) the reference, the others do not)" if matches else "")
                 + ": gate/up rows and down columns must be the same neurons, in the same order.")
        fail(f"{where}: the sliced MLP computes the right function, but the neurons are not in their original order "
             "(sort the kept indices).")
    passed("slice_mlp keeps the same neurons in gate/up (rows) and down (columns), in their original order")
