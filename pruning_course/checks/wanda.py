"""Graded checks of notebook 03 (Wanda: pruning by weights and activations, Sun et al., 2024).

Every check calls the learner's function on seeded inputs, compares the result with the package
(``pruning_course.calibration.SquaredInputNorm``, ``pruning_course.unstructured.wanda_scores``,
``pruning_course.masks.per_row_mask`` / ``nm_mask``) and, when they differ, recomputes the classic
wrong variants to say which mistake the learner's result matches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..calibration import SquaredInputNorm
from ..evaluate import relative_output_error
from ..masks import nm_mask as reference_nm_mask
from ..masks import num_to_prune, per_matrix_mask, per_row_mask
from ..unstructured.wanda import wanda_scores as reference_wanda_scores
from ..testing import tiny_random_model
from . import (
    diagnose,
    CheckFailed,
    call,
    call_expecting_value_error,
    expect_keep_mask,
    expect_tensor,
    fail,
    fmt_values,
    generator,
    graded_check,
    in_another_order,
    passed,
    scale_factor,
)

__all__ = [
    "check_activation_norm_hook",
    "check_wanda_scores",
    "check_wanda_mask",
    "check_relative_output_error",
    "check_nm_mask",
]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _positive_factor(value: torch.Tensor, reference: torch.Tensor) -> float | None:
    """The factor ``c > 0`` with ``value == c * reference``, or ``None``."""
    __tracebackhide__ = True
    c = scale_factor(value, reference)
    return c if c is not None and c > 0 else None


def _same_scores(value: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-5) -> bool:
    __tracebackhide__ = True
    value = value.detach()
    if value.shape != reference.shape:
        return False
    return torch.allclose(value.double(), reference.double(), rtol=rtol, atol=rtol * float(reference.abs().max()) * 1e-2 + 1e-12)


def _hook_count(module: nn.Module) -> int:
    __tracebackhide__ = True
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


# ---------------------------------------------------------------------------------------------
# 1. the activation-norm hook
# ---------------------------------------------------------------------------------------------


def _stat(tensors: Sequence[torch.Tensor], in_features: int) -> torch.Tensor:
    """The package's statistic (mean over all tokens of x_j^2) over a list of input tensors."""
    __tracebackhide__ = True
    stat = SquaredInputNorm(nn.Linear(in_features, 1, bias=False))
    for x in tensors:
        stat.add(x.detach())
    return stat.value


def _diagnose_norm_stat(result: torch.Tensor, inputs: list[torch.Tensor], outputs: list[torch.Tensor], where: str) -> None:
    """Fail with the mistake that ``result`` matches, or with a precise generic message."""
    __tracebackhide__ = True
    in_features = inputs[0].shape[-1]
    reference = _stat(inputs, in_features)
    flat = [x.detach().reshape(-1, in_features).double() for x in inputs]
    counts = [x.shape[0] for x in flat]
    per_batch_sum = [(x**2).sum(0) for x in flat]
    variants = [
        (reference.sqrt(),
         "your values are the norms ||X_j|| (the square root of the accumulated squares). Return the accumulated "
         "SQUARED norms (sum of x_j^2): wanda_scores takes the square root itself"),
        (sum(s.sqrt() for s in per_batch_sum),
         "you take a norm (sqrt) per batch and add the norms up; norms of batches do not add. Accumulate the squared "
         "values x_j^2 over all tokens and take no square root here"),
        (sum((s / n).sqrt() for s, n in zip(per_batch_sum, counts)),
         "you take a root-mean-square per batch and add those up; accumulate x_j^2 over all tokens and take no "
         "square root here"),
        (sum(s / n for s, n in zip(per_batch_sum, counts)),
         f"you average each batch separately and then combine the per-batch means; the batches here have "
         f"{', '.join(map(str, counts))} tokens, so the tokens of small batches weigh more. Accumulate the sum of "
         "x_j^2 and the number of tokens over all batches and divide once at the end (returning the plain sum is "
         "fine too: a constant factor changes no ranking)"),
        (per_batch_sum[-1],
         "only the last batch counts: your hook overwrites the statistic instead of adding to it (accumulate with +=)"),
        (per_batch_sum[0],
         "only the first batch counts: the statistic must be accumulated over every batch"),
    ]
    if outputs and outputs[0].shape[-1] == in_features:
        out_flat = [y.detach().reshape(-1, in_features).double() for y in outputs]
        variants.append((sum((y**2).sum(0) for y in out_flat),
                         "your values are those of the layer's OUTPUT: a forward hook is called as hook(module, args, "
                         "output) and Wanda needs the inputs, args[0]"))
    diagnose(variants, lambda variant: _positive_factor(result, variant) is not None, where)
    first = int((result.double() / result.double().sum() - reference.double() / reference.double().sum()).abs().argmax())
    fail(f"{where}: your values are not proportional to the mean over all tokens of x_j^2: at feature {first} you "
         f"return {float(result[first]):.6g}, the reference (sum of x_j^2 / number of tokens) is "
         f"{float(reference[first]):.6g}; reference starts {fmt_values(reference)}, yours {fmt_values(result)}.")


def _check_norm_result(result, inputs, outputs, out_features: int, where: str) -> float:
    __tracebackhide__ = True
    in_features = inputs[0].shape[-1]
    if not isinstance(result, torch.Tensor):
        fail(f"{where}: collect_act_sq_norms should return a torch.Tensor with one value per input feature "
             f"({in_features},), got {type(result).__name__}")
    result = result.detach()
    tokens = sum(x.reshape(-1, in_features).shape[0] for x in inputs)
    shape = tuple(result.shape)
    if shape != (in_features,):
        if shape == (out_features,):
            fail(f"{where}: your result has one value per OUTPUT feature ({out_features}), Wanda needs one per input "
                 f"feature ({in_features}): a forward hook is called as hook(module, args, output); use args[0]")
        if result.numel() == tokens or shape == tuple(inputs[-1].shape[:-1]) or (result.numel() == inputs[-1].shape[:-1].numel()):
            fail(f"{where}: your result has shape {shape}: one value per token. You reduced over the feature dimension; "
                 f"Wanda needs one value per input feature j, summed over the tokens: flatten batch and sequence "
                 f"(x.reshape(-1, x.shape[-1])) and sum over dim 0")
        if len(shape) == 2 and shape[-1] == in_features:
            fail(f"{where}: your result has shape {shape}: flatten batch AND sequence before summing "
                 f"(x.reshape(-1, x.shape[-1]).pow(2).sum(dim=0)), so that you get one value per input feature "
                 f"({in_features},)")
        fail(f"{where}: collect_act_sq_norms should return shape ({in_features},) (one value per input feature), "
             f"got {shape}")
    if not bool(torch.isfinite(result).all()):
        fail(f"{where}: your result contains NaN or inf: {fmt_values(result)}")
    factor = _positive_factor(result, _stat(inputs, in_features))
    if factor is None:
        _diagnose_norm_stat(result, inputs, outputs, where)
    return factor


class RecordingHook:
    """A forward hook that keeps a layer's inputs and outputs. A plain object rather than a
    closure, so that it travels with the model when the grader calls the learner's function
    in another process (:mod:`pruning_course.grading.remote`)."""

    def __init__(self):
        __tracebackhide__ = True
        self.inputs, self.outputs = [], []

    def __call__(self, _module, args, output):
        __tracebackhide__ = True
        self.inputs.append(args[0].detach().clone())
        self.outputs.append(output.detach().clone())


def _observed_calls(layer: nn.Module, model: nn.Module, batches, collect) -> tuple[Any, int]:
    """Run the learner's ``collect(layer, model, batches)`` with a recording hook on ``layer``;
    return its result and how many times the layer ran during the call."""
    __tracebackhide__ = True
    probe = layer.register_forward_hook(RecordingHook())
    try:
        result = collect(layer, model, batches)
        recorder = layer._forward_hooks.get(probe.id)  # the hook as the call left it
        return result, len(recorder.inputs) if isinstance(recorder, RecordingHook) else 0
    finally:
        probe.remove()


def _reference_io(layer: nn.Module, model: nn.Module, batches) -> tuple[list, list]:
    """The layer's inputs and outputs over ``batches``, recorded here by the check itself."""
    __tracebackhide__ = True
    recorder = RecordingHook()
    handle = layer.register_forward_hook(recorder)
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        handle.remove()
    return recorder.inputs, recorder.outputs


@graded_check
def check_activation_norm_hook(collect_act_sq_norms: Callable) -> None:
    """Check ``collect_act_sq_norms(linear, model, batches)``.

    It must register a forward hook on ``linear``, call ``model(batch)`` for every batch, accumulate
    for every input feature ``j`` the sum over all tokens (batch and sequence flattened) of
    ``x_j ** 2``, remove the hook and return a ``(in_features,)`` tensor. The reference returns the
    sum divided by the token count (``SquaredInputNorm``); any positive constant multiple is
    accepted, since a constant factor changes no ranking within a row.
    """
    __tracebackhide__ = True
    name = "collect_act_sq_norms"
    factors = []

    # case 1: a lone linear layer fed with (batch, seq, in) tensors of unequal token counts
    gen = generator(30)
    in_features, out_features = 10, 7
    linear = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=gen))
    scales = torch.logspace(-1, 1, in_features)[torch.randperm(in_features, generator=gen)]  # outlier features
    batches = [torch.randn(b, 3, in_features, generator=gen) * scales for b in (2, 3, 1)]
    hooks_before = _hook_count(linear)
    weight_before = linear.weight.detach().clone()
    result, runs = _observed_calls(linear, linear, batches, lambda *a: call(collect_act_sq_norms, *a, name=name, returns="a (in_features,) tensor, one value per input feature"))
    if _hook_count(linear) != hooks_before:
        fail("your function left a hook registered on the layer: keep the handle that register_forward_hook returns "
             "and call handle.remove() when the batches are done (in a `finally:` block, so it goes even on errors)")
    if not runs:
        fail("the layer was never called: run model(batch) for every batch in batches, with the hook registered")
    if runs != len(batches):
        fail(f"the layer ran {runs} times for {len(batches)} batches: call model(batch) once per batch")
    if not torch.equal(linear.weight.detach(), weight_before):
        fail("your function changed the layer's weights: it should only observe the inputs")
    inputs, outputs = _reference_io(linear, linear, batches)
    where = "on a single nn.Linear(10, 7) fed 3 batches of (batch, 3, 10) inputs with 6, 9 and 3 tokens"
    factors.append(_check_norm_result(result, inputs, outputs, out_features, where))

    # case 2: a layer inside a (tiny, random) Llama model: only a hook can see its inputs
    model = tiny_random_model("llama", seed=3)
    windows = torch.randint(0, model.config.vocab_size, (5, 24), generator=generator(31))
    batches = [windows[:2], windows[2:4], windows[4:]]
    for block, layer_name in ((1, "self_attn.o_proj"), (0, "mlp.down_proj")):
        layer = model.get_submodule(f"model.layers.{block}.{layer_name}")
        hooks_before = _hook_count(model)
        result, runs = _observed_calls(layer, model, batches, lambda *a: call(collect_act_sq_norms, *a, name=name, returns="a (in_features,) tensor, one value per input feature"))
        if _hook_count(model) != hooks_before:
            fail(f"after your function, model.layers.{block}.{layer_name} (or another module) still has a hook "
                 "registered: call handle.remove() when the batches are done (in a `finally:` block)")
        if runs != len(batches):
            fail(f"model.layers.{block}.{layer_name} ran {runs} times for {len(batches)} batches: call "
                 "model(batch) once per batch")
        inputs, outputs = _reference_io(layer, model, batches)
        where = (f"on model.layers.{block}.{layer_name} of a tiny Llama ({layer.in_features} -> {layer.out_features}), "
                 "batches of 2, 2 and 1 windows of 24 tokens")
        factors.append(_check_norm_result(result, inputs, outputs, layer.out_features, where))

    note = ""
    if any(abs(f - 1) > 1e-3 for f in factors if f is not None):
        note = " (up to a constant factor, e.g. the token count: that changes no ranking)"
    passed(f"collect_act_sq_norms accumulates sum over tokens of x_j^2 per input feature{note}, "
           "from the layer's inputs, over every batch, and removes its hook")


# ---------------------------------------------------------------------------------------------
# 2. Wanda scores
# ---------------------------------------------------------------------------------------------


@graded_check
def check_wanda_scores(wanda_scores: Callable) -> None:
    """Check ``wanda_scores(weight, act_sq_norm) == |W| * sqrt(act_sq_norm)`` (broadcast over rows)."""
    __tracebackhide__ = True
    name = "wanda_scores"
    cases = []
    gen = generator(32)
    for rows, cols in ((6, 6), (5, 9), (16, 7)):  # square first: there a wrong broadcast runs and can be diagnosed
        weight = torch.randn(rows, cols, generator=gen)
        act = torch.rand(cols, generator=gen) * torch.logspace(-2, 2, cols)[torch.randperm(cols, generator=gen)]
        cases.append((weight, act))
    cases.append((torch.tensor([[1.0, -4.0, 3.0, -0.5]]), torch.tensor([100.0, 1.0, 0.25, 100.0])))
    for weight, act in cases:
        shape = tuple(weight.shape)
        w_in, a_in = weight.clone(), act.clone()
        try:
            result = call(wanda_scores, w_in, a_in, name=name, returns=f"the scores, a tensor of shape {shape}")
        except CheckFailed as error:
            if "size of tensor" in str(error) or "shape" in str(error):
                raise CheckFailed(f"{error}\nOn a {shape[0]}x{shape[1]} weight: act_sq_norm has one entry per INPUT "
                                  "feature, i.e. per column of W; broadcast it along the rows: "
                                  "act_sq_norm.sqrt().unsqueeze(0) (shape (1, in)).") from None
            raise
        if not torch.equal(w_in, weight) or not torch.equal(a_in, act):
            fail("wanda_scores modified its inputs in place (e.g. weight.abs_()): use out-of-place operations, the "
                 "weight is the model's")
        result = expect_tensor(result, shape, f"wanda_scores of a {shape[0]}x{shape[1]} weight")
        reference = reference_wanda_scores(weight, act)
        if _same_scores(result, reference):
            continue
        sq = act.unsqueeze(0)
        variants = [
            (weight.abs() * sq, "you multiply by act_sq_norm itself: take its square root (act_sq_norm holds SQUARED "
                                "norms; the score is |W_ij| * ||X_j||)"),
            (weight * sq.sqrt(), "your scores keep the sign of W: take |W| (a large negative weight matters as much "
                                 "as a large positive one)"),
            (weight**2 * sq, "your scores are W^2 * act_sq_norm, the SQUARE of Wanda's score: the ranking is the "
                             "same, but the score of Eq. 1 is |W_ij| * sqrt(act_sq_norm_j)"),
            (weight**2 * sq.sqrt(), "you use W^2 where the score has |W|: |W_ij| * sqrt(act_sq_norm_j)"),
            (weight.abs() * sq.sqrt() ** 0.5, "you take the square root twice"),
            (weight.abs().expand_as(weight), "your scores are |W| alone: you forgot the activations. Wanda's score "
             "is |W_ij| * sqrt(act_sq_norm_j), the weight times its input's norm"),
            (sq.sqrt().expand_as(weight), "your scores are the activation norms alone: multiply by |W_ij|"),
            (weight.abs() / sq.sqrt(), "you divide by the norm; Wanda multiplies: |W_ij| * sqrt(act_sq_norm_j)"),
        ]
        if shape[0] == shape[1]:
            variants.append((weight.abs() * act.sqrt().unsqueeze(1),
                             "you broadcast the norms along the wrong dimension: act_sq_norm[j] belongs to input "
                             "feature j, i.e. column j of W (shape (out, in)); use act_sq_norm.sqrt().unsqueeze(0), "
                             "not .unsqueeze(1)"))
        diagnose(
            variants,
            lambda variant: _same_scores(result, variant),
            describe=lambda message: f"on a {shape[0]}x{shape[1]} weight: {message}.",
        )
        diff = (result.double() - reference.double()).abs()
        r, c = divmod(int(diff.argmax()), shape[1])
        fail(f"on a {shape[0]}x{shape[1]} weight, score[{r}, {c}] should be |{float(weight[r, c]):.4g}| * "
             f"sqrt({float(act[c]):.4g}) = {float(reference[r, c]):.6g}, yours is {float(result[r, c]):.6g}")
    passed("wanda_scores = |W| * sqrt(act_sq_norm), one norm per input column")


# ---------------------------------------------------------------------------------------------
# 3. the per-row Wanda mask
# ---------------------------------------------------------------------------------------------


def _wanda_mask_cases():
    __tracebackhide__ = True
    gen = generator(33)
    cases = []
    # (4, 7) at 0.1: floor(7 * 0.1) = 0, nothing to remove ("handle k = 0")
    for (rows, cols), sparsity in (((8, 16), 0.5), ((6, 10), 0.3), ((7, 13), 0.5), ((5, 20), 0.75), ((4, 7), 0.6),
                                   ((4, 7), 0.1)):
        row_scale = torch.logspace(-1, 1, rows)[torch.randperm(rows, generator=gen)].unsqueeze(1)
        scores = torch.rand(rows, cols, generator=gen) * row_scale  # rows of very different scale
        cases.append((scores, sparsity))
    return cases


@graded_check
def check_wanda_mask(wanda_mask: Callable) -> None:
    """Check ``wanda_mask(scores, sparsity)``: a keep-mask removing the ``floor(in * sparsity)`` lowest
    scores of every output row (``pruning_course.masks.per_row_mask``)."""
    __tracebackhide__ = True
    name = "wanda_mask"
    for scores, sparsity in _wanda_mask_cases():
        rows, cols = scores.shape
        k = num_to_prune(cols, sparsity)
        where = f"on {rows}x{cols} scores at sparsity {sparsity}"
        s_in = scores.clone()
        try:
            mask = call(wanda_mask, s_in, sparsity, name=name,
                        returns=f"a torch.bool keep-mask of shape {(rows, cols)} (True = keep)")
        except CheckFailed as error:
            if k == 0 and "not implemented" not in str(error):
                raise CheckFailed(f"k = 0 is not handled: at sparsity {sparsity} a row of {cols} loses nothing\n"
                                  f"{where}: floor({cols} * {sparsity}) = 0 weights per row to remove, and your "
                                  "function crashed; return an all-True mask when k == 0 (torch.kthvalue refuses "
                                  f"k = 0).\n{error}") from None
            raise
        if not torch.equal(s_in, scores):
            fail(f"{where}: wanda_mask modified the scores in place; use out-of-place operations")
        mask = expect_tensor(mask, (rows, cols), f"the mask {where}")
        if mask.dtype != torch.bool and bool(((mask == 0) | (mask == 1)).all()):
            fail(f"the mask has dtype {mask.dtype}: return a boolean keep-mask (torch.bool)\n{where}: the exercise "
                 "asks for a torch.bool keep-mask, True = keep: build it with a comparison (scores > threshold) "
                 "or torch.ones_like(scores, dtype=torch.bool), not a float 0/1 tensor.")
        mask = expect_keep_mask(mask, (rows, cols), f"the mask {where}").detach()
        reference = per_row_mask(scores, sparsity)
        if torch.equal(mask, reference):
            continue
        if torch.equal(mask, ~reference):
            fail(f"{where}: your mask is inverted: it is True for the LOWEST scores, the weights Wanda removes. A "
                 "keep-mask is True for the weights that STAY (as in torch.nn.utils.prune), and Wanda keeps the "
                 "HIGHEST scores: mask = scores > threshold.")
        if torch.equal(mask, per_matrix_mask(scores, sparsity)):
            kept = mask.float().mean(dim=1)
            r = int((kept - (cols - k) / cols).abs().argmax())
            fail(f"{where}: your mask uses one threshold for the whole matrix; Wanda ranks within each output row. "
                 f"Your mask keeps {100 * float(kept[r]):.0f}% of row {r} ({int(mask[r].sum())} of {cols}): rows of "
                 f"small scores lose most of their weights. Every row must remove its own floor({cols} * {sparsity}) "
                 f"= {k} lowest scores (topk or kthvalue along dim=1).")
        if k and torch.equal(mask, per_row_mask(scores.t().contiguous(), sparsity).t()):
            fail(f"{where}: you ranked within each COLUMN (dim=0). Wanda compares the weights of one output row "
                 f"(one neuron's inputs): rank along dim=1, the input dimension.")
        if torch.equal(mask, per_row_mask(-scores, sparsity)):
            fail(f"{where}: your mask removes the HIGHEST scores of each row; Wanda removes the lowest "
                 "(True in a keep-mask means the weight stays).")
        removed = cols - mask.sum(dim=1)
        if bool((removed == removed[0]).all()):
            r = int(removed[0])
            consistent = r in range(0, cols) and torch.equal(mask, _lowest_removed(scores, r))
            if consistent and r == k + 1:
                fail(f"{where}: off by one: you remove {r} weights per row, floor({cols} * {sparsity}) = {k} is the "
                     "target. torch.kthvalue(x, k) is 1-based (it returns the k-th smallest, which is itself one of "
                     "the k to remove): remove scores <= that value, or < the (k+1)-th; or you used ceil instead "
                     "of floor.")
            if consistent and r == k - 1:
                fail(f"{where}: off by one: you remove {r} weights per row, floor({cols} * {sparsity}) = {k} is the "
                     "target. torch.kthvalue(x, k) is 1-based: the k-th smallest is itself removed (scores <= "
                     "it), and topk(k, largest=False) already gives all k.")
            if consistent and r == cols - k:
                fail(f"{where}: you keep {k} = floor({cols} * {sparsity}) weights per row and remove {r}; sparsity is "
                     f"the fraction REMOVED: remove the {k} lowest, keep {cols - k}.")
            if consistent:
                fail(f"{where}: sparsity off target: you remove {r} of {cols} weights per row, expected "
                     f"floor({cols} * {sparsity}) = {k} (so {100 * r / cols:.0f}% instead of {100 * k / cols:.0f}%).")
            fail(f"{where}: every row removes {r} weights (expected {k}), but not the lowest scores of the row.")
        bad = [i for i in range(rows) if int(removed[i]) != k]
        if bad:
            i = bad[0]
            fail(f"{where}: rows remove different numbers of weights: row {i} keeps {int(mask[i].sum())} of {cols} "
                 f"({100 * float(mask[i].float().mean()):.0f}%); Wanda removes exactly floor({cols} * {sparsity}) = "
                 f"{k} in EVERY output row.")
        i = int((mask != reference).any(dim=1).nonzero()[0])
        dropped = [j for j in range(cols) if not mask[i, j] and reference[i, j]]
        kept = [j for j in range(cols) if mask[i, j] and not reference[i, j]]
        fail(f"{where}: row {i} removes the right number of weights but not the lowest scores: it removes column "
             f"{dropped[0]} (score {float(scores[i, dropped[0]]):.4g}) and keeps column {kept[0]} "
             f"(score {float(scores[i, kept[0]]):.4g}).")
    passed("wanda_mask removes the floor(in * sparsity) lowest scores of every output row")


def _lowest_removed(scores: torch.Tensor, r: int) -> torch.Tensor:
    __tracebackhide__ = True
    mask = torch.ones_like(scores, dtype=torch.bool)
    if r:
        mask.scatter_(1, torch.topk(scores, r, dim=1, largest=False).indices, False)
    return mask


# ---------------------------------------------------------------------------------------------
# 4. relative output error of a pruned layer
# ---------------------------------------------------------------------------------------------


@graded_check
def check_relative_output_error(fn: Callable) -> None:
    """Check ``relative_output_error(x, weight, pruned_weight)`` = ``||X W^T - X W'^T||_F / ||X W^T||_F``."""
    __tracebackhide__ = True
    name = "relative_output_error"
    gen = generator(34)
    for tokens, out_f, in_f in ((40, 6, 10), (64, 12, 8), (33, 5, 5)):
        x = torch.randn(tokens, in_f, generator=gen) * torch.logspace(-1, 1, in_f)
        weight = torch.randn(out_f, in_f, generator=gen)
        pruned = weight * per_row_mask(weight.abs(), 0.5)
        where = f"with x of shape ({tokens}, {in_f}) and a {out_f}x{in_f} weight"
        reference = relative_output_error(x, weight, pruned)

        def fail_if_in_02s_order() -> None:  # tried only once the answer is wrong: a right one runs once
            __tracebackhide__ = True
            if in_another_order(fn, (x.clone(), weight.clone(), pruned.clone()), (1, 2, 0),
                                lambda value: math.isclose(float(value), reference, rel_tol=1e-4)):
                fail(f"{where}: your arguments are in notebook 02's order, (weight, new_weight, x)\n{where}: "
                     f"{name} takes (x, weight, pruned_weight), in that order; your function computes the right "
                     "value when given the weights first.")

        try:
            result = call(fn, x.clone(), weight.clone(), pruned.clone(), name=name, returns="a Python float")
        except CheckFailed as error:
            if "not implemented" not in str(error):
                fail_if_in_02s_order()
            raise
        if isinstance(result, torch.Tensor):
            if result.numel() != 1:
                fail(f"{where}: return one number (a Python float), got a tensor of shape {tuple(result.shape)}")
            fail(f"return a Python float, not a tensor: float(value) or value.item()\n{where}: {name} returned "
                 f"a 0-d tensor ({float(result.detach()):.6g}); the exercise asks for a Python float.")
        if isinstance(result, bool) or not isinstance(result, (int, float)):
            fail(f"{where}: return a float, got {type(result).__name__}")
        result = float(result)
        if math.isclose(result, reference, rel_tol=1e-4):
            continue
        fail_if_in_02s_order()
        xd, wd, pd = x.double(), weight.double(), pruned.double()
        dense, sparse = xd @ wd.t(), xd @ pd.t()
        variants = [
            (float((dense - sparse).norm()), "that is the absolute error ||XW^T - XW'^T||; divide by ||XW^T|| to make it relative"),
            (reference**2, "that is the ratio of SQUARED norms; take the norms themselves (torch.linalg.norm / .norm())"),
            (float((wd - pd).norm() / wd.norm()), "that is the relative error of the WEIGHTS, ||W - W'|| / ||W||; the "
             "exercise asks for the error of the layer's OUTPUTS on the inputs x: ||XW^T - XW'^T|| / ||XW^T||"),
            (float(((dense - sparse).norm(dim=1) / dense.norm(dim=1)).mean()),
             "that is the mean of per-token relative errors; take the Frobenius norm over all tokens and outputs "
             "at once"),
            (float((dense - sparse).norm() / sparse.norm()), "you divide by the norm of the PRUNED output; divide by "
             "the dense output ||XW^T||"),
        ]
        diagnose(
            variants,
            lambda value: math.isclose(result, value, rel_tol=1e-4),
            describe=lambda message: f"{where}: your value {result:.6g}: {message} (expected {reference:.6g}).",
        )
        fail(f"{where}: relative_output_error returned {result:.6g}, expected "
             f"||XW^T - XW'^T||_F / ||XW^T||_F = {reference:.6g}")
    passed("relative_output_error = ||XW^T - XW'^T||_F / ||XW^T||_F")


# ---------------------------------------------------------------------------------------------
# 5. N:M masks
# ---------------------------------------------------------------------------------------------


@graded_check
def check_nm_mask(nm_mask: Callable) -> None:
    """Check ``nm_mask(scores, n, m)``: keep the ``n`` highest of every group of ``m`` consecutive
    scores along the input dimension (``pruning_course.masks.nm_mask``); a width that is not a
    multiple of ``m`` raises ``ValueError``."""
    __tracebackhide__ = True
    name = "nm_mask"
    gen = generator(35)
    cases = [((8, 16), 2, 4), ((12, 8), 2, 4), ((6, 12), 1, 4), ((5, 16), 4, 8), ((8, 24), 2, 8), ((3, 12), 1, 3)]
    for (rows, cols), n, m in cases:
        scores = torch.rand(rows, cols, generator=gen) * torch.logspace(-1, 1, cols)[torch.randperm(cols, generator=gen)]
        where = f"on {rows}x{cols} scores with {n}:{m}"
        s_in = scores.clone()
        try:
            mask = call(nm_mask, s_in, n, m, name=name, returns="a torch.bool keep-mask of the scores' shape")
        except CheckFailed as error:
            if "out of range" in str(error) or "selected index k" in str(error):
                raise CheckFailed(f"{error}\n{where}: topk(k) needs k <= the group size. Groups have M = {m} "
                                  f"consecutive weights and you keep N = {n} of each: did you swap N and M?") from None
            raise
        if not torch.equal(s_in, scores):
            fail(f"{where}: nm_mask modified the scores in place; use out-of-place operations")
        mask = expect_keep_mask(mask, (rows, cols), f"the mask {where}").detach()
        reference = reference_nm_mask(scores, n, m)
        if torch.equal(mask, reference):
            continue
        if torch.equal(mask, ~reference):
            fail(f"{where}: your mask is inverted: it is True for the LOWEST scores of each group, the weights to "
                 f"remove. A keep-mask is True for the weights that STAY: the {n} highest of each group of {m}.")
        if torch.equal(mask, reference_nm_mask(-scores, n, m)):
            fail(f"{where}: you keep the {n} LOWEST scores of each group of {m}; keep the {n} highest "
                 "(topk(..., largest=True), the default).")
        if rows % m == 0 and torch.equal(mask, reference_nm_mask(scores.t().contiguous(), n, m).t()):
            fail(f"{where}: your groups run down the columns (the OUTPUT dimension). An N:M group is M consecutive "
                 f"weights of one row, along the input dimension (what sparse tensor cores need): "
                 f"scores.reshape(out, in // {m}, {m}), then rank along the last dim.")
        strided = scores.reshape(rows, m, cols // m).transpose(1, 2)
        strided_mask = torch.zeros_like(strided, dtype=torch.bool).scatter_(2, torch.topk(strided, n, dim=2).indices, True)
        if torch.equal(mask, strided_mask.transpose(1, 2).reshape(rows, cols)):
            fail(f"{where}: your groups are not CONSECUTIVE weights: reshape(out, {m}, in // {m}) puts every "
                 f"(in/{m})-th column in one group. Use scores.reshape(out, in // {m}, {m}) and rank along the last dim.")
        for n2 in range(1, 9):
            for m2 in range(n2 + 1, 17):
                if (n2, m2) == (n, m) or cols % m2 or not torch.equal(mask, reference_nm_mask(scores, n2, m2)):
                    continue
                if (n2, m2) == (m - n, m):
                    hint = f"you PRUNE {n} of each {m}; {n}:{m} means KEEP {n} of every {m}"
                elif m2 == n or n2 == m or (m2, n2) == (m // n, 1):
                    hint = f"did you swap N and M? Groups have M = {m} consecutive weights and N = {n} of them stay"
                else:
                    hint = f"groups have M = {m} consecutive weights and N = {n} of them stay"
                fail(f"{where}: your mask keeps the {n2} highest of every {m2} consecutive weights: {hint}.")
        groups_kept = mask.reshape(rows, cols // m, m).sum(dim=2)
        if not bool((groups_kept == n).all()):
            r, g = (int(v) for v in (groups_kept != n).nonzero()[0])
            fail(f"{where}: row {r}, group {g} (columns {g * m}..{g * m + m - 1}) keeps {int(groups_kept[r, g])} "
                 f"weights; every group of {m} consecutive weights keeps exactly {n}.")
        r, g = (int(v) for v in (mask != reference).reshape(rows, cols // m, m).any(dim=2).nonzero()[0])
        fail(f"{where}: row {r}, group {g} keeps {n} weights but not the {n} highest: scores "
             f"{fmt_values(scores[r, g * m:(g + 1) * m], m)}, your mask {mask[r, g * m:(g + 1) * m].int().tolist()}, "
             f"expected {reference[r, g * m:(g + 1) * m].int().tolist()}.")

    # a width that is not a multiple of M
    scores = torch.rand(4, 10, generator=gen)
    raised, result = call_expecting_value_error(
        nm_mask, scores, 2, 4, name="nm_mask", what="nm_mask(scores of width 10, 2, 4)",
        hint=". A width that is not a multiple of M cannot be split into groups: check it first and raise ValueError "
             "with a clear message.")
    if not raised:
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        fail(f"nm_mask(scores of width 10, 2, 4) returned {shape} instead of raising ValueError: 10 input columns do "
             "not split into groups of 4; check `in_features % m` first and raise ValueError.")
    passed("nm_mask keeps the n highest of every m consecutive input weights, and rejects widths not divisible by m")
