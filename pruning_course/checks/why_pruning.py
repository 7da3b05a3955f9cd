"""Checks of notebook 01 (why prune, magnitude pruning).

* :func:`check_count_parameters`: parameters by role, tied weights counted once;
* :func:`check_magnitude_mask`: per-matrix magnitude keep-mask of one weight matrix;
* :func:`check_prunable_linears`: the ``(module, "weight")`` pairs for ``torch.nn.utils.prune``;
* :func:`check_magnitude_pruned_model`: a whole model pruned with ``l1_unstructured`` + ``remove``.

Every check runs the learner's function on its own seeded inputs and tiny models (never on the
notebook's model), compares with the package reference (:mod:`pruning_course.inventory`,
:func:`pruning_course.unstructured.magnitude_mask`) and names the likely mistake on a mismatch.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from pruning_course.architectures import TRANSPOSED_LINEAR, as_stored, stores_transposed, adapter_for
from pruning_course.testing import TINY_FAMILIES, tiny_model, tiny_random_model, tiny_tokenizer
from pruning_course.inventory import PARAMETER_ROLES, parameter_counts
from pruning_course.masks import num_to_prune, per_matrix_mask, per_row_mask
from pruning_course.unstructured import magnitude_mask

from . import CheckFailed, call, expect_tensor, fail, generator, graded_check, passed

__all__ = [
    "check_count_parameters",
    "check_magnitude_mask",
    "check_prunable_linears",
    "check_magnitude_pruned_model",
]

SHORT = TRANSPOSED_LINEAR.rpartition(".")[2]  # the class name, as a learner sees it


# ---------------------------------------------------------------------------------------------
# Tiny models
# ---------------------------------------------------------------------------------------------

_TOKENIZER = None


def _tokenizer():
    __tracebackhide__ = True
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = tiny_tokenizer()
    return _TOKENIZER


def _tiny(family: str, seed: int = 0) -> nn.Module:
    __tracebackhide__ = True
    model, _ = tiny_model(family, seed=seed, tokenizer=_tokenizer())
    return model


def _untied_llama(seed: int = 0) -> nn.Module:
    """A tiny Llama whose ``lm_head`` is its own matrix (``tie_word_embeddings=False``)."""
    __tracebackhide__ = True
    return tiny_random_model("llama", seed=seed, vocab_size=len(_tokenizer()), tie_word_embeddings=False)


def _label(family: str) -> str:
    __tracebackhide__ = True
    return f"tiny-{family}"


def _is_tied(model: nn.Module, adapter) -> bool:
    __tracebackhide__ = True
    head = adapter.head(model)
    embedding_ids = {id(p) for m in adapter.embeddings(model) for p in m.parameters()}
    return head is not None and any(id(p) in embedding_ids for p in head.parameters())


# ---------------------------------------------------------------------------------------------
# count_parameters
# ---------------------------------------------------------------------------------------------


def _as_count(value, key: str, label: str) -> int:
    __tracebackhide__ = True
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            fail(f"on {label}, counts['{key}'] should be one number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not (isinstance(value, (int, float)) or hasattr(value, "__index__")):
        fail(f"on {label}, counts['{key}'] should be an int, got {type(value).__name__}: {value!r:.80}")
    if float(value) != int(value):
        fail(f"on {label}, counts['{key}'] should be a whole number of parameters, got {value!r}")
    return int(value)


def _count_facts(model: nn.Module, adapter) -> dict:
    __tracebackhide__ = True
    head = adapter.head(model)
    embeddings = adapter.embeddings(model)
    linears = adapter.named_linears(model).values()
    return {
        "tied": _is_tied(model, adapter),
        "head": head.weight.numel() if head is not None else 0,
        "positions": sum(m.weight.numel() for m in embeddings[1:]),
        "embeddings": sum(p.numel() for m in embeddings for p in m.parameters()),
        "biases": sum(m.bias.numel() for m in linears if getattr(m, "bias", None) is not None),
        "transposed": sum(m.weight.numel() for m in linears if stores_transposed(m)),
    }


def _explain_count(key: str, got: int, expected: int, facts: dict, label: str) -> str:
    """The likely mistake behind ``counts[key] == got`` when ``expected`` was right ('' if none fits)."""
    __tracebackhide__ = True
    head = facts["head"]
    tie = (f"in {label} lm_head is tied to the token embedding (model.lm_head.weight is the embedding's "
           "weight): one tensor, to be counted once, as embeddings")
    # (difference from the right answer, what it means); up to two may combine
    candidates: list[tuple[int, str]] = []
    if key == "embeddings":
        candidates.append((-facts["positions"], "the learned position embeddings are missing (GPT-2's wpe and "
                           "OPT's embed_positions are embeddings too: use adapter.embeddings(model))"))
        candidates.append((head, tie + "; you added it a second time" if facts["tied"] else
                           "the untied lm_head has its own key: count it under 'lm_head', not 'embeddings'"))
    elif key == "lm_head":
        if facts["tied"]:
            candidates.append((head, tie + ", so 'lm_head' (what the head adds) is 0 here"))
        else:
            candidates.append((-head, f"in {label} lm_head is NOT tied (tie_word_embeddings=False): it is a "
                               "separate matrix, and its parameters belong under 'lm_head'"))
    elif key == "prunable_linears":
        candidates += [
            (head, "lm_head is counted as prunable: it lives outside the decoder blocks and stays dense"),
            (facts["embeddings"], "the embeddings are counted as prunable: they stay dense"),
            (facts["biases"], "the linears' biases are counted as prunable: only their weight matrices are "
             "pruned (biases belong under 'other')"),
            (-facts["transposed"], f"GPT-2's {SHORT} layers are missing: its attention and MLP use "
             f"{TRANSPOSED_LINEAR}, which is not an nn.Linear (use adapter.named_linears)"),
        ]
    elif key == "total" and facts["tied"]:
        candidates.append((head, tie + "; your total counts it twice (state_dict() and a walk over the "
                           "modules list it under both names; model.parameters() yields it once)"))
    for size in (1, 2):
        for combo in itertools.combinations(candidates, size):
            delta = sum(d for d, _ in combo)
            if delta != 0 and got == expected + delta:
                return "; and ".join(text for _, text in combo)
    return ""


@graded_check
def check_count_parameters(count_parameters) -> None:
    """``count_parameters(model, adapter)`` must return :func:`~pruning_course.inventory.parameter_counts`."""
    __tracebackhide__ = True
    cases = [(_label(f), _tiny(f)) for f in TINY_FAMILIES]
    cases.append(("tiny-llama-untied", _untied_llama()))
    for label, model in cases:
        adapter = adapter_for(model)
        expected = parameter_counts(model, adapter)
        got = call(count_parameters, model, adapter, name="count_parameters", returns="a dict with the keys embeddings, lm_head, prunable_linears, other, total")
        if not isinstance(got, Mapping):
            fail(f"count_parameters should return a dict with keys {list(PARAMETER_ROLES)}, got {type(got).__name__}")
        missing = [k for k in PARAMETER_ROLES if k not in got]
        if missing:
            fail(f"the dict returned by count_parameters lacks the key(s) {missing}; expected keys {list(PARAMETER_ROLES)}")
        counts = {k: _as_count(got[k], k, label) for k in PARAMETER_ROLES}
        facts = _count_facts(model, adapter)
        for key in ("lm_head", "embeddings", "prunable_linears", "total"):
            if counts[key] != expected[key]:
                why = _explain_count(key, counts[key], expected[key], facts, label)
                fail(f"on {label}, counts['{key}'] is {counts[key]:,}, expected {expected[key]:,}"
                     + (f": {why}" if why else ""))
        parts = sum(counts[k] for k in PARAMETER_ROLES if k != "total")
        if parts != counts["total"]:
            fail(
                f"on {label}, the parts add up to {parts:,} but the total is {counts['total']:,}: every "
                "parameter has exactly one role; 'other' is what remains (norms, biases), i.e. total minus "
                f"the other parts = {expected['other']:,}"
            )
        if counts != expected:  # unreachable when the four keys above match, kept as a safety net
            fail(f"on {label}, expected {expected}, got {counts}")
    passed("count_parameters matches the reference on tiny llama, gpt2, opt (tied lm_head) and an untied llama")


# ---------------------------------------------------------------------------------------------
# magnitude_mask
# ---------------------------------------------------------------------------------------------

# (rows, cols, sparsity): odd and non-square shapes; several where numel * sparsity is not whole,
# so that round() / ceil() differ from the floor the target uses.
# (3, 5, 0.05): floor(15 * 0.05) = 0, nothing to remove ("handle k = 0": torch.kthvalue refuses k = 0).
MASK_CASES = [(16, 16, 0.3), (7, 13, 0.5), (32, 10, 0.77), (10, 32, 0.9), (48, 64, 0.5), (5, 9, 0.1), (9, 20, 0.25),
              (3, 5, 0.05)]


def _test_weight(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """Mixed signs, rows and columns on different scales (so per-row, per-column and per-matrix differ)."""
    __tracebackhide__ = True
    base = torch.randn(rows, cols, generator=gen)
    row_scale = torch.exp(0.8 * torch.randn(rows, 1, generator=gen))
    col_scale = torch.exp(0.8 * torch.randn(1, cols, generator=gen))
    return base * row_scale * col_scale


def _ordered(weight: torch.Tensor, keep: torch.Tensor) -> bool:
    """True when every removed |w| is at most every kept |w| (the mask is a threshold on |w|)."""
    __tracebackhide__ = True
    magnitudes = weight.abs()
    if keep.all() or (~keep).all():
        return True
    return bool(magnitudes[~keep].max() <= magnitudes[keep].min())


def _first_mask_difference(got: torch.Tensor, expected: torch.Tensor, weight: torch.Tensor) -> str:
    __tracebackhide__ = True
    index = tuple(int(i) for i in (got != expected).nonzero()[0])
    return (f"first difference at {list(index)}: w = {weight[index].item():.4g}, your mask says "
            f"{bool(got[index])}, expected {bool(expected[index])}")


def _diagnose_mask(got: torch.Tensor, weight: torch.Tensor, sparsity: float, what: str) -> str:
    __tracebackhide__ = True
    numel = weight.numel()
    k = num_to_prune(numel, sparsity)
    expected = magnitude_mask(weight, sparsity)
    removed = int((~got).sum())
    if torch.equal(got, ~expected):
        return (f"{what} is inverted: it is True on the {k} weights to remove. A keep-mask is True where the "
                "weight is KEPT (the torch.nn.utils.prune convention)")
    variants = [
        (magnitude_mask(weight, sparsity, scope="row"),
         "it matches per-row pruning (each output row loses the same fraction); this exercise ranks the whole "
         "matrix at once, the per-matrix baseline of the papers: one threshold for all entries"),
        (per_row_mask(weight.abs().t(), sparsity).t(),
         "it matches per-column pruning (each input column loses the same fraction); rank the whole matrix at once"),
        (per_matrix_mask(weight, sparsity),
         "it removes the most NEGATIVE weights: rank by magnitude |w| (weight.abs()), not by the signed value"),
    ]
    if weight.shape[0] == weight.shape[1]:
        variants.append((expected.t(), "it is the transpose of the right mask: index it like the weight, (row, column)"))
    for variant, message in variants:
        if not torch.equal(variant, expected) and torch.equal(got, variant):
            return f"{what}: {message}"
    fraction = f"{removed}/{numel} = {100 * removed / numel:.1f}%"
    if _ordered(weight, got):
        one_minus = {numel - k, int(numel * (1 - sparsity)), round(numel * (1 - sparsity))}
        if removed in one_minus and abs(removed - k) > 1:
            return (f"{what} removes {fraction} of the weights, i.e. 1 - sparsity: sparsity is the fraction "
                    f"REMOVED; remove floor(numel * sparsity) = {k} weights")
        if removed == k + 1:
            return (f"{what} removes {removed} weights, one too many (off by one): the target is "
                    f"floor(numel * sparsity) = floor({numel} * {sparsity}) = {k}. Typical causes: "
                    "round()/ceil() instead of int(); a threshold at index k of the sorted |w| (0-based: that "
                    "is the (k+1)-th smallest) or torch.kthvalue(x, k + 1) (1-based) removed with `<=`; "
                    "the k smallest are everything <= torch.kthvalue(x, k).values")
        if removed == k - 1:
            return (f"{what} removes {removed} weights, one too few (off by one): the target is "
                    f"floor(numel * sparsity) = floor({numel} * {sparsity}) = {k}. Typical causes: `<` instead "
                    "of `<=` against torch.kthvalue(x, k).values (which keeps the k-th smallest), or "
                    "kthvalue(x, k - 1) / sorted index k - 1 with `<`")
        return (f"{what} removes the smallest |w| but {fraction} of them; target sparsity {sparsity} means "
                f"removing floor({numel} * {sparsity}) = {k}")
    if removed == k:
        return (f"{what} removes the right number of weights ({k}) but not the smallest |w|; "
                + _first_mask_difference(got, expected, weight))
    return (f"{what} removes {fraction} of the weights (target: {k}, i.e. {100 * k / numel:.1f}%), and not "
            "the smallest |w|; " + _first_mask_difference(got, expected, weight))


@graded_check
def check_magnitude_mask(magnitude_mask_fn, seed: int = 0, cases=None) -> None:
    """``magnitude_mask(weight, sparsity)`` must return the per-matrix keep-mask of the reference."""
    __tracebackhide__ = True
    gen = generator(seed)
    cases = cases or MASK_CASES
    for rows, cols, sparsity in cases:
        weight = _test_weight(rows, cols, gen)
        original = weight.clone()
        what = f"your mask for a {rows}x{cols} weight at sparsity {sparsity}"
        k = num_to_prune(rows * cols, sparsity)
        try:
            got = call(magnitude_mask_fn, weight, sparsity, name="magnitude_mask",
                       returns=f"a torch.bool keep-mask of shape {(rows, cols)} (True = keep)")
        except CheckFailed as error:
            if k == 0 and "not implemented" not in str(error):
                raise CheckFailed(f"k = 0 is not handled: at sparsity {sparsity} nothing is removed\n"
                                  f"{what}: floor({rows * cols} * {sparsity}) = 0 weights to remove, and your "
                                  f"function crashed; return an all-True mask when k == 0 (torch.kthvalue and "
                                  f"topk refuse or misbehave at k = 0).\n{error}") from None
            raise
        if not torch.equal(weight, original):
            fail("magnitude_mask changed the weight it was given (an in-place op such as abs_(), masked_fill_() "
                 "or `weight[...] = 0`): it must only compute the mask and leave the weight alone")
        if not isinstance(got, torch.Tensor):
            fail(f"{what} should be a torch.Tensor, got {type(got).__name__}")
        if tuple(got.shape) == (cols, rows) and rows != cols:
            fail(f"{what} has shape {tuple(got.shape)}, the transpose of the weight's {(rows, cols)}: "
                 "the mask must have the weight's shape")
        if got.numel() == rows * cols and tuple(got.shape) != (rows, cols):
            fail(f"{what} has shape {tuple(got.shape)}; reshape it to the weight's shape {(rows, cols)} "
                 "(e.g. mask.view_as(weight) after working on weight.flatten())")
        expect_tensor(got, (rows, cols), what)
        if got.dtype != torch.bool:
            values = got.detach()
            if torch.equal(values.float(), (weight * magnitude_mask(weight, sparsity)).float()):
                fail(f"{what} is the pruned weight, not the mask: return the boolean keep-mask "
                     "(True = keep); the caller applies it")
            if bool(((values == 0) | (values == 1)).all()):
                fail(f"{what} has dtype {got.dtype}, expected torch.bool: build it from a comparison "
                     "(abs(w) > threshold) or with torch.ones(..., dtype=torch.bool)")
            fail(f"{what} has dtype {got.dtype} and values such as {values.flatten()[:4].tolist()}: return a "
                 "torch.bool keep-mask (True = keep)")
        got = got.cpu()
        if torch.equal(got, magnitude_mask(weight, sparsity)):
            continue
        fail(_diagnose_mask(got, weight, sparsity, what))
    shapes = ", ".join(f"{r}x{c}@{s}" for r, c, s in cases)
    passed(f"magnitude_mask matches the per-matrix reference on {len(cases)} matrices ({shapes})")


# ---------------------------------------------------------------------------------------------
# prunable_linears
# ---------------------------------------------------------------------------------------------


def _module_names(model: nn.Module) -> dict[int, str]:
    __tracebackhide__ = True
    return {id(m): name for name, m in model.named_modules()}


def _resolve_pairs(pairs, model: nn.Module, label: str, fn_name: str) -> list[str]:
    """Names of the modules in the learner's ``(module, "weight")`` pairs, checking the pairs' form."""
    __tracebackhide__ = True
    if isinstance(pairs, (str, bytes, Mapping)) or not hasattr(pairs, "__iter__"):
        fail(f"{fn_name} should return a list of (module, 'weight') pairs, got {type(pairs).__name__}")
    pairs = list(pairs)
    names = _module_names(model)
    resolved = []
    for index, pair in enumerate(pairs):
        if isinstance(pair, nn.Module):
            fail(f"{fn_name}: entry {index} is a bare module; torch.nn.utils.prune wants (module, 'weight') pairs")
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            fail(f"{fn_name}: entry {index} should be a (module, 'weight') pair, got {type(pair).__name__}: {pair!r:.80}")
        module, parameter = pair
        if isinstance(module, str) and isinstance(parameter, nn.Module):
            fail(f"{fn_name}: entry {index} is ('{module}', module): the module comes first, then 'weight'")
        if not isinstance(module, nn.Module):
            fail(f"{fn_name}: entry {index} should start with the module itself (nn.Module), got "
                 f"{type(module).__name__}" + (" (a name: use the module object)" if isinstance(module, str) else ""))
        if parameter != "weight":
            fail(f"{fn_name}: entry {index} names the parameter {parameter!r}; pruning targets the 'weight' "
                 "(biases stay dense)")
        if id(module) not in names:
            fail(f"{fn_name}: entry {index} is a {type(module).__name__} that is not part of the model "
                 "(a copy?); return the model's own modules")
        resolved.append(names[id(module)])
    return resolved


@graded_check
def check_prunable_linears(prunable_linears_fn) -> None:
    """``prunable_linears(model)``: ``(module, "weight")`` for every block linear of each tiny family."""
    __tracebackhide__ = True
    for family in TINY_FAMILIES:
        model, label = _tiny(family), _label(family)
        adapter = adapter_for(model)
        got = _resolve_pairs(call(prunable_linears_fn, model, name="prunable_linears", returns="a list of (module, 'weight') pairs"), model, label,
                             "prunable_linears")
        expected = list(adapter.named_linears(model))
        duplicates = sorted({n for n in got if got.count(n) > 1})
        if duplicates:
            fail(f"on {label}, {duplicates[:3]} appear more than once: each layer once (pruning it twice "
                 "stacks two masks)")
        extra = [n for n in got if n not in expected]
        missing = [n for n in expected if n not in got]
        head = adapter.head(model)
        head_names = {n for n, m in model.named_modules() if m is head}
        embedding_names = {n for n, m in model.named_modules() if any(m is e for e in adapter.embeddings(model))}
        if any(n in head_names for n in extra):
            tied = " In this model (as in SmolLM2) lm_head is tied to the token embeddings, so pruning it " \
                   "would prune the embeddings too." if _is_tied(model, adapter) else ""
            fail(f"on {label}, lm_head is included: it is outside the decoder blocks and stays dense.{tied} "
                 "Look for the linears inside adapter.blocks(model) only")
        if any(n in embedding_names for n in extra):
            fail(f"on {label}, embeddings are included ({[n for n in extra if n in embedding_names]}): "
                 "nn.Embedding has a .weight too, but only the linears inside the decoder blocks are pruned")
        if extra:
            fail(f"on {label}, these modules are not prunable linears of the decoder blocks: {extra[:5]}")
        if missing:
            if all(stores_transposed(dict(model.named_modules())[n]) for n in missing):
                fail(f"on {label}, GPT-2's {SHORT} layers are missing ({missing[:4]}{'...' if len(missing) > 4 else ''}): "
                     f"GPT-2 builds attention and MLP from {TRANSPOSED_LINEAR}, which is not an "
                     f"nn.Linear; accept both types (isinstance(m, (nn.Linear, {SHORT})))")
            fail(f"on {label}, {len(missing)} prunable linear(s) are missing, e.g. {missing[:4]}")
    passed(f"prunable_linears returns exactly the block linears on tiny llama, gpt2 ({SHORT}) and opt")


# ---------------------------------------------------------------------------------------------
# magnitude_prune_model
# ---------------------------------------------------------------------------------------------


def _leftover_prune_state(model: nn.Module) -> list[str]:
    __tracebackhide__ = True
    found = [n for n, _ in model.named_parameters() if n.endswith("_orig")]
    found += [n for n, _ in model.named_buffers() if n.endswith("_mask")]
    for name, module in model.named_modules():
        if any(isinstance(h, torch_prune.BasePruningMethod) for h in module._forward_pre_hooks.values()):
            found.append(f"{name} (pruning hook)")
    return found


def _fail_if_structured(where: str, name: str, kept: torch.Tensor) -> None:
    """Fail when whole output rows or input columns of the ``(out, in)`` keep-mask are pruned."""
    __tracebackhide__ = True
    rows, cols = int((~kept).all(dim=1).sum()), int((~kept).all(dim=0).sum())
    if rows > 1 or cols > 1:
        what = f"{rows} whole output rows" if rows > 1 else f"{cols} whole input columns"
        fail(f"{where}, {name} has {what} zeroed: that is structured pruning (ln_structured); use "
             "l1_unstructured, which removes single weights wherever they are smallest")


def _fail_if_misaligned(where: str, name: str, module: nn.Module, old_w: torch.Tensor, kept: torch.Tensor,
                        sparsity: float) -> None:
    """Fail when the ``(out, in)`` keep-mask ``kept`` is the per-matrix mask laid out for the other
    orientation (GPT-2's ``Conv1D``), or one threshold per row / per column."""
    __tracebackhide__ = True
    reference = magnitude_mask(old_w, sparsity)
    if stores_transposed(module) and (
            (reference.shape[0] == reference.shape[1] and torch.equal(kept, reference.t()))
            or torch.equal(kept, reference.reshape(old_w.shape[1], old_w.shape[0]).t())):
        fail(f"{where}, {name}: your mask is laid out for (out, in), but {SHORT} stores (in, out)\n"
             f"{where}, {name}: GPT-2's {SHORT} stores its weight transposed, (in, out); a mask "
             "computed on the (out, in) matrix must be transposed (mask.T) before it is applied, not "
             "reshaped or applied as it is")
    for dim, what in ((1, "output row"), (0, "input column")):
        per_dim = per_row_mask(old_w.abs(), sparsity) if dim == 1 else per_row_mask(old_w.abs().t(), sparsity).t()
        if torch.equal(kept, per_dim):
            fail(f"{where}, {name}: one threshold per {what}; prune the whole matrix at once\n"
                 f"{where}, {name}: every {what} lost the same share of its weights. l1_unstructured "
                 "ranks all weights of the matrix together (one threshold per matrix)")


@torch.no_grad()
def _with_random_vectors(model: nn.Module, seed: int) -> nn.Module:
    """Give biases and norm scales random values (a fresh model has zeros and ones) so edits show."""
    __tracebackhide__ = True
    gen = generator(seed)
    for parameter in model.parameters():
        if parameter.dim() == 1:
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=gen))
    return model


@graded_check
def check_magnitude_pruned_model(magnitude_prune_model, sparsities=(0.5, 0.3)) -> None:
    """``magnitude_prune_model(model, sparsity)`` prunes every block linear per matrix, in place."""
    __tracebackhide__ = True
    # the untied Llama first: there embed_tokens and lm_head are two tensors, so a change tells which one
    for family, sparsity in itertools.product(("llama-untied",) + tuple(TINY_FAMILIES), sparsities):
        tiny = _untied_llama(seed=1) if family == "llama-untied" else _tiny(family, seed=1)
        model, label = _with_random_vectors(tiny, seed=2), _label(family)
        adapter = adapter_for(model)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        call(magnitude_prune_model, model, sparsity, name="magnitude_prune_model", returns="the model, pruned in place")
        where = f"on {label} at sparsity {sparsity}"
        leftovers = _leftover_prune_state(model)
        if leftovers:
            fail(f"{where}, torch.nn.utils.prune state is still attached ({leftovers[:3]}...): call "
                 "prune.remove(module, 'weight') after l1_unstructured to make the zeros permanent and drop "
                 "weight_orig / weight_mask and the forward hook")
        after = dict(model.named_parameters())
        if set(after) != set(before):
            fail(f"{where}, the model's parameters changed names: new {sorted(set(after) - set(before))[:3]}, "
                 f"gone {sorted(set(before) - set(after))[:3]}")
        linears = adapter.named_linears(model)
        linear_weights = {f"{n}.weight" for n in linears}
        embedding_ids = {id(p) for m in adapter.embeddings(model) for p in m.parameters()}
        for name, parameter in after.items():
            if name in linear_weights or torch.equal(parameter.detach(), before[name]):
                continue
            head = adapter.head(model)
            if id(parameter) in embedding_ids:
                if _is_tied(model, adapter):
                    fail(f"{where}, the token embedding changed: you pruned lm_head or embed_tokens\n{where}, "
                         f"'{name}' changed: in this model lm_head is tied to the token embeddings (one tensor), "
                         "so pruning either prunes both. Prune only the linears inside the decoder blocks.")
                fail(f"{where}, the embedding '{name}' changed: you pruned an embedding; embeddings stay dense "
                     "(prune only the linears inside the decoder blocks)")
            if head is not None and any(parameter is p for p in head.parameters()):
                fail(f"{where}, '{name}' changed: you pruned lm_head; it is outside the decoder blocks and stays "
                     "dense")
            if parameter.dim() == 1:
                fail(f"{where}, '{name}' changed: only the weight matrices of the block linears are pruned "
                     "(biases and norms stay)")
            fail(f"{where}, '{name}' changed although it is not a prunable linear weight")
        total_zeros = total_numel = 0
        layer_report = []
        for name, module in linears.items():
            old = before[f"{name}.weight"]
            new = module.weight.detach()
            old_w, new_w = as_stored(module, old), as_stored(module, new)
            kept = new_w != 0
            if not torch.equal(new_w[kept], old_w[kept]):
                fail(f"{where}, {name}: weights that should be kept changed value; pruning only sets "
                     "weights to zero")
            zeros = int((~kept).sum())
            total_zeros, total_numel = total_zeros + zeros, total_numel + new_w.numel()
            layer_report.append((name, module, zeros, new_w.numel(), old_w, kept))
        conv = [r for r in layer_report if stores_transposed(r[1])]
        if conv and all(r[2] == 0 for r in conv):
            fail(f"{where}, GPT-2's {SHORT} layers were not pruned: they are {TRANSPOSED_LINEAR}, "
                 "not nn.Linear (use your prunable_linears)")
        if total_zeros == 0:
            fail(f"{where}, no weight is zero: nothing was pruned (did you prune a copy of the model?)")
        for name, module, zeros, numel, old_w, kept in layer_report:
            k = num_to_prune(numel, sparsity)
            if abs(zeros - k) <= 1:
                continue
            overall = total_zeros / total_numel
            if abs(overall - sparsity) < 0.01:
                fail(f"{where}, {name} has sparsity {zeros / numel:.3f} while the model overall has {overall:.3f}: "
                     "you pruned globally (one threshold over all layers, like prune.global_unstructured); "
                     "this exercise prunes each matrix to the target on its own (l1_unstructured per layer)")
            if abs(zeros - (numel - k)) <= 1:
                fail(f"{where}, {name} has sparsity {zeros / numel:.3f}: you removed 1 - sparsity; "
                     "amount= is the fraction to REMOVE")
            _fail_if_structured(where, name, kept)
            _fail_if_misaligned(where, name, module, old_w, kept, sparsity)
            fail(f"{where}, {name} has {zeros} of {numel} weights zero (sparsity {zeros / numel:.3f}); expected "
                 f"floor({numel} * {sparsity}) = {k} (±1 for torch's rounding)")
        for name, module, zeros, numel, old_w, kept in layer_report:
            if not _ordered(old_w, kept):
                _fail_if_structured(where, name, kept)
                _fail_if_misaligned(where, name, module, old_w, kept, sparsity)
                fail(f"{where}, {name}: a weight with |w| = {old_w.abs()[~kept].max().item():.4g} was removed while "
                     f"|w| = {old_w.abs()[kept].min().item():.4g} was kept; l1_unstructured removes the smallest "
                     "magnitudes (random_unstructured does not)")
        with torch.no_grad():
            try:
                model(input_ids=torch.arange(8).view(1, 8), use_cache=False)
            except Exception as error:
                fail(f"{where}, the pruned model no longer runs: {type(error).__name__}: {error}")
    passed(f"magnitude_prune_model prunes every block linear per matrix on tiny llama, gpt2, opt at "
           f"sparsities {', '.join(map(str, sparsities))}; lm_head, embeddings, norms and biases untouched; "
           "no prune state left")
