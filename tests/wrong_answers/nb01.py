"""Notebook 01 (why pruning): count_parameters, magnitude_mask, prunable_linears, magnitude_prune_model."""

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
from pruning_course.masks import per_row_mask

from . import CRASH, Wrong, crashes


# --- the solutions ------------------------------------------------------------------------------

def count_parameters(model, adapter, *, tied_once=True, positions=True, head_in_linears=False,
                     conv=True, biases=False):
    seen, embeddings = set(), 0
    modules = adapter.embeddings(model) if positions else adapter.embeddings(model)[:1]
    for module in modules:
        for parameter in module.parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                embeddings += parameter.numel()
    head = adapter.head(model)
    lm_head = sum(p.numel() for p in head.parameters() if id(p) not in seen or not tied_once)
    linears = [m for m in adapter.named_linears(model).values() if conv or isinstance(m, nn.Linear)]
    prunable = sum(m.weight.numel() + (m.bias.numel() if biases and m.bias is not None else 0) for m in linears)
    if head_in_linears:
        prunable += head.weight.numel()
    total = sum(p.numel() for p in model.parameters())
    return {"embeddings": embeddings, "lm_head": lm_head, "prunable_linears": prunable,
            "other": total - embeddings - lm_head - prunable, "total": total}


def magnitude_mask(weight, sparsity):
    k = int(weight.numel() * sparsity)
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(weight.abs().flatten(), k, largest=False).indices] = False
    return keep.view_as(weight)


def prunable_linears(model):
    return [(m, "weight") for block in adapter_for(model).blocks(model) for m in block.modules()
            if isinstance(m, (nn.Linear, Conv1D))]


def magnitude_prune_model(model, sparsity):
    for module, name in prunable_linears(model):
        prune.l1_unstructured(module, name, amount=sparsity)
        prune.remove(module, name)
    return model


REFERENCES = {check_count_parameters: count_parameters, check_magnitude_mask: magnitude_mask,
              check_prunable_linears: prunable_linears, check_magnitude_pruned_model: magnitude_prune_model}


# --- wrong count_parameters ---------------------------------------------------------------------

def _state_dict_total(model, adapter):
    counts = count_parameters(model, adapter)
    counts["total"] = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    counts["other"] = counts["total"] - counts["embeddings"] - counts["lm_head"] - counts["prunable_linears"]
    return counts


def _without(key):
    def learner(model, adapter):
        counts = count_parameters(model, adapter)
        del counts[key]
        return counts
    return learner


def _other_zero(model, adapter):
    return {**count_parameters(model, adapter), "other": 0}


def _counts_as_tensors(model, adapter):
    return {k: torch.tensor([v, v]) for k, v in count_parameters(model, adapter).items()}


# --- wrong magnitude masks ----------------------------------------------------------------------

def _mask_k(k_of):
    def learner(weight, sparsity):
        k = k_of(weight.numel(), sparsity)
        keep = torch.ones(weight.numel(), dtype=torch.bool)
        if k > 0:
            keep[torch.topk(weight.abs().flatten(), k, largest=False).indices] = False
        return keep.view_as(weight)
    return learner


def _kthvalue_no_k0(weight, sparsity):
    threshold = torch.kthvalue(weight.abs().flatten(), int(weight.numel() * sparsity)).values
    return weight.abs() > threshold


def _signed(weight, sparsity):
    k = int(weight.numel() * sparsity)
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.topk(weight.flatten(), k, largest=False).indices] = False  # no .abs()
    return keep.view_as(weight)


def _in_place_abs(weight, sparsity):
    weight.abs_()
    return magnitude_mask(weight, sparsity)


def _flat_mask(weight, sparsity):
    return magnitude_mask(weight, sparsity).flatten()


# --- wrong prunable_linears ---------------------------------------------------------------------

def _only_nn_linear(model):
    return [(m, "weight") for block in adapter_for(model).blocks(model) for m in block.modules()
            if isinstance(m, nn.Linear)]


def _every_linear(model):
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, Conv1D))]


def _with_embeddings(model):
    return prunable_linears(model) + [(m, "weight") for m in model.modules() if isinstance(m, nn.Embedding)]


def _twice(model):
    pairs = prunable_linears(model)
    return pairs + pairs[:2]


def _copies(model):
    return [(copy.deepcopy(m), "weight") for m, _ in prunable_linears(model)]


# --- wrong magnitude_prune_model ----------------------------------------------------------------

def _prune_each(method, remove=True, pairs=prunable_linears, **kwargs):
    def learner(model, sparsity):
        for module, name in pairs(model):
            method(module, name, **{"amount": sparsity, **kwargs})
            if remove:
                prune.remove(module, name)
        return model
    return learner


def _one_minus(model, sparsity):
    return _prune_each(prune.l1_unstructured)(model, 1 - sparsity)


def _global(model, sparsity):
    pairs = prunable_linears(model)
    prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=sparsity)
    for module, name in pairs:
        prune.remove(module, name)
    return model


def _with_head(model, sparsity):
    magnitude_prune_model(model, sparsity)
    head = adapter_for(model).head(model)
    prune.l1_unstructured(head, "weight", amount=sparsity)
    prune.remove(head, "weight")
    return model


def _with_token_embedding(model, sparsity):
    magnitude_prune_model(model, sparsity)
    embedding = adapter_for(model).embeddings(model)[0]
    prune.l1_unstructured(embedding, "weight", amount=sparsity)
    prune.remove(embedding, "weight")
    return model


@torch.no_grad()
def _per_row(model, sparsity):
    for module, _ in prunable_linears(model):
        w = weight_matrix(module)
        w.mul_(per_row_mask(w.abs(), sparsity))
    return model


@torch.no_grad()
def _mask_reshaped_for_conv1d(model, sparsity):
    for module, _ in prunable_linears(model):
        mask = magnitude_mask(weight_matrix(module), sparsity)  # (out, in)
        module.weight.mul_(mask.reshape(module.weight.shape))  # GPT-2's Conv1D stores (in, out): needs mask.T
    return model


def _on_a_copy(model, sparsity):
    magnitude_prune_model(copy.deepcopy(model), sparsity)
    return model


WRONG = [
    Wrong(check_count_parameters, "total from state_dict (tied head twice)", _state_dict_total, r"counts it twice"),
    Wrong(check_count_parameters, "tied lm_head counted again",
          lambda m, a: count_parameters(m, a, tied_once=False), r"tied to the token embedding"),
    Wrong(check_count_parameters, "position embeddings forgotten",
          lambda m, a: count_parameters(m, a, positions=False), r"position embeddings are missing"),
    Wrong(check_count_parameters, "lm_head counted as prunable",
          lambda m, a: count_parameters(m, a, head_in_linears=True), r"lm_head is counted as prunable"),
    Wrong(check_count_parameters, "GPT-2 Conv1D not counted",
          lambda m, a: count_parameters(m, a, conv=False), r"Conv1D layers are missing"),
    Wrong(check_count_parameters, "biases counted as prunable",
          lambda m, a: count_parameters(m, a, biases=True), r"biases are counted as prunable"),
    Wrong(check_count_parameters, "no 'other' key", _without("other"), r"lacks the key\(s\) \['other'\]"),
    Wrong(check_count_parameters, "other = 0: parts do not add up", _other_zero, r"parts add up to"),
    Wrong(check_count_parameters, "counts as 2-element tensors", _counts_as_tensors, r"should be one number"),
    Wrong(check_count_parameters, "crashes inside torch", crashes(), CRASH),

    Wrong(check_magnitude_mask, "per-row threshold", lambda w, s: per_row_mask(w.abs(), s), r"per-row pruning"),
    Wrong(check_magnitude_mask, "per-column threshold", lambda w, s: per_row_mask(w.abs().t(), s).t(),
          r"per-column pruning"),
    Wrong(check_magnitude_mask, "signed value, no abs", _signed, r"most NEGATIVE weights"),
    Wrong(check_magnitude_mask, "inverted mask", lambda w, s: ~magnitude_mask(w, s), r"inverted"),
    Wrong(check_magnitude_mask, "ceil: one too many", _mask_k(lambda n, s: -int(-n * s // 1)), r"one too many"),
    Wrong(check_magnitude_mask, "one too few", _mask_k(lambda n, s: max(int(n * s) - 1, 0)), r"one too few"),
    Wrong(check_magnitude_mask, "1 - sparsity", _mask_k(lambda n, s: int(n * (1 - s))), r"1 - sparsity"),
    Wrong(check_magnitude_mask, "float 0/1 mask", lambda w, s: magnitude_mask(w, s).float(), r"expected torch.bool"),
    Wrong(check_magnitude_mask, "returns the pruned weight", lambda w, s: w * magnitude_mask(w, s),
          r"pruned weight, not the mask"),
    Wrong(check_magnitude_mask, "k = 0 not handled (kthvalue)", _kthvalue_no_k0, r"k = 0 is not handled"),
    Wrong(check_magnitude_mask, "abs_() in place", _in_place_abs, r"changed the weight it was given"),
    Wrong(check_magnitude_mask, "flattened mask", _flat_mask, r"reshape it to the weight's shape"),
    Wrong(check_magnitude_mask, "crashes inside torch", crashes(), CRASH),

    Wrong(check_prunable_linears, "only nn.Linear (no Conv1D)", _only_nn_linear, r"Conv1D layers are missing"),
    Wrong(check_prunable_linears, "every linear incl. lm_head", _every_linear, r"lm_head is included"),
    Wrong(check_prunable_linears, "embeddings too", _with_embeddings, r"embeddings are included"),
    Wrong(check_prunable_linears, "bare modules", lambda m: [p[0] for p in prunable_linears(m)], r"bare module"),
    Wrong(check_prunable_linears, "(name, module) pairs",
          lambda m: [(n, mod) for n, mod in adapter_for(m).named_linears(m).items()], r"the module comes first"),
    Wrong(check_prunable_linears, "'bias' instead of 'weight'", lambda m: [(p[0], "bias") for p in prunable_linears(m)],
          r"names the parameter 'bias'"),
    Wrong(check_prunable_linears, "some listed twice", _twice, r"more than once"),
    Wrong(check_prunable_linears, "copies of the modules", _copies, r"not part of the model"),
    Wrong(check_prunable_linears, "a dict", lambda m: dict(adapter_for(m).named_linears(m)), r"list of \(module, 'weight'\) pairs"),
    Wrong(check_prunable_linears, "first block only",
          lambda m: [(x, "weight") for x in adapter_for(m).blocks(m)[0].modules() if isinstance(x, (nn.Linear, Conv1D))],
          r"prunable linear\(s\) are missing"),

    Wrong(check_magnitude_pruned_model, "forgot prune.remove", _prune_each(prune.l1_unstructured, remove=False),
          r"prune state is still attached"),
    Wrong(check_magnitude_pruned_model, "random_unstructured", _prune_each(prune.random_unstructured),
          r"random_unstructured"),
    Wrong(check_magnitude_pruned_model, "ln_structured", _prune_each(prune.ln_structured, n=1, dim=0),
          r"structured pruning"),
    Wrong(check_magnitude_pruned_model, "amount = 1 - sparsity", _one_minus, r"removed 1 - sparsity"),
    Wrong(check_magnitude_pruned_model, "global threshold", _global, r"pruned globally"),
    Wrong(check_magnitude_pruned_model, "lm_head pruned too", _with_head, r"you pruned lm_head"),
    Wrong(check_magnitude_pruned_model, "token embedding pruned", _with_token_embedding, r"you pruned an embedding"),
    Wrong(check_magnitude_pruned_model, "nn.Linear only", _prune_each(prune.l1_unstructured, pairs=_only_nn_linear),
          r"Conv1D layers were not pruned"),
    Wrong(check_magnitude_pruned_model, "per-row thresholds", _per_row, r"one threshold per output row"),
    Wrong(check_magnitude_pruned_model, "Conv1D mask reshaped, not transposed", _mask_reshaped_for_conv1d,
          r"stores \(in, out\)"),
    Wrong(check_magnitude_pruned_model, "pruned a copy", _on_a_copy, r"prune a copy"),
    Wrong(check_magnitude_pruned_model, "crashes inside torch", crashes(), CRASH),
]
