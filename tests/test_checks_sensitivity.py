"""The graded checks of notebook 07 (sensitivity, schedules, OWL): the reference passes, each classic
mistake gets its diagnosis."""

from __future__ import annotations

import math

import pytest
import torch

from pruning_course.architectures import set_weight_matrix, weight_matrix
from pruning_course.checks import generator
from pruning_course.checks.sensitivity import (
    _outlier_cases,
    check_outlier_ratio,
    check_owl_sparsities,
    check_sensitivity_scan,
    check_sensitivity_schedule,
)
from pruning_course.unstructured import magnitude_mask

from check_support import fails_with, not_implemented

# ---------------------------------------------------------------------------------------------
# 1. the sensitivity scan
# ---------------------------------------------------------------------------------------------


def make_scan(*, how="matrix", result="delta", restore=True, alias=False, restore_late=False, prune_copy=False):
    """A learner's scan, right by default, with one classic mistake switched on by the options."""

    def sensitivity_scan(model, adapter, evaluate, sparsity):
        dense = evaluate(model)
        values, pending = [], None
        for block in adapter.blocks(model):
            if pending is not None:  # restore_late: the previous block is restored only now
                for linear, saved in pending:
                    set_weight_matrix(linear, saved)
                pending = None
            linears = list(adapter.linears(block).values())
            saved = [weight_matrix(m) if alias else weight_matrix(m).detach().clone() for m in linears]
            for m in linears:
                w = weight_matrix(m)
                if how == "row":
                    keep = magnitude_mask(w, sparsity, scope="row")
                elif how == "inverted":
                    keep = ~magnitude_mask(w, sparsity)
                elif how == "complement":
                    keep = magnitude_mask(w, 1 - sparsity)
                else:
                    keep = magnitude_mask(w, sparsity)
                if prune_copy:
                    w = w.clone()
                    w.mul_(keep)
                else:
                    w.mul_(keep)  # in place, through the (out, in) view
            ppl = evaluate(model)
            values.append({"delta": ppl - dense, "ppl": ppl, "flipped": dense - ppl,
                           "relative": ppl / dense - 1, "log": math.log(ppl / dense)}[result])
            if restore_late:
                pending = list(zip(linears, saved))
            elif restore:
                for m, w in zip(linears, saved):
                    set_weight_matrix(m, w)
        return values

    return sensitivity_scan


def test_the_reference_scan_passes(capsys):
    check_sensitivity_scan(make_scan())
    assert "\u2713" in capsys.readouterr().out


def test_the_reference_scan_may_return_a_tensor():
    scan = make_scan()
    check_sensitivity_scan(lambda *args: torch.tensor(scan(*args)))


@pytest.mark.parametrize("options, fragments", [
    ({"alias": True}, ("you did not restore the weights: later layers were measured on an already-pruned model",
                       "clone")),
    ({"restore": False}, ("you did not restore the weights: later layers were measured on an already-pruned model",)),
    ({"restore_late": True}, ("your increases are right", "not the dense model any more", "the last one too")),
    ({"result": "ppl"}, ("you returned the perplexities themselves",)),
    ({"result": "flipped"}, ("signs are flipped",)),
    ({"result": "relative"}, ("relative increase",)),
    ({"result": "log"}, ("log(ppl_l / ppl_dense)",)),
    ({"prune_copy": True}, ("every increase is 0", "never pruned")),
    ({"how": "row"}, ("you pruned per row", "one threshold per weight matrix")),
    ({"how": "inverted"}, ("you removed the LARGEST weights",)),
    ({"how": "complement"}, ("you pruned 60% of each matrix instead of 40%", "fraction REMOVED")),
])
def test_each_scan_mistake_gets_its_diagnosis(options, fragments):
    fails_with(check_sensitivity_scan, make_scan(**options), *fragments)


def test_a_scan_that_prunes_the_wrong_layers_fails_with_the_expected_values():
    def only_attention(model, adapter, evaluate, sparsity):
        dense, values = evaluate(model), []
        for block in adapter.blocks(model):
            linears = {n: m for n, m in adapter.linears(block).items() if "attn" in n}
            saved = {n: weight_matrix(m).detach().clone() for n, m in linears.items()}
            for m in linears.values():
                set_weight_matrix(m, weight_matrix(m) * magnitude_mask(weight_matrix(m), sparsity))
            values.append(evaluate(model) - dense)
            for n, m in linears.items():
                set_weight_matrix(m, saved[n])
        return values

    fails_with(check_sensitivity_scan, only_attention, "block 0: your increase is", "expected", "adapter.linears(block)")


def test_scan_shape_and_not_implemented_messages():
    fails_with(check_sensitivity_scan, not_implemented, "not implemented yet")
    fails_with(check_sensitivity_scan, lambda model, adapter, evaluate, sparsity: [evaluate(model)], "should return 3 numbers")
    fails_with(check_sensitivity_scan, lambda model, adapter, evaluate, sparsity: [1.0, 2.0, 3.0], "never called evaluate")


def test_the_scan_check_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_sensitivity_scan(make_scan())
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------------------------
# 2. the schedule
# ---------------------------------------------------------------------------------------------


def make_schedule(*, weighted=True, flipped=False, values=False, divide_by_l=False, check_range=True, scale=1.0):
    def sensitivity_schedule(sensitivity, counts, target, spread):
        sensitivity = torch.as_tensor(sensitivity, dtype=torch.float64)
        n = torch.tensor(counts, dtype=torch.float64) if weighted else torch.ones(len(counts), dtype=torch.float64)
        if values:
            u = (sensitivity - sensitivity.min()) / (sensitivity.max() - sensitivity.min())
        else:
            ranks = torch.argsort(torch.argsort(sensitivity)).double()
            u = ranks / (len(counts) if divide_by_l else len(counts) - 1)
        offsets = u - (n * u).sum() / n.sum()
        s = target + spread * offsets if flipped else target - spread * offsets
        if check_range and (s.min() <= 0 or s.max() >= 1):
            raise ValueError("a sparsity leaves (0, 1): reduce the spread")
        return s * scale

    return sensitivity_schedule


def test_the_reference_schedule_passes(capsys):
    check_sensitivity_schedule(make_schedule())
    assert "\u2713" in capsys.readouterr().out
    check_sensitivity_schedule(lambda *args: make_schedule()(*args).tolist())  # a list is fine


@pytest.mark.parametrize("options, fragments", [
    ({"weighted": False}, ("PARAMETER-WEIGHTED mean", "plain mean")),
    ({"flipped": True}, ("prunes the MORE sensitive blocks more", "LOWEST sparsity")),
    ({"flipped": True, "weighted": False}, ("MORE sensitive blocks more", "plain mean of u")),
    ({"values": True}, ("min-max normalised the sensitivity VALUES", "RANKS")),
    ({"divide_by_l": True}, ("divided the ranks by L = 6", "L - 1 = 5")),
    ({"check_range": False}, ("instead of raising ValueError", "outside (0, 1)")),
    ({"scale": 100.0}, ("sparsities outside (0, 1)",)),
])
def test_each_schedule_mistake_gets_its_diagnosis(options, fragments):
    fails_with(check_sensitivity_schedule, make_schedule(**options), *fragments)


def test_schedule_generic_and_not_implemented_messages():
    fails_with(check_sensitivity_schedule, not_implemented, "not implemented yet")
    uniform = lambda sensitivity, counts, target, spread: [target] * len(counts)  # noqa: E731
    fails_with(check_sensitivity_schedule, uniform, "max s - min s of your schedule is 0")
    fails_with(check_sensitivity_schedule, lambda *args: [0.5, 0.5], "should return 6 numbers")


# ---------------------------------------------------------------------------------------------
# 3. the outlier ratio
# ---------------------------------------------------------------------------------------------


def make_ratio(kind="right"):
    def outlier_ratio(scores, M):
        flat = torch.cat([s.flatten().double() for s in scores])
        if kind == "right":
            return float((flat > M * flat.mean()).sum()) / flat.numel()
        if kind == ">=":
            return float((flat >= M * flat.mean()).sum()) / flat.numel()
        if kind == "median":
            return float((flat > M * flat.median()).sum()) / flat.numel()
        if kind == "max":
            return float((flat > M * flat.max()).sum()) / flat.numel()
        if kind == "zscore":
            return float((flat > flat.mean() + M * flat.std()).sum()) / flat.numel()
        if kind == "per-matrix":
            return sum(float((s > M * s.mean()).sum()) for s in scores) / flat.numel()
        if kind == "mean-of-ratios":
            return sum(float((s > M * s.mean()).float().mean()) for s in scores) / len(scores)
        if kind == "count":
            return int((flat > M * flat.mean()).sum())
        if kind == "percent":
            return 100 * float((flat > M * flat.mean()).sum()) / flat.numel()
        if kind == "per-tensor":
            return torch.tensor([float((s > M * flat.mean()).float().mean()) for s in scores])
        raise AssertionError(kind)

    return outlier_ratio


def test_the_reference_ratio_passes(capsys):
    check_outlier_ratio(make_ratio())
    assert "\u2713" in capsys.readouterr().out


def test_a_float32_ratio_passes_too():
    def float32(scores, M):
        flat = torch.cat([s.flatten() for s in scores]).float()
        return (flat > M * flat.mean()).float().mean()

    check_outlier_ratio(float32)


def test_no_score_of_the_continuous_cases_sits_on_the_threshold():
    """float32 and float64 learners must agree on every score of the random cases."""
    for tensors, M, where in _outlier_cases(generator(72))[:-1]:
        flat = torch.cat([t.flatten().double() for t in tensors])
        threshold = M * float(flat.mean())
        assert float(((flat - threshold).abs() / threshold).min()) > 1e-4, where
        assert 0 < float((flat > threshold).double().mean()) < 0.2, where


@pytest.mark.parametrize("kind, fragments", [
    (">=", ("strictly greater",)),
    ("median", ("MEDIAN",)),
    ("max", ("MAXIMUM",)),
    ("zscore", ("z-score",)),
    ("per-matrix", ("compared each matrix with its own mean", "pools every linear")),
    ("mean-of-ratios", ("averaged per-matrix ratios",)),
    ("count", ("NUMBER of outliers",)),
    ("percent", ("percentage",)),
    ("per-tensor", ("return ONE number for the block",)),
])
def test_each_ratio_mistake_gets_its_diagnosis(kind, fragments):
    fails_with(check_outlier_ratio, make_ratio(kind), *fragments)


def test_ratio_not_implemented_and_in_place():
    fails_with(check_outlier_ratio, not_implemented, "not implemented yet")

    def in_place(scores, M):
        ratio = make_ratio()(scores, M)
        scores[0].zero_()
        return ratio

    fails_with(check_outlier_ratio, in_place, "in place")


# ---------------------------------------------------------------------------------------------
# 4. OWL's mapping
# ---------------------------------------------------------------------------------------------


def make_owl(kind="right"):
    def owl_sparsities(ratios, target, lam):
        ratios = torch.as_tensor(ratios, dtype=torch.float64)
        u = (ratios - ratios.min()) / (ratios.max() - ratios.min())
        if kind == "right":
            return target - 2 * lam * (u - u.mean())
        if kind == "flipped":
            return target + 2 * lam * (u - u.mean())
        if kind == "lambda":
            return target - lam * (u - u.mean())
        if kind == "paper-interval":
            return (target + lam) - 2 * lam * u
        if kind == "raw":
            return target - 2 * lam * (ratios - ratios.mean())
        if kind == "uniform":
            return torch.full_like(ratios, target)
        raise AssertionError(kind)

    return owl_sparsities


def test_the_reference_owl_mapping_passes(capsys):
    check_owl_sparsities(make_owl())
    assert "\u2713" in capsys.readouterr().out


@pytest.mark.parametrize("kind, fragments", [
    ("flipped", ("MORE outliers get HIGHER sparsity",)),
    ("lambda", ("spread of your sparsities is lambda", "2 lambda")),
    ("paper-interval", ("but their mean is", "not the target")),
    ("raw", ("raw ratios", "normalise")),
    ("uniform", ("max - min of your sparsities is 0",)),
])
def test_each_owl_mistake_gets_its_diagnosis(kind, fragments):
    fails_with(check_owl_sparsities, make_owl(kind), *fragments)


def test_owl_not_implemented():
    fails_with(check_owl_sparsities, not_implemented, "not implemented yet")

