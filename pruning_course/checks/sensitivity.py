"""Graded checks of notebook 07 (sensitivity analysis, non-uniform sparsity and OWL).

The notebook's exercises:

``sensitivity_scan(model, adapter, evaluate, sparsity)``
    prune one decoder block at a time (every linear of the block, magnitude, one threshold per
    matrix), measure ``evaluate(model)`` (a perplexity), restore the block, and return the
    perplexity *increase* over the dense model for every block
    (:func:`pruning_course.unstructured.sensitivity.layer_sensitivity`, its ``delta_ppl``).
``sensitivity_schedule(sensitivity, counts, target, spread)``
    per-block sparsities from the scan, by rank: ``u_l = rank_l / (L - 1)`` (0 = least sensitive),
    ``s_l = target - spread * (u_l - sum_l n_l u_l / sum_l n_l)``, so the parameter-weighted mean is
    ``target``; a sparsity outside (0, 1) raises ``ValueError``
    (:func:`pruning_course.unstructured.sensitivity.schedule_from_sensitivity`, ``mapping="rank"``).
``outlier_ratio(scores, M)``
    OWL's layerwise outlier ratio ``D_l``: the share of the scores of all linears of a block,
    pooled, that are strictly greater than ``M`` times their pooled mean
    (:func:`pruning_course.unstructured.owl.outlier_ratio`).
``owl_sparsities(ratios, target, lam)``
    OWL's mapping: ``u = (D - min D) / (max D - min D)``, ``s_l = target - 2 lam (u_l - mean(u))``
    (:func:`pruning_course.unstructured.owl.owl_sparsities`).

Each check calls the learner's function on seeded inputs (tiny random models for the scan),
compares with the package and, on a mismatch, recomputes the classic wrong variants to say which
mistake the learner's result matches.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..architectures import adapter_for, set_weight_matrix, weight_matrix
from ..evaluate import perplexity
from ..schedules import linear_schedule, schedule_sparsity
from ..unstructured.sensitivity import layer_sensitivity, schedule_from_sensitivity
from ..unstructured import magnitude_mask
from ..unstructured.owl import outlier_ratio as reference_outlier_ratio
from ..unstructured.owl import owl_sparsities as reference_owl_sparsities
from ..testing import tiny_random_model
from . import call, call_expecting_value_error, diagnose, fail, generator, graded_check, passed

__all__ = [
    "check_outlier_ratio",
    "check_owl_sparsities",
    "check_sensitivity_scan",
    "check_sensitivity_schedule",
]

SCAN_SEQLEN = 32


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _numbers(result, length: int, where: str, fn_name: str, what: str) -> torch.Tensor:
    """The learner's sequence of ``length`` numbers as a float64 tensor."""
    __tracebackhide__ = True
    if isinstance(result, torch.Tensor):
        values = result.detach()
        if values.numel() != length or values.dim() > 1:
            fail(f"{where}: {fn_name} should return {length} numbers ({what}), got a tensor of shape {tuple(values.shape)}")
        return values.double().flatten()
    if isinstance(result, (list, tuple)):
        if len(result) != length:
            fail(f"{where}: {fn_name} should return {length} numbers ({what}), got {len(result)}")
        try:
            return torch.tensor([float(v) for v in result], dtype=torch.float64)
        except (TypeError, ValueError):
            kinds = sorted({type(v).__name__ for v in result})
            fail(f"{where}: {fn_name} should return {length} numbers ({what}), got a {type(result).__name__} of "
                 f"{', '.join(kinds)}")
    fail(f"{where}: {fn_name} should return a list or a 1-D tensor of {length} numbers ({what}), got "
         f"{type(result).__name__}")


def _tolerance(reference: torch.Tensor) -> float:
    """Scan values come from the same forward passes as the reference: equal up to float rounding."""
    __tracebackhide__ = True
    return 1e-5 * float(reference.abs().max()) + 1e-12


def _close_enough(value: torch.Tensor, reference: torch.Tensor) -> bool:
    __tracebackhide__ = True
    return _close(value, reference, _tolerance(reference))


def _close(value: torch.Tensor, reference: torch.Tensor, atol: float) -> bool:
    __tracebackhide__ = True
    return value.shape == reference.shape and bool(torch.isfinite(value).all()) and bool(
        ((value - reference).abs() <= atol).all())


def _fmt_all(values: torch.Tensor, digits: int = 4) -> str:
    __tracebackhide__ = True
    return "[" + ", ".join(f"{float(v):.{digits}g}" for v in values) + "]"


# ---------------------------------------------------------------------------------------------
# 1. the sensitivity scan
# ---------------------------------------------------------------------------------------------


def _prune_blocks(model: nn.Module, adapter, blocks: Sequence[int], sparsity: float, how: str) -> None:
    """Prune every linear of ``blocks`` in place the way ``how`` says (the reference or a classic mistake)."""
    __tracebackhide__ = True
    for index in blocks:
        for linear in adapter.linears(adapter.blocks(model)[index]).values():
            w = weight_matrix(linear)
            if how == "row":
                keep = magnitude_mask(w, sparsity, scope="row")
            elif how == "complement":
                keep = magnitude_mask(w, 1.0 - sparsity)
            elif how == "inverted":
                keep = ~magnitude_mask(w, sparsity)
            else:
                keep = magnitude_mask(w, sparsity)
            set_weight_matrix(linear, w * keep)


def _scan(model: nn.Module, adapter, evaluate: Callable, sparsity: float, how: str = "matrix",
          cumulative: bool = False) -> list[float]:
    """Perplexities with one block pruned at a time (or blocks ``0..l`` for ``cumulative``) on a copy."""
    __tracebackhide__ = True
    results = []
    work = copy.deepcopy(model)
    for index in range(len(adapter.blocks(model))):
        if not cumulative:
            work = copy.deepcopy(model)
        _prune_blocks(work, adapter, [index], sparsity, how)
        results.append(evaluate(work))
    return results


def _changed_blocks(model: nn.Module, adapter, original: dict[str, torch.Tensor]) -> list[str]:
    __tracebackhide__ = True
    changed = []
    for name, linear in adapter.named_linears(model).items():
        if not torch.equal(weight_matrix(linear).detach(), original[name]):
            changed.append(name)
    return changed


@dataclass
class CountingEvaluator:
    """The ``evaluate(model) -> perplexity`` handed to the learner's scan, counting its calls. A plain
    object rather than a closure, so that it travels to the learner's process with the call
    (:mod:`pruning_course.grading.remote`) and comes back with its count."""

    ids: torch.Tensor
    seqlen: int
    where: str
    calls: int = 0

    def __call__(self, m: nn.Module) -> float:
        __tracebackhide__ = True
        if not isinstance(m, nn.Module):
            fail(f"{self.where}: evaluate(model) takes the model and returns its perplexity; you passed "
                 f"{type(m).__name__}")
        self.calls += 1
        return perplexity(m, self.ids, self.seqlen, progress=False).ppl


def _scan_case(fn: Callable, family: str, num_blocks: int, sparsity: float, seed: int) -> None:
    __tracebackhide__ = True
    model = tiny_random_model(family, seed=seed, num_blocks=num_blocks)
    adapter = adapter_for(model)
    ids = torch.randint(0, 384, (4 * SCAN_SEQLEN,), generator=generator(seed + 700))
    where = f"on a tiny random {family} with {num_blocks} blocks at sparsity {sparsity}"

    def evaluate(m: nn.Module) -> float:
        __tracebackhide__ = True
        return perplexity(m, ids, SCAN_SEQLEN, progress=False).ppl

    pristine = copy.deepcopy(model)
    scan = layer_sensitivity(pristine, adapter, ids, sparsity, "magnitude", "block", seqlen=SCAN_SEQLEN, progress=False)
    dense = scan[0].dense_ppl
    reference = torch.tensor([s.delta_ppl for s in scan], dtype=torch.float64)
    original = {name: weight_matrix(m).detach().clone() for name, m in adapter.named_linears(model).items()}

    counted = CountingEvaluator(ids, SCAN_SEQLEN, where)
    result = call(fn, model, adapter, counted, sparsity, name="sensitivity_scan", returns="one perplexity increase (a float) per block, in block order")
    if not counted.calls:
        fail(f"{where}: sensitivity_scan never called evaluate(model): measure the dense model once, then the model "
             "with each block pruned")
    values = _numbers(result, num_blocks, where, "sensitivity_scan", "the perplexity increase of each decoder block")
    changed = _changed_blocks(model, adapter, original)
    if _close_enough(values, reference):
        if changed:
            fail(f"{where}: your increases are right, but after the scan the model is not the dense model any more: "
                 f"{changed[0]} (and {len(changed) - 1} more) still differ from the original. Restore every "
                 "block after measuring it, the last one too, so that the caller gets back the model it passed in.")
        return

    isolated = reference + dense
    if num_blocks > 1:
        cumulative = torch.tensor(_scan(pristine, adapter, evaluate, sparsity, cumulative=True), dtype=torch.float64)
        if _close_enough(values, cumulative - dense) or _close_enough(values, cumulative):
            fail(f"{where}: you did not restore the weights: later layers were measured on an already-pruned model "
                 f"(your value for block {num_blocks - 1} is that of blocks 0..{num_blocks - 1} all pruned). "
                 "Save a COPY of each weight before pruning (w.detach().clone(): `saved = linear.weight` is the same "
                 "tensor, and pruning it in place changes the saved one too) and write it back after measuring.")
    variants = [
        (isolated, "you returned the perplexities themselves; return their increase over the dense model, "
                   "ppl_l - ppl_dense (evaluate the dense model once, before the loop)"),
        (-reference, "your signs are flipped: you return ppl_dense - ppl_l; the increase is ppl_l - ppl_dense"),
        (isolated / dense - 1.0, "you returned the relative increase ppl_l / ppl_dense - 1; the exercise asks for the "
                                 "increase itself, ppl_l - ppl_dense"),
        (torch.log(isolated / dense), "you returned log(ppl_l / ppl_dense), the increase in mean NLL; the exercise asks "
                                      "for the perplexity increase ppl_l - ppl_dense"),
        (torch.zeros_like(reference), "every increase is 0: the model you evaluated was never pruned (did you prune a "
                                      "copy of the weights, or evaluate before pruning?)"),
    ]
    diagnose(variants, lambda variant: _close_enough(values, variant), where)
    mistakes = [
        ("row", "you pruned per row (each output row loses its own share); the scan uses magnitude pruning with one "
                "threshold per weight matrix: magnitude_mask(weight, sparsity), the default scope"),
        ("inverted", "you removed the LARGEST weights: magnitude_mask returns a keep-mask (True = keep), multiply "
                     "the weight by it, do not invert it"),
    ]
    if not math.isclose(sparsity, 0.5):
        mistakes.append(("complement", f"you pruned {1 - sparsity:.0%} of each matrix instead of {sparsity:.0%}: "
                                       "the sparsity is the fraction REMOVED"))
    for how, message in mistakes:
        wrong = torch.tensor(_scan(pristine, adapter, evaluate, sparsity, how), dtype=torch.float64)
        if _close_enough(values, wrong - dense) or _close_enough(values, wrong):
            fail(f"{where}: {message}.")
    if changed:
        fail(f"{where}: you did not restore the weights: after your scan {changed[0]} (and {len(changed) - 1} more) "
             "differ from the original model, so later blocks were measured on an already-pruned model. Save a copy "
             "of every weight of the block (w.detach().clone()) and write it back after each measurement.")
    wrong = (values - reference).abs() > _tolerance(reference)
    first = int(wrong.nonzero()[0]) if bool(wrong.any()) else 0
    fail(f"{where}: block {first}: your increase is {float(values[first]):.6g}, expected "
         f"{float(reference[first]):.6g} (dense perplexity {dense:.6g}, with block {first} pruned "
         f"{float(isolated[first]):.6g}). Prune every linear of that block only (adapter.linears(block)) with "
         f"magnitude_mask(weight, {sparsity}), evaluate, restore. Expected {_fmt_all(reference)}, yours {_fmt_all(values)}.")


@graded_check
def check_sensitivity_scan(sensitivity_scan: Callable) -> None:
    """Check ``sensitivity_scan(model, adapter, evaluate, sparsity)`` on tiny random models.

    For every decoder block ``l``: prune every linear of the block with ``magnitude_mask(weight,
    sparsity)`` (one threshold per matrix), ``evaluate(model)``, restore the block; return the
    ``L`` increases ``ppl_l - ppl_dense``, where ``ppl_dense = evaluate(model)`` before any pruning.
    Compared with the package's ``layer_sensitivity`` (``delta_ppl``); the model must come back
    unchanged.
    """
    __tracebackhide__ = True
    for family, num_blocks, sparsity, seed in (("llama", 3, 0.5, 0), ("gpt2", 3, 0.4, 1), ("opt", 2, 0.6, 2)):
        _scan_case(sensitivity_scan, family, num_blocks, sparsity, seed)
    passed("sensitivity_scan prunes one block at a time, measures its perplexity increase over the dense model and "
           "restores the weights (Llama, GPT-2, OPT)")


# ---------------------------------------------------------------------------------------------
# 2. the schedule from a sensitivity scan
# ---------------------------------------------------------------------------------------------


def _ranks(values: torch.Tensor) -> torch.Tensor:
    __tracebackhide__ = True
    return torch.argsort(torch.argsort(values)).double()


def _schedule_cases(gen: torch.Generator) -> list[tuple[torch.Tensor, list[int], float, float]]:
    __tracebackhide__ = True
    cases = []
    for n, counts, target, spread in (
        (6, [100, 300, 300, 300, 300, 200], 0.6, 0.2),
        (5, [64, 640, 160, 640, 64], 0.5, 0.3),
        (8, [900] + [300] * 6 + [100], 0.7, 0.1),
    ):
        sensitivity = torch.rand(n, generator=gen, dtype=torch.float64) ** 3 * 2.0  # distinct, heavy right tail
        cases.append((sensitivity, counts, target, spread))
    return cases


def _spread_word(values: torch.Tensor) -> str:
    __tracebackhide__ = True
    return f"{float(values.max() - values.min()):.4g}"


@graded_check
def check_sensitivity_schedule(sensitivity_schedule: Callable) -> None:
    """Check ``sensitivity_schedule(sensitivity, counts, target, spread)``.

    ``u_l = rank_l / (L - 1)`` with rank 0 for the least sensitive block, ``s_l = target - spread *
    (u_l - sum n u / sum n)`` (``n``: the prunable weights per block, ``counts``): the most sensitive
    block gets the lowest sparsity, ``max s - min s = spread`` and the parameter-weighted mean is
    ``target``. Compared with ``schedule_from_sensitivity(..., mapping="rank")``; a sparsity that
    would leave (0, 1) must raise ``ValueError``.
    """
    __tracebackhide__ = True
    name = "sensitivity_schedule"
    gen = generator(71)
    for sensitivity, counts, target, spread in _schedule_cases(gen):
        where = f"for {len(counts)} blocks with counts {counts}, target {target}, spread {spread}"
        result = call(sensitivity_schedule, sensitivity.clone(), list(counts), target, spread, name=name, returns="one sparsity per block (a tensor or a list of floats)")
        values = _numbers(result, len(counts), where, name, "one sparsity per block")
        reference = schedule_from_sensitivity(sensitivity, target, spread, counts=counts, mapping="rank")
        if _close(values, reference, 1e-6):
            continue
        where += f" (sensitivities {_fmt_all(sensitivity, 3)})"
        ranks = _ranks(sensitivity)
        if not bool(torch.isfinite(values).all()):
            fail(f"{where}: your schedule contains NaN or inf: {_fmt_all(values)}")
        if bool((values <= 0).any() or (values >= 1).any()):
            fail(f"{where}: your schedule {_fmt_all(values)} has sparsities outside (0, 1). Every block's sparsity must be "
                 f"a fraction strictly between 0 and 1; with these inputs the reference stays within "
                 f"[{float(reference.min()):.3f}, {float(reference.max()):.3f}] (max - min = spread = {spread}).")
        total = schedule_sparsity(values.tolist(), counts)
        variants = [
            (linear_schedule(ranks, target, spread),
             f"your schedule's plain mean is {target}, but blocks differ in size: the model-wide sparsity is the "
             f"PARAMETER-WEIGHTED mean sum(n_l s_l) / sum(n_l) = {total:.4f} here. Centre u on its weighted mean "
             "sum(n_l u_l) / sum(n_l), not on its plain mean"),
            (2 * target - reference,
             "your schedule prunes the MORE sensitive blocks more: the block that hurt most when pruned must get the "
             "LOWEST sparsity (s = target - spread * (u - weighted mean of u), with u = 0 for the least sensitive)"),
            (2 * target - linear_schedule(ranks, target, spread),
             "your schedule prunes the MORE sensitive blocks more (the most sensitive block must get the lowest "
             "sparsity), and it centres on the plain mean of u instead of the parameter-weighted one"),
            (schedule_from_sensitivity(sensitivity, target, spread, counts=counts, mapping="linear"),
             "you min-max normalised the sensitivity VALUES; the exercise maps RANKS (u = rank / (L - 1)), which is "
             "robust to one block dominating the scan"),
            (target - spread * (ranks / len(counts) - (torch.tensor(counts, dtype=torch.float64) * ranks / len(counts)).sum()
                                / sum(counts)),
             f"you divided the ranks by L = {len(counts)}; divide by L - 1 = {len(counts) - 1} so that u runs from 0 "
             f"to 1 and max s - min s equals the spread"),
        ]
        diagnose(variants, lambda variant: _close(values, variant, 1e-6), where)
        if abs(total - target) > 1e-6:
            fail(f"{where}: the parameter-weighted mean of your schedule, sum(n_l s_l) / sum(n_l), is {total:.6f}; it "
                 f"must equal the target {target} (yours {_fmt_all(values)}, expected {_fmt_all(reference)}).")
        if abs(float(values.max() - values.min()) - spread) > 1e-6:
            fail(f"{where}: max s - min s of your schedule is {_spread_word(values)}, expected the spread {spread} "
                 f"(yours {_fmt_all(values)}, expected {_fmt_all(reference)}).")
        if not torch.equal(torch.argsort(values), torch.argsort(reference)):
            fail(f"{where}: the order of your sparsities is not the reverse of the sensitivity order: the most "
                 f"sensitive block (block {int(sensitivity.argmax())}) must get the lowest sparsity, the least "
                 f"sensitive the highest (yours {_fmt_all(values)}, expected {_fmt_all(reference)}).")
        first = int(((values - reference).abs() > 1e-6).nonzero()[0])
        fail(f"{where}: block {first} gets {float(values[first]):.6g}, expected {float(reference[first]):.6g}: "
             f"u = rank / (L - 1), s = target - spread * (u - weighted mean of u). Expected {_fmt_all(reference)}, "
             f"yours {_fmt_all(values)}.")

    # a spread that does not fit: the schedule would leave (0, 1)
    sensitivity, counts, target, spread = torch.tensor([0.3, 0.1, 0.9, 0.2], dtype=torch.float64), [4, 4, 4, 4], 0.9, 0.4
    where = f"for target {target} and spread {spread} (4 equal blocks)"
    raised, result = call_expecting_value_error(
        sensitivity_schedule, sensitivity, counts, target, spread, name=name, what=f"{where}: {name}",
        hint="; raise ValueError when a sparsity would leave (0, 1)")
    if not raised:
        try:
            shown = _fmt_all(torch.as_tensor(result, dtype=torch.float64).flatten())
        except (TypeError, ValueError, RuntimeError):
            shown = repr(result)
        fail(f"{where}: the least sensitive block would get sparsity {target} + {spread} * 1/2 = 1.1, outside (0, 1), "
             f"and your function returned {shown} instead of raising ValueError. Check the schedule before returning "
             "it and raise ValueError saying to reduce the spread.")
    passed("sensitivity_schedule: lowest sparsity for the most sensitive block, max - min = spread, "
           "parameter-weighted mean = target, ValueError outside (0, 1)")


# ---------------------------------------------------------------------------------------------
# 3. OWL's outlier ratio
# ---------------------------------------------------------------------------------------------


def _outlier_cases(gen: torch.Generator) -> list[tuple[list[torch.Tensor], float, str]]:
    """Score tensors like a block's Wanda scores (heavy-tailed, per-matrix scales), and a case with ties."""
    __tracebackhide__ = True
    cases = []
    for shapes, scales, M in (
        (((8, 12), (12, 8), (5, 12)), (1.0, 3.0, 0.3), 5.0),
        (((16, 10), (6, 16)), (1.0, 4.0), 3.0),
        (((9, 7), (7, 9), (9, 7), (7, 9)), (0.5, 1.0, 2.0, 8.0), 5.0),
    ):
        tensors = [torch.randn(*shape, generator=gen).abs() * torch.randn(shape[1], generator=gen).exp() ** 2 * scale
                   for shape, scale in zip(shapes, scales)]
        sizes = ", ".join(f"{a}x{b}" for a, b in shapes)
        cases.append((tensors, M, f"for a block of {len(shapes)} score matrices {sizes}, M = {M:g}"))
    # ties: 60 small integers summing to 132 and four entries equal to exactly M * mean = 5 * 3 = 15
    # (so ">=" finds 6 outliers, ">" the two 20s; M * median = 15 too, so the median variant is not confused with ">=")
    base = [20, 20] + [3] * 28 + [1] * 8 + [0] * 22  # 60 entries, sum 132; median of all 64 = 3
    values = torch.tensor(base + [15] * 4, dtype=torch.float32)[torch.randperm(64, generator=gen)]
    cases.append(([values[:40].reshape(5, 8), values[40:].reshape(3, 8)], 5.0,
                  "for a block of two score matrices 5x8, 3x8 whose mean is exactly 3 and four scores equal 5 * 3 = 15"))
    return cases


def _ratio_variants(tensors: list[torch.Tensor], M: float) -> list[tuple[float, str]]:
    __tracebackhide__ = True
    flat = torch.cat([t.detach().double().flatten() for t in tensors])
    n = flat.numel()
    mean = float(flat.mean())
    reference = reference_outlier_ratio(tensors, M)
    per_matrix = [float((t.double() > M * t.double().mean()).sum()) for t in tensors]
    return [
        (float((flat >= M * mean).sum()) / n,
         "you count scores >= M * mean; OWL's outliers are strictly greater (A > M * mean), so scores exactly at "
         "the threshold do not count"),
        (float((flat > M * float(flat.median())).sum()) / n,
         "your threshold is M times the MEDIAN; OWL compares with M times the MEAN of the block's scores"),
        (float((flat > M * float(flat.max())).sum()) / n,
         "your threshold is M times the MAXIMUM (nothing can exceed it); OWL compares with M times the MEAN"),
        (float((flat > mean + M * float(flat.std())).sum()) / n,
         "you used mean + M * std (a z-score); OWL's threshold is M times the mean, M * mean(A)"),
        (sum(per_matrix) / n,
         "you compared each matrix with its own mean; OWL pools every linear of the block: one mean over all "
         "their scores together (torch.cat of the flattened tensors), one ratio per block"),
        (sum(c / t.numel() for c, t in zip(per_matrix, tensors)) / len(tensors),
         "you averaged per-matrix ratios, each with its own mean; OWL pools every linear of the block: one mean "
         "over all their scores, and the share of ALL scores above M times it"),
        (float(sum(float((t.double() > M * mean).sum()) / t.numel() for t in tensors)) / len(tensors),
         "you averaged the per-matrix shares; the ratio is over all scores of the block together (matrices of "
         "different sizes weigh by their size): outliers / total number of scores"),
        (reference * n, f"you returned the NUMBER of outliers; return their share, divided by the {n} scores"),
        (100 * reference, "you returned a percentage; return a fraction between 0 and 1"),
        (float((tensors[0].double() > M * tensors[0].double().mean()).sum()) / tensors[0].numel(),
         "you used only the FIRST score matrix; OWL pools every linear of the block (torch.cat of all of them)"),
        (float((tensors[-1].double() > M * tensors[-1].double().mean()).sum()) / tensors[-1].numel(),
         "you used only the LAST score matrix (a loop that overwrites its result?); OWL pools every linear of "
         "the block"),
    ]


@graded_check
def check_outlier_ratio(outlier_ratio: Callable) -> None:
    """Check ``outlier_ratio(scores, M)`` for a list of score tensors (one block's linears).

    The share of all scores, pooled over the list, strictly greater than ``M`` times their pooled
    mean (``pruning_course.unstructured.owl.outlier_ratio``); one number, a float or a 0-d tensor.
    """
    __tracebackhide__ = True
    name = "outlier_ratio"
    gen = generator(72)
    outcomes = []
    for tensors, M, where in _outlier_cases(gen):
        inputs = [t.clone() for t in tensors]
        result = call(outlier_ratio, inputs, M, name=name, returns="one number, the share of outliers (a float)")
        if any(not torch.equal(a, b) for a, b in zip(inputs, tensors)):
            fail(f"{where}: outlier_ratio modified the scores in place; use out-of-place operations")
        if isinstance(result, torch.Tensor):
            if result.numel() != 1:
                fail(f"{where}: return ONE number for the block (a float or a 0-d tensor), got a tensor of shape "
                     f"{tuple(result.shape)}: pool the scores of all matrices and count over all of them")
            result = float(result.detach())
        if isinstance(result, bool) or not isinstance(result, (int, float)):
            fail(f"{where}: return a float, got {type(result).__name__}")
        result = float(result)
        reference = reference_outlier_ratio(tensors, M)
        outcomes.append((result, reference, _ratio_variants(tensors, M), tensors, M, where))
    wrong = [o for o in outcomes if not math.isclose(o[0], o[1], abs_tol=1e-9)]
    if wrong:
        # one number can equal several wrong answers by chance: name a mistake only if it explains the
        # learner's answer on EVERY case (equal where that mistake is wrong, right where it is harmless)
        for index, (_, message) in enumerate(wrong[0][2]):
            if all(math.isclose(result, variants[index][0], rel_tol=1e-6, abs_tol=1e-9)
                   for result, _, variants, *_ in outcomes):
                result, reference, *_, where = wrong[0]
                fail(f"{where}: your ratio is {result:.6g}, expected {reference:.6g}: {message}.")
        result, reference, _, tensors, M, where = wrong[0]
        total = sum(t.numel() for t in tensors)
        fail(f"{where}: your ratio is {result:.6g}, expected {reference:.6g} (= {round(reference * total)} of the "
             f"{total} scores are > {M:g} * their mean over all matrices together).")
    passed("outlier_ratio = share of the block's pooled scores strictly above M times their pooled mean")


# ---------------------------------------------------------------------------------------------
# 4. OWL's mapping from outlier ratios to sparsities
# ---------------------------------------------------------------------------------------------


@graded_check
def check_owl_sparsities(owl_sparsities: Callable) -> None:
    """Check ``owl_sparsities(ratios, target, lam)``: ``u = (D - min D) / (max D - min D)``,
    ``s = target - 2 lam (u - mean(u))`` (``pruning_course.unstructured.owl.owl_sparsities``)."""
    __tracebackhide__ = True
    name = "owl_sparsities"
    gen = generator(73)
    rising = torch.linspace(0.005, 0.024, 30, dtype=torch.float64)
    rising += 0.002 * torch.rand(30, generator=gen, dtype=torch.float64)
    rising[0] = 0.015  # like SmolLM2: many outliers in block 0, then rising with depth
    cases = [
        (torch.rand(12, generator=gen, dtype=torch.float64) * 0.02, 0.7, 0.08),
        (torch.tensor([0.012, 0.004, 0.009, 0.030, 0.006], dtype=torch.float64), 0.6, 0.05),
        (rising, 0.7, 0.08),
    ]
    for ratios, target, lam in cases:
        where = f"for {ratios.numel()} blocks, target {target}, lambda {lam}"
        result = call(owl_sparsities, ratios.clone(), target, lam, name=name, returns="one sparsity per block (a tensor)")
        values = _numbers(result, ratios.numel(), where, name, "one sparsity per block")
        reference = reference_owl_sparsities(ratios, target, lam)
        if _close(values, reference, 1e-6):
            continue
        where += f" (ratios {_fmt_all(ratios[:6], 3)}{' ...' if ratios.numel() > 6 else ''})"
        if not bool(torch.isfinite(values).all()):
            fail(f"{where}: your sparsities contain NaN or inf: {_fmt_all(values)}")
        u = (ratios - ratios.min()) / (ratios.max() - ratios.min())
        shifted_mean = float((target + lam - 2 * lam * u).mean())
        variants = [
            (2 * target - reference,
             "blocks with MORE outliers get HIGHER sparsity in your schedule; OWL protects them: more outliers, lower "
             "sparsity (s = target - 2 lambda (u - mean u))"),
            (target - lam * (u - u.mean()),
             f"the spread of your sparsities is lambda = {lam}; OWL's band is 2 lambda = {2 * lam:.4g} wide "
             "(s = target - 2 lambda (u - mean u))"),
            (target + lam - 2 * lam * u,
             f"your sparsities fill [target - lambda, target + lambda] but their mean is {shifted_mean:.4f}, "
             f"not the target {target}: subtract the mean of u (s = target - 2 lambda (u - mean u)), which keeps the "
             "average sparsity at the target"),
            (target - 2 * lam * (ratios - ratios.mean()),
             "you used the raw ratios; normalise them first, u = (D - min D) / (max D - min D), so that the band is "
             "2 lambda wide whatever the size of the ratios"),
        ]
        diagnose(variants, lambda variant: _close(values, variant, 1e-6), where)
        if abs(float(values.mean()) - target) > 1e-6:
            fail(f"{where}: the mean of your sparsities is {float(values.mean()):.6f}; it must equal the target {target} "
                 f"(yours {_fmt_all(values[:6])}, expected {_fmt_all(reference[:6])}).")
        if abs(float(values.max() - values.min()) - 2 * lam) > 1e-6:
            fail(f"{where}: max - min of your sparsities is {_spread_word(values)}; OWL's band is 2 lambda = {2 * lam:.4g} "
                 f"wide (yours {_fmt_all(values[:6])}, expected {_fmt_all(reference[:6])}).")
        first = int(((values - reference).abs() > 1e-6).nonzero()[0])
        fail(f"{where}: block {first} gets {float(values[first]):.6g}, expected {float(reference[first]):.6g}: "
             "u = (D - min D) / (max D - min D), s = target - 2 lambda (u - mean(u)).")
    passed("owl_sparsities: more outliers, lower sparsity; a band 2 lambda wide; mean = target")

