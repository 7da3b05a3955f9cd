"""The checks of notebook 01: the reference passes, each classic mistake fails with its own message."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune

from pruning_course.architectures import Conv1D, adapter_for, weight_matrix
from pruning_course.checks.why_pruning import (
    check_count_parameters,
    check_magnitude_mask,
    check_magnitude_pruned_model,
    check_prunable_linears,
)
from pruning_course.inventory import parameter_counts, prune_parameters
from pruning_course.masks import num_to_prune
from pruning_course.unstructured import magnitude_mask, prune_magnitude

from check_support import fails_matching as fails_with
from check_support import not_implemented


# ---------------------------------------------------------------------------------------------
# count_parameters
# ---------------------------------------------------------------------------------------------


def test_count_parameters_reference_passes(capsys):
    check_count_parameters(parameter_counts)
    assert capsys.readouterr().out.startswith("\u2713")


def test_count_parameters_not_implemented():
    fails_with(check_count_parameters, not_implemented, "not implemented yet")


def _counts_with(**changes):
    def count(model, adapter):
        counts = parameter_counts(model, adapter)
        for key, fn in changes.items():
            counts[key] = fn(model, adapter, counts)
        return counts
    return count


def test_count_parameters_state_dict_double_counts_tied_weights():
    def count(model, adapter):
        counts = parameter_counts(model, adapter)
        counts["total"] = sum(p.numel() for n, p in model.state_dict().items() if "weight" in n or "bias" in n)
        return counts
    fails_with(check_count_parameters, count, "counts it twice")


def test_count_parameters_tied_head_counted_again():
    wrong = _counts_with(lm_head=lambda m, a, c: a.head(m).weight.numel())
    fails_with(check_count_parameters, wrong, r"tied.*'lm_head'.* is 0 here")


def test_count_parameters_untied_head_ignored():
    wrong = _counts_with(lm_head=lambda m, a, c: 0,
                         other=lambda m, a, c: c["other"] + c["lm_head"])
    fails_with(check_count_parameters, wrong, "NOT tied")


def test_count_parameters_lm_head_as_prunable():
    def prunable(model, adapter, counts):
        return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, Conv1D)))
    fails_with(check_count_parameters, _counts_with(prunable_linears=prunable), "lm_head is counted as prunable")


def test_count_parameters_biases_as_prunable():
    def prunable(model, adapter, counts):
        return sum(p.numel() for m in adapter.named_linears(model).values() for p in m.parameters())
    fails_with(check_count_parameters, _counts_with(prunable_linears=prunable), "biases are counted as prunable")


def test_count_parameters_conv1d_missing():
    def prunable(model, adapter, counts):
        return sum(m.weight.numel() for m in adapter.named_linears(model).values() if isinstance(m, nn.Linear))
    fails_with(check_count_parameters, _counts_with(prunable_linears=prunable), "Conv1D layers are missing")


def test_count_parameters_position_embeddings_missing():
    wrong = _counts_with(embeddings=lambda m, a, c: a.embeddings(m)[0].weight.numel())
    fails_with(check_count_parameters, wrong, "position embeddings are missing")


def test_count_parameters_parts_do_not_add_up():
    fails_with(check_count_parameters, _counts_with(other=lambda m, a, c: 0), "parts add up to")


def test_count_parameters_missing_key_and_wrong_type():
    fails_with(check_count_parameters, lambda m, a: {"total": 1}, "lacks the key")
    fails_with(check_count_parameters, lambda m, a: [1, 2, 3], "should return a dict")
    fails_with(check_count_parameters, _counts_with(total=lambda m, a, c: "many"), "should be an int")


def test_count_parameters_accepts_tensor_counts():
    check_count_parameters(_counts_with(total=lambda m, a, c: torch.tensor(c["total"])))


# ---------------------------------------------------------------------------------------------
# magnitude_mask
# ---------------------------------------------------------------------------------------------


def ref_mask(weight, sparsity):
    return magnitude_mask(weight, sparsity)


def kthvalue_mask(weight, sparsity):
    k = int(weight.numel() * sparsity)
    if k == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    threshold = torch.kthvalue(weight.abs().flatten(), k).values
    return weight.abs() > threshold


def kthvalue_mask_without_k0(weight, sparsity):
    threshold = torch.kthvalue(weight.abs().flatten(), int(weight.numel() * sparsity)).values
    return weight.abs() > threshold


def test_magnitude_mask_unhandled_k0_is_named():
    fails_with(check_magnitude_mask, kthvalue_mask_without_k0, r"k = 0 is not handled(.|\n)*line \d+ of your code(.|\n)*\(3, 5\)")


def test_magnitude_mask_references_pass(capsys):
    check_magnitude_mask(ref_mask)
    check_magnitude_mask(kthvalue_mask)
    check_magnitude_mask(ref_mask, seed=7, cases=[(3, 5, 0.4), (12, 7, 0.65)])
    assert capsys.readouterr().out.count("\u2713") == 3


def test_magnitude_mask_not_implemented():
    fails_with(check_magnitude_mask, not_implemented, "not implemented yet")


def test_magnitude_mask_inverted():
    fails_with(check_magnitude_mask, lambda w, s: ~magnitude_mask(w, s), "inverted.*True where the weight is KEPT")


def test_magnitude_mask_per_row():
    fails_with(check_magnitude_mask, lambda w, s: magnitude_mask(w, s, scope="row"), "per-row")


def test_magnitude_mask_per_column():
    fails_with(check_magnitude_mask, lambda w, s: magnitude_mask(w.t(), s, scope="row").t(), "per-column")


def test_magnitude_mask_signed():
    def signed(weight, sparsity):
        k = int(weight.numel() * sparsity)
        return weight > torch.kthvalue(weight.flatten(), k).values
    fails_with(check_magnitude_mask, signed, r"NEGATIVE.*\|w\|")


def test_magnitude_mask_off_by_one_too_many():
    def sorted_index_k(weight, sparsity):
        k = int(weight.numel() * sparsity)
        threshold = weight.abs().flatten().sort().values[k]
        return weight.abs() > threshold
    fails_with(check_magnitude_mask, sorted_index_k, "one too many")


def test_magnitude_mask_round_instead_of_floor():
    def rounded(weight, sparsity):
        k = round(weight.numel() * sparsity)
        mask = torch.ones(weight.numel(), dtype=torch.bool)
        mask[torch.topk(weight.abs().flatten(), k, largest=False).indices] = False
        return mask.view_as(weight)
    fails_with(check_magnitude_mask, rounded, r"one too many.*round\(\)")


def test_magnitude_mask_off_by_one_too_few():
    def ge_kth(weight, sparsity):
        k = int(weight.numel() * sparsity)
        return weight.abs() >= torch.kthvalue(weight.abs().flatten(), k).values
    fails_with(check_magnitude_mask, ge_kth, "one too few")


def test_magnitude_mask_one_minus_sparsity_exact():
    def keep_fraction(weight, sparsity):
        k = num_to_prune(weight.numel(), sparsity)
        mask = torch.zeros(weight.numel(), dtype=torch.bool)
        mask[torch.topk(weight.abs().flatten(), k).indices] = True  # keeps k: removes numel - k
        return mask.view_as(weight)
    fails_with(check_magnitude_mask, keep_fraction, "1 - sparsity")


def test_magnitude_mask_float_mask():
    fails_with(check_magnitude_mask, lambda w, s: magnitude_mask(w, s).float(), "expected torch.bool")


def test_magnitude_mask_returns_pruned_weight():
    fails_with(check_magnitude_mask, lambda w, s: w * magnitude_mask(w, s), "pruned weight, not the mask")


def test_magnitude_mask_transposed_and_flat():
    fails_with(check_magnitude_mask, lambda w, s: magnitude_mask(w, s).t(), "transpose")
    fails_with(check_magnitude_mask, lambda w, s: magnitude_mask(w, s).flatten(), "reshape")


def test_magnitude_mask_in_place():
    def in_place(weight, sparsity):
        mask = magnitude_mask(weight, sparsity)
        weight.abs_()
        return mask
    fails_with(check_magnitude_mask, in_place, "changed the weight")


def test_magnitude_mask_right_count_wrong_weights():
    def random_mask(weight, sparsity):
        k = int(weight.numel() * sparsity)
        mask = torch.ones(weight.numel(), dtype=torch.bool)
        mask[torch.randperm(weight.numel(), generator=torch.Generator().manual_seed(0))[:k]] = False
        return mask.view_as(weight)
    fails_with(check_magnitude_mask, random_mask, "right number.*not the smallest.*first difference")


# ---------------------------------------------------------------------------------------------
# prunable_linears
# ---------------------------------------------------------------------------------------------


def ref_prunable_linears(model):
    return prune_parameters(model, adapter_for(model))


def test_prunable_linears_reference_passes(capsys):
    check_prunable_linears(ref_prunable_linears)
    assert capsys.readouterr().out.startswith("\u2713")


def test_prunable_linears_not_implemented():
    fails_with(check_prunable_linears, not_implemented, "not implemented yet")


def test_prunable_linears_lm_head_included():
    every_linear = lambda model: [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, Conv1D))]  # noqa: E731
    fails_with(check_prunable_linears, every_linear, "lm_head is included.*tied")


def test_prunable_linears_embeddings_included():
    def with_embeddings(model):
        return ref_prunable_linears(model) + [(m, "weight") for m in model.modules() if isinstance(m, nn.Embedding)]
    fails_with(check_prunable_linears, with_embeddings, "embeddings are included")


def test_prunable_linears_conv1d_missing():
    def linear_only(model):
        return [(m, "weight") for n, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in n]
    fails_with(check_prunable_linears, linear_only, "Conv1D layers are missing.*not an nn.Linear")


def test_prunable_linears_malformed_entries():
    fails_with(check_prunable_linears, lambda m: [p for p, _ in ref_prunable_linears(m)], "bare module")
    fails_with(check_prunable_linears, lambda m: [(p, "bias") for p, _ in ref_prunable_linears(m)], "'bias'")
    fails_with(check_prunable_linears, lambda m: [(n, "weight") for n in adapter_for(m).named_linears(m)],
               "a name")
    fails_with(check_prunable_linears, lambda m: {"a": 1}, "list of")
    fails_with(check_prunable_linears, lambda m: [(copy.deepcopy(p), w) for p, w in ref_prunable_linears(m)],
               "not part of the model")


def test_prunable_linears_duplicates_and_missing():
    fails_with(check_prunable_linears, lambda m: ref_prunable_linears(m) * 2, "more than once")
    fails_with(check_prunable_linears, lambda m: ref_prunable_linears(m)[1:], "missing")


def test_prunable_linears_accepts_tuple_and_generator():
    check_prunable_linears(lambda m: tuple(ref_prunable_linears(m)))
    check_prunable_linears(lambda m: (pair for pair in ref_prunable_linears(m)))


# ---------------------------------------------------------------------------------------------
# magnitude_prune_model
# ---------------------------------------------------------------------------------------------


def torch_prune_model(model, sparsity):
    for module, name in ref_prunable_linears(model):
        prune.l1_unstructured(module, name, amount=sparsity)
        prune.remove(module, name)


def test_magnitude_prune_model_references_pass(capsys):
    check_magnitude_pruned_model(torch_prune_model)
    check_magnitude_pruned_model(lambda model, s: prune_magnitude(model, adapter_for(model), s))
    assert capsys.readouterr().out.count("\u2713") == 2


def test_magnitude_prune_model_not_implemented():
    fails_with(check_magnitude_pruned_model, not_implemented, "not implemented yet")


def test_magnitude_prune_model_forgot_remove():
    def no_remove(model, sparsity):
        for module, name in ref_prunable_linears(model):
            prune.l1_unstructured(module, name, amount=sparsity)
    fails_with(check_magnitude_pruned_model, no_remove, r"prune\.remove")


def test_magnitude_prune_model_lm_head_pruned():
    def with_head(model, sparsity):
        torch_prune_model(model, sparsity)
        prune.l1_unstructured(model.lm_head, "weight", amount=sparsity)
        prune.remove(model.lm_head, "weight")
    fails_with(check_magnitude_pruned_model, with_head, "you pruned lm_head")


def test_magnitude_prune_model_conv1d_skipped():
    def linear_only(model, sparsity):
        for module, name in ref_prunable_linears(model):
            if isinstance(module, nn.Linear):
                prune.l1_unstructured(module, name, amount=sparsity)
                prune.remove(module, name)
    fails_with(check_magnitude_pruned_model, linear_only, "Conv1D layers were not pruned")


def test_magnitude_prune_model_global():
    def global_pruning(model, sparsity):
        pairs = ref_prunable_linears(model)
        prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=sparsity)
        for module, name in pairs:
            prune.remove(module, name)
    fails_with(check_magnitude_pruned_model, global_pruning, "pruned globally")


def test_magnitude_prune_model_structured():
    def structured(model, sparsity):
        for module, name in ref_prunable_linears(model):
            prune.ln_structured(module, name, amount=sparsity, n=1, dim=0)
            prune.remove(module, name)
    fails_with(check_magnitude_pruned_model, structured, "structured pruning")


def test_magnitude_prune_model_one_minus_sparsity():
    fails_with(check_magnitude_pruned_model, lambda m, s: torch_prune_model(m, 1 - s), "1 - sparsity")


def test_magnitude_prune_model_random():
    def random_pruning(model, sparsity):
        for module, name in ref_prunable_linears(model):
            prune.random_unstructured(module, name, amount=sparsity)
            prune.remove(module, name)
    fails_with(check_magnitude_pruned_model, random_pruning, "smallest magnitudes")


def test_magnitude_prune_model_biases_pruned():
    def with_biases(model, sparsity):
        for module, _ in ref_prunable_linears(model):
            for name in ("weight", "bias"):
                if getattr(module, name, None) is not None:
                    prune.l1_unstructured(module, name, amount=sparsity)
                    prune.remove(module, name)
    fails_with(check_magnitude_pruned_model, with_biases, "biases and norms stay")


def test_magnitude_prune_model_on_a_copy():
    fails_with(check_magnitude_pruned_model, lambda m, s: torch_prune_model(copy.deepcopy(m), s), "nothing was pruned")


def test_magnitude_prune_model_rescaled_weights():
    def rescale(model, sparsity):
        torch_prune_model(model, sparsity)
        with torch.no_grad():
            for module, _ in ref_prunable_linears(model):
                weight_matrix(module).mul_(2.0)
    fails_with(check_magnitude_pruned_model, rescale, "should be kept changed value")


# ---------------------------------------------------------------------------------------------
# the reference (pruning_course.inventory) and the check's own inputs
# ---------------------------------------------------------------------------------------------


def test_mask_cases_are_free_of_float_noise():
    """int(numel * sparsity), the notebook's hint, must equal the reference count on every case used."""
    from pruning_course.checks.why_pruning import MASK_CASES

    hidden = [(12, 7, 0.65), (11, 17, 0.35), (1, 50, 0.5), (50, 1, 0.2), (3, 5, 0.4)]
    for rows, cols, sparsity in MASK_CASES + hidden:
        assert int(rows * cols * sparsity) == num_to_prune(rows * cols, sparsity)


def test_parameter_counts_and_breakdown_add_up(tiny):
    from pruning_course.inventory import parameter_breakdown

    model, adapter, _ = tiny
    counts = parameter_counts(model, adapter)
    total = sum(p.numel() for p in model.parameters())
    assert counts["total"] == total
    assert counts["embeddings"] + counts["lm_head"] + counts["prunable_linears"] + counts["other"] == total
    assert counts["lm_head"] == 0  # every tiny model ties its head to the token embeddings
    assert counts["prunable_linears"] == sum(weight_matrix(m).numel() for m in adapter.named_linears(model).values())
    parts = parameter_breakdown(model, adapter)
    assert sum(parts.values()) == total
    assert parts["embeddings"] == counts["embeddings"]
    assert parts["attention"] + parts["mlp"] >= counts["prunable_linears"]  # plus the linears' biases


def test_prune_parameters_are_the_named_linears(tiny):
    model, adapter, _ = tiny
    pairs = prune_parameters(model, adapter)
    assert [m for m, _ in pairs] == list(adapter.named_linears(model).values())
    assert {name for _, name in pairs} == {"weight"}
