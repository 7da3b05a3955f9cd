"""Graded checks of notebook 04 (attention heads: Michel et al., 2019, and grouped-query removal).

The notebook's exercises are the pieces of head pruning, written at the tensor level:

``gate_heads(x, gates)``
    the head gate of Michel et al. (Sec. 2): multiply head ``h``'s ``head_dim`` features of the
    output projection's input by ``gates[h]`` (what the forward pre-hooks of
    :func:`pruning_course.structured.heads.head_masks` do).
``michel_importance(grads)``
    Eq. 2, ``I_h = E_x |dL(x)/d xi_h|``, from per-window gate gradients ``(windows, layers, heads)``,
    then divided per layer by its L2 norm across heads (the package's ``normalize_per_layer``).
``choose_heads_within_groups(importance, num_kv_heads, steps)``
    a grouped-query-legal choice: ``steps`` steps ranked over all layers, each removing from every
    kv group of one layer its least important remaining query head (the package's
    ``choose_heads_to_remove(..., mode="within_groups")``).
``slice_heads(wq, wk, wv, wo, heads_to_remove, head_dim, num_kv_heads)``
    the weights of one attention layer after removing query heads: rows of Q, K, V and columns of O
    (compared with the package's ``remove_heads`` applied to a one-block Llama).

Each check calls the learner's function on seeded inputs (several shapes, grouped-query and plain
attention), compares with the package and, on a mismatch, recomputes the classic wrong variants to
say which mistake the learner's result matches. ``seed`` selects another set of inputs (the
notebook's hidden tests use it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..architectures import adapter_for
from ..testing import tiny_random_model
from ..structured.heads import choose_heads_to_remove, head_masks, normalize_per_layer, remove_heads
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
    largest_difference,
    passed,
)

__all__ = [
    "check_gate_heads",
    "check_michel_importance",
    "check_choose_heads_within_groups",
    "check_slice_heads",
]


def _tiny_attention_llama(hidden: int, heads: int, kv_heads: int, head_dim: int, layers: int = 1, seed: int = 0) -> nn.Module:
    """A random Llama with the given attention shape (vocabulary 32, MLP width 16), in eval mode."""
    __tracebackhide__ = True
    return tiny_random_model("llama", seed=seed, vocab_size=32, hidden_size=hidden, intermediate_size=16,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                             head_dim=head_dim, max_position_embeddings=64)


# ---------------------------------------------------------------------------------------------
# 1. the head gate
# ---------------------------------------------------------------------------------------------


def _gate_reference(x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """What head_masks' pre-hook computes: feature ``h * head_dim + i`` times ``gates[h]``."""
    __tracebackhide__ = True
    return x * gates.repeat_interleave(x.shape[-1] // gates.numel())


@graded_check
def check_gate_heads(gate_heads: Callable, seed: int = 0) -> None:
    """Check ``gate_heads(x, gates)``.

    ``x``: ``(..., num_heads * head_dim)``, the input of the attention's output projection (the heads'
    outputs concatenated head after head); ``gates``: ``(num_heads,)``. The result multiplies features
    ``h * head_dim ... (h + 1) * head_dim - 1`` by ``gates[h]``, out of place, and lets gradients flow
    to ``gates``. Finally the function, used as a forward pre-hook on every ``o_proj`` of a tiny Llama,
    must give the same logits as the package's ``head_masks``.
    """
    __tracebackhide__ = True
    name = "gate_heads"
    gen = generator(40 + seed)
    for shape, num_heads in (((2, 5, 12), 3), ((7, 18), 6), ((1, 3, 4, 10), 2), ((2, 3, 16), 4)):
        head_dim = shape[-1] // num_heads
        x = torch.randn(*shape, generator=gen)
        gates = torch.rand(num_heads, generator=gen) + 0.5
        gates[int(torch.randint(num_heads, (1,), generator=gen))] = 0.0
        where = f"with x of shape {shape} ({num_heads} heads of {head_dim} features) and gates {fmt_values(gates, 6)}"
        x_in, gates_in = x.clone(), gates.clone()
        result = call(gate_heads, x_in, gates_in, name=name, returns="a tensor of x's shape: x with each head's features multiplied by its gate")
        if not torch.equal(x_in, x):
            fail(f"{where}: gate_heads modified x in place. Return a new tensor (x * g, not x *= g or x.mul_(g)): "
                 "the hook's input is the attention's output, which autograd still needs for the backward pass.")
        if not torch.equal(gates_in, gates):
            fail(f"{where}: gate_heads modified the gates in place; leave them unchanged.")
        result = expect_tensor(result, shape, f"gate_heads' result {where}").detach()
        reference = _gate_reference(x, gates)
        if close_to(result, reference, 1e-5):
            continue
        variants = [
            (x * gates.repeat(head_dim),
             "you expanded the gates with .repeat(head_dim), which tiles them as [g0, g1, ..., g0, g1, ...]. The "
             "heads are laid out one after another (head h owns features h*head_dim ... (h+1)*head_dim - 1): "
             "each gate must be repeated head_dim times in place, gates.repeat_interleave(head_dim)"),
            (x, "your result equals x: the gates were not applied"),
            (_gate_reference(x, 1.0 - gates),
             "you multiplied by 1 - gates: a gate of 1 keeps the head, 0 switches it off (xi_h multiplies Att_h)"),
            (x * gates.mean(), "you multiplied every feature by the same number; each head has its own gate"),
            (x + gates.repeat_interleave(head_dim), "you ADD the gates; a gate MULTIPLIES its head's features "
             "(x * gates.repeat_interleave(head_dim)): 0 switches the head off, 1 keeps it"),
        ]
        diagnose(variants, lambda variant: close_to(result, variant, 1e-5), where)
        index, got, want = largest_difference(result, reference)
        feature = index[-1]
        fail(f"{where}: at position {index} (feature {feature}, which belongs to head {feature // head_dim}) you return "
             f"{got:.6g}, expected x * gates[{feature // head_dim}] = {want:.6g}.")

    # gradients must reach the gates: Michel et al. differentiate the loss with respect to them
    x = torch.randn(3, 4, 12, generator=gen)
    gates = torch.ones(4, requires_grad=True)
    weights = torch.randn(3, 4, 12, generator=gen)
    result = call(gate_heads, x, gates, name=name, returns="a tensor of x's shape: x with each head's features multiplied by its gate")
    if not isinstance(result, torch.Tensor) or not result.requires_grad:
        fail("with gates that require grad (torch.ones(4, requires_grad=True)) the result does not require grad: the "
             "gates were detached (.detach(), .tolist(), torch.tensor(gates) or torch.no_grad()). Build the gated "
             "tensor from `gates` itself with tensor operations so that dL/dgates can be computed.")
    (grad,) = torch.autograd.grad((result * weights).sum(), gates)
    expected = (x * weights).reshape(-1, 4, 3).sum(dim=0).sum(dim=-1)
    if not close_to(grad, expected, 1e-4):
        fail(f"the gradient with respect to the gates is {fmt_values(grad)}, expected {fmt_values(expected)} "
             "(d/dg_h of sum(w * gate_heads(x, g)) = sum of w * x over head h's features).")

    # as a hook on a real model, it must do what head_masks does
    model = _tiny_attention_llama(hidden=24, heads=6, kv_heads=2, head_dim=4, layers=2, seed=seed)
    adapter = adapter_for(model)
    ids = torch.randint(0, 32, (2, 7), generator=gen)
    mask = torch.rand(2, 6, generator=gen)
    mask[0, 1] = mask[1, 4] = 0.0
    with torch.no_grad(), head_masks(model, adapter, mask):
        expected = model(input_ids=ids, use_cache=False).logits

    def hook(layer: int):
        __tracebackhide__ = True
        def gate(_module, args):
            __tracebackhide__ = True
            return (call(gate_heads, args[0], mask[layer], name=name, returns="a tensor of x's shape: x with each head's features multiplied by its gate"), *args[1:])
        return gate

    handles = [block.self_attn.o_proj.register_forward_pre_hook(hook(i)) for i, block in enumerate(adapter.blocks(model))]
    try:
        with torch.no_grad():
            got = model(input_ids=ids, use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
    if not close_to(got, expected, 1e-4):
        fail("as a forward pre-hook on o_proj of a tiny Llama (6 heads of 4 features, 2 layers), your gate_heads gives "
             "other logits than the package's head_masks with the same gates.")
    passed("gate_heads multiplies each head's head_dim features by its gate, out of place, with gradients to the gates")


# ---------------------------------------------------------------------------------------------
# 2. Michel et al.'s importance from per-window gradients
# ---------------------------------------------------------------------------------------------


def _importance_reference(grads: torch.Tensor) -> torch.Tensor:
    __tracebackhide__ = True
    return normalize_per_layer(grads.abs().mean(dim=0))


@graded_check
def check_michel_importance(michel_importance: Callable, seed: int = 0) -> None:
    """Check ``michel_importance(grads)``.

    ``grads``: ``(num_windows, num_layers, num_heads)``, the gradient of each calibration window's loss
    with respect to every head gate. Returns ``(num_layers, num_heads)``: the mean over windows of
    ``|grad|`` (Michel et al., Eq. 2), each layer's row divided by its L2 norm across heads
    (``normalize_per_layer`` in the package). The sum over windows is accepted too (the per-layer
    normalisation removes the constant factor).
    """
    __tracebackhide__ = True
    name = "michel_importance"
    gen = generator(50 + seed)
    for windows, layers, heads in ((6, 4, 5), (3, 7, 9), (10, 3, 4), (5, 5, 5)):
        layer_scale = torch.logspace(-2, 1, layers)[torch.randperm(layers, generator=gen)].reshape(1, -1, 1)
        grads = torch.randn(windows, layers, heads, generator=gen) * layer_scale + 0.3 * layer_scale
        where = f"with grads of shape ({windows}, {layers}, {heads}) (windows, layers, heads)"
        grads_in = grads.clone()
        result = call(michel_importance, grads_in, name=name, returns="a (layers, heads) tensor, each layer's row L2-normalised")
        if not torch.equal(grads_in, grads):
            fail(f"{where}: michel_importance modified grads in place (e.g. grads.abs_()); use out-of-place operations.")
        if isinstance(result, torch.Tensor) and tuple(result.shape) in ((windows, layers), (windows, heads)) and \
                tuple(result.shape) != (layers, heads):
            fail(f"{where}: your result has shape {tuple(result.shape)}: one value per window. Average over the "
                 f"windows (dim 0) and keep one value per head of every layer, shape ({layers}, {heads}).")
        if isinstance(result, torch.Tensor) and tuple(result.shape) == (windows, layers, heads):
            fail(f"{where}: your result still has the windows dimension, shape {tuple(result.shape)}: average |grad| "
                 f"over the windows (dim 0) to get shape ({layers}, {heads}).")
        result = expect_tensor(result, (layers, heads), f"the importance {where}").detach().double()
        g = grads.double()
        reference = _importance_reference(g)
        if close_to(result, reference):
            continue
        raw = g.abs().mean(dim=0)
        variants = [
            (normalize_per_layer(g.mean(dim=0).abs()),
             "you averaged the signed gradients and took abs afterwards: gradients of opposite sign cancel between "
             "windows. Eq. 2 averages |dL(x)/dxi_h|: take abs of every window's gradient BEFORE averaging"),
            (normalize_per_layer(g.mean(dim=0)),
             "you averaged the signed gradients (no abs): importance is the mean of |dL(x)/dxi_h| over windows"),
            (raw / raw.sum(dim=-1, keepdim=True),
             "you divided each layer by the SUM of its scores (L1 norm); Michel et al. divide by the L2 norm, "
             "sqrt(sum of squares) across the layer's heads"),
            (raw / raw.norm(),
             "you divided by one norm over ALL layers; the normalisation is per layer: divide each layer's row by "
             "its own L2 norm across heads (norm(dim=-1, keepdim=True))"),
            (raw / raw.norm(dim=0, keepdim=True),
             "you normalised each head across the layers (dim 0); normalise each LAYER across its heads: "
             "norm(dim=-1, keepdim=True)"),
            (raw / raw.amax(dim=-1, keepdim=True),
             "you divided each layer by its largest score; divide by the layer's L2 norm across heads"),
            (raw, "your scores are not normalised: divide each layer's row by its L2 norm across heads"),
            (normalize_per_layer(g.pow(2).mean(dim=0)),
             "you averaged squared gradients; Eq. 2 averages their absolute values |dL/dxi_h|"),
            (normalize_per_layer(g.abs()).mean(dim=0),
             "you normalised every window's gradients before averaging; average |grad| over the windows first, "
             "then divide each layer by its L2 norm"),
        ]
        diagnose(variants, lambda variant: close_to(result, variant), where)
        index, got, want = largest_difference(result, reference)
        fail(f"{where}: at layer {index[0]}, head {index[1]} you return {got:.6g}, expected {want:.6g} (mean over windows "
             f"of |grad|, divided by the layer's L2 norm); expected row {index[0]} starts {fmt_values(reference[index[0]])}, "
             f"yours {fmt_values(result[index[0]])}.")
    passed("michel_importance = mean over windows of |dL/dxi_h|, each layer divided by its L2 norm across heads")


# ---------------------------------------------------------------------------------------------
# 3. choosing heads under grouped-query attention
# ---------------------------------------------------------------------------------------------


def _within_groups_variant(importance: torch.Tensor, num_kv_heads: int, steps: int, *, strided: bool = False,
                           aggregate: str = "mean", max_steps: int | None = None) -> dict[int, list[int]]:
    """Wrong variants of the within-groups choice (the right one is the package's)."""
    __tracebackhide__ = True
    layers, heads = importance.shape
    g = heads // num_kv_heads
    if strided:  # group j = heads j, j + K, j + 2K, ...
        members = torch.arange(heads).view(g, num_kv_heads).t()
    else:
        members = torch.arange(heads).view(num_kv_heads, g)
    max_steps = g - 1 if max_steps is None else max_steps
    candidates = []
    for layer in range(layers):
        scores = importance[layer][members]  # (groups, g)
        order = scores.argsort(dim=1, stable=True)
        for j in range(max_steps):
            picked = members.gather(1, order[:, j:j + 1]).flatten()
            values = importance[layer, picked]
            score = {"mean": values.mean(), "min": values.min(), "max": values.max()}[aggregate]
            candidates.append((float(score), layer, j, picked.tolist()))
    candidates.sort(key=lambda c: (c[0], c[1], c[2]))
    chosen: dict[int, list[int]] = {}
    for _score, layer, _j, picked in candidates[:steps]:
        chosen.setdefault(layer, []).extend(picked)
    return {layer: sorted(h) for layer, h in sorted(chosen.items())}


def _as_choice(result, layers: int, heads: int, where: str) -> dict[int, list[int]]:
    __tracebackhide__ = True
    if isinstance(result, torch.Tensor):
        fail(f"{where}: return a dict {{layer: [head, ...]}} of the heads to REMOVE (as remove_heads takes it), got a "
             f"tensor of shape {tuple(result.shape)}")
    if not isinstance(result, Mapping):
        fail(f"{where}: return a dict {{layer: [head, ...]}} of the heads to remove, got {type(result).__name__}")
    choice: dict[int, list[int]] = {}
    for layer, picked in result.items():
        try:
            layer_index = int(layer)
            picked = [int(h) for h in (picked.tolist() if isinstance(picked, torch.Tensor) else picked)]
        except (TypeError, ValueError):
            fail(f"{where}: the dict must map layer indices to lists of head indices; got {layer!r}: {picked!r}")
        if not 0 <= layer_index < layers:
            fail(f"{where}: layer {layer_index} does not exist (layers 0..{layers - 1})")
        bad = [h for h in picked if not 0 <= h < heads]
        if bad:
            fail(f"{where}: layer {layer_index}: heads {bad} do not exist (heads 0..{heads - 1})")
        if len(set(picked)) != len(picked):
            fail(f"{where}: layer {layer_index} lists a head more than once: {picked}")
        if picked:
            choice[layer_index] = sorted(picked)
    return dict(sorted(choice.items()))


def _group_counts(picked: Sequence[int], num_kv_heads: int, g: int) -> list[int]:
    __tracebackhide__ = True
    return [sum(1 for h in picked if h // g == j) for j in range(num_kv_heads)]


def _head_choice_cases(seed: int):
    __tracebackhide__ = True
    gen = generator(60 + seed)
    cases = []
    for layers, heads, kv, steps in ((4, 6, 2, 3), (5, 9, 3, 4), (3, 4, 2, 2), (6, 8, 4, 5), (8, 9, 3, 7)):
        importance = torch.rand(layers, heads, generator=gen) * torch.logspace(-1, 0, layers).reshape(-1, 1)
        if heads // kv > 2 and layers >= 5:  # one nearly useless layer: a choice that may empty groups would empty it
            importance[int(torch.randint(layers, (1,), generator=gen))] *= 0.01
        cases.append((importance, kv, steps))
    return cases


@graded_check
def check_choose_heads_within_groups(choose_heads_within_groups: Callable, seed: int = 0) -> None:
    """Check ``choose_heads_within_groups(importance, num_kv_heads, steps)``.

    ``importance``: ``(num_layers, num_heads)``; kv group ``j`` is query heads ``j*g ... (j+1)*g - 1`` with
    ``g = num_heads // num_kv_heads``. A step in a layer removes from every group of that layer its least
    important remaining head and is scored by the mean importance of the heads it removes; each layer
    allows ``g - 1`` steps (every group keeps a head). The ``steps`` lowest-scoring steps over all layers
    are taken. Returns ``{layer: [head, ...]}`` (layers that lose nothing may be left out). The reference
    is ``choose_heads_to_remove(importance, count=steps * num_kv_heads, num_kv_heads=num_kv_heads,
    mode="within_groups")``.
    """
    __tracebackhide__ = True
    name = "choose_heads_within_groups"
    for importance, kv, steps in _head_choice_cases(seed):
        layers, heads = importance.shape
        g = heads // kv
        where = (f"with importance of shape ({layers}, {heads}), {kv} kv groups of {g} heads and steps={steps}")
        imp_in = importance.clone()
        result = call(choose_heads_within_groups, imp_in, kv, steps, name=name, returns="a dict {layer: sorted list of query heads to remove}")
        if not torch.equal(imp_in, importance):
            fail(f"{where}: your function modified the importance tensor in place; work on a copy.")
        choice = _as_choice(result, layers, heads, where)
        reference = choose_heads_to_remove(importance, count=steps * kv, num_kv_heads=kv, mode="within_groups")
        if choice == reference:
            continue
        if choice == choose_heads_to_remove(-importance, count=steps * kv, num_kv_heads=kv, mode="within_groups"):
            fail(f"{where}: you removed the MOST important heads; pruning removes the least important (lowest "
                 "scores) first.")
        if choice == choose_heads_to_remove(importance, count=steps * kv, num_kv_heads=kv, mode="groups"):
            fail(f"{where}: you removed whole kv groups (all query heads of a group, and with them its K/V head). "
                 "That is legal too, but this exercise removes one head from EVERY group of a layer per step.")
        if choice == _within_groups_variant(importance, kv, steps, strided=True):
            fail(f"{where}: your groups are strided (heads j, j + {kv}, j + {2 * kv}, ...). repeat_kv pairs query head "
                 f"i with kv head i // group_size: group j is the consecutive heads j*{g} ... j*{g} + {g - 1}.")
        for layer, picked in choice.items():
            counts = _group_counts(picked, kv, g)
            if len(picked) == heads:
                fail(f"{where}: you remove every head of layer {layer}; each group must keep at least one head, so a "
                     f"layer allows at most group_size - 1 = {g - 1} steps.")
            if g in counts:
                j = counts.index(g)
                fail(f"{where}: layer {layer} loses all {g} heads of group {j} (heads {j * g}..{j * g + g - 1}) while "
                     f"other groups keep heads; removing whole groups is another mode. Here every group keeps at least "
                     f"one head: at most {g - 1} steps per layer.")
            if len(set(counts)) != 1:
                detail = ", ".join(f"group {j} loses {n}" for j, n in enumerate(counts))
                fail(f"{where}: layer {layer} loses {sorted(picked)}: {detail}. Under grouped-query attention every "
                     f"kv group must keep the same number of query heads (repeat_kv pairs query head i with kv head "
                     f"i // group_size), so a step removes one head from EACH group; ranking single heads "
                     f"globally breaks that.")
        removed = sum(len(p) for p in choice.values())
        if removed != steps * kv:
            fail(f"{where}: you remove {removed} heads; {steps} steps of one head from each of the {kv} groups of a "
                 f"layer remove {steps * kv}.")
        for aggregate in ("min", "max"):
            if choice == _within_groups_variant(importance, kv, steps, aggregate=aggregate):
                fail(f"{where}: you rank a step by the {aggregate}imum importance of the heads it removes; rank it by "
                     "their mean (their total, equivalently), the first-order estimate of the loss it costs.")
        per_layer = {layer: len(p) // kv for layer, p in choice.items()}
        if len(set(per_layer.values())) == 1 and len(per_layer) * next(iter(per_layer.values())) == steps and \
                len(per_layer) == min(steps, layers) and reference.keys() != choice.keys():
            fail(f"{where}: you spread the steps evenly over the layers; rank the steps of ALL layers together and take "
                 "the lowest-scoring ones, wherever they are (unimportant layers lose more heads).")
        missing = {layer: sorted(set(h) - set(choice.get(layer, []))) for layer, h in reference.items()}
        missing = {layer: h for layer, h in missing.items() if h}
        extra = {layer: sorted(set(h) - set(reference.get(layer, []))) for layer, h in choice.items()}
        extra = {layer: h for layer, h in extra.items() if h}
        fail(f"{where}: the choice differs from the reference: you remove {extra} which it keeps, and keep {missing} "
             f"which it removes. Expected {reference}.")
    passed("choose_heads_within_groups takes the lowest-scoring steps over all layers, one head from every group, "
           "and never empties a group")


# ---------------------------------------------------------------------------------------------
# 4. slicing the weights of one attention layer
# ---------------------------------------------------------------------------------------------


def _rows(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    __tracebackhide__ = True
    heads = torch.as_tensor(list(heads), dtype=torch.long)
    return (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def _package_head_slices(wq, wk, wv, wo, remove, head_dim, kv_heads, seed):
    """The package's remove_heads applied to a one-block Llama holding these weights."""
    __tracebackhide__ = True
    heads = wq.shape[0] // head_dim
    model = _tiny_attention_llama(hidden=wq.shape[1], heads=heads, kv_heads=kv_heads, head_dim=head_dim, seed=seed)
    attention = adapter_for(model).blocks(model)[0].self_attn
    with torch.no_grad():
        for module, weight in ((attention.q_proj, wq), (attention.k_proj, wk), (attention.v_proj, wv), (attention.o_proj, wo)):
            module.weight.copy_(weight)
    remove_heads(model, adapter_for(model), {0: list(remove)})
    return tuple(m.weight.detach().clone() for m in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj))


def _head_slice_cases():
    #        heads, kv, head_dim, hidden (a multiple of heads, as transformers requires), heads to remove
    __tracebackhide__ = True
    return [
        (6, 2, 4, 42, [3, 4, 5]),  # a whole group: its K/V head goes too
        (6, 2, 4, 42, [4, 0]),  # one head from each group: K/V stay
        (9, 3, 2, 9, [8, 0, 1, 2, 4]),  # group 0 and one head of groups 1 and 2; hidden < num_heads * head_dim
        (4, 4, 3, 8, [1, 2]),  # plain multi-head attention
    ]


_LAYOUT_HINT = ("q_proj.weight is (num_heads * head_dim, hidden) with head h in rows h*head_dim ... (h+1)*head_dim - 1; "
                "k_proj/v_proj are (num_kv_heads * head_dim, hidden): kv head j serves query heads j*g ... (j+1)*g - 1 "
                "(g = num_heads // num_kv_heads); o_proj.weight is (hidden, num_heads * head_dim): head h is in its "
                "COLUMNS h*head_dim ... (h+1)*head_dim - 1")


def _diagnose_head_side(label: str, got: torch.Tensor, full: torch.Tensor, reference: torch.Tensor, keep: list[int],
                        remove: list[int], head_dim: int, heads: int, where: str, dim: int) -> None:
    """Fail with the mistake in the query rows (``dim=0``) or output-projection columns (``dim=1``), if any."""
    __tracebackhide__ = True
    if got.shape == reference.shape and torch.equal(got, reference):
        return
    part = "rows" if dim == 0 else "columns"
    layer = "q_proj" if dim == 0 else "o_proj"

    def take(index: torch.Tensor) -> torch.Tensor:
        __tracebackhide__ = True
        return full.index_select(dim, index)

    if got.shape[dim] == len(remove) * head_dim and torch.equal(got, take(_rows(sorted(remove), head_dim))):
        fail(f"{where}: {label}: you kept the {part} of the heads to REMOVE; keep those of heads {keep}.")
    if got.shape == full.shape:
        fail(f"{where}: {label} still has shape {tuple(full.shape)}: remove the removed heads' {part} of {layer} too.")
    if got.shape != reference.shape:
        fail(f"{where}: {label} should have shape {tuple(reference.shape)}, got {tuple(got.shape)}. {_LAYOUT_HINT}.")
    offsets = torch.cat([torch.arange(h, h + head_dim) for h in keep]).clamp(max=heads * head_dim - 1)
    if torch.equal(got, take(offsets)):
        fail(f"{where}: {label}: head h's {part} start at h * head_dim, not at h: head h owns {part} "
             f"h*{head_dim} ... h*{head_dim} + {head_dim - 1}.")
    strided = torch.tensor([i for i in range(heads * head_dim) if i % heads in keep], dtype=torch.long)
    if strided.numel() == got.shape[dim] and torch.equal(got, take(strided)):
        fail(f"{where}: {label}: you kept every {part[:-1]} i with i % num_heads in the kept heads (a (head_dim, "
             f"num_heads) layout); the heads are contiguous blocks: head h owns {part} h*head_dim ... (h+1)*head_dim - 1.")
    if torch.equal(got.sort(dim=dim).values, reference.sort(dim=dim).values):
        fail(f"{where}: {label} holds the right {part} in another order; keep the remaining heads in their original "
             "order (sort the kept indices).")
    index, value, want = largest_difference(got, reference)
    fail(f"{where}: {label} has the right shape but differs from the reference at {index}: {value:.6g} instead of "
         f"{want:.6g}; keep the {part} of heads {keep}. {_LAYOUT_HINT}.")


@graded_check
def check_slice_heads(slice_heads: Callable, seed: int = 0) -> None:
    """Check ``slice_heads(wq, wk, wv, wo, heads_to_remove, head_dim, num_kv_heads)``.

    Returns ``(wq, wk, wv, wo)`` after removing the query heads ``heads_to_remove`` (a legal
    grouped-query choice): Q keeps the rows of the remaining query heads, K and V the rows of the kv
    heads whose group still has a query head, O the columns of the remaining query heads; all in
    their original order. The reference is the package's ``remove_heads`` on a one-block Llama.
    """
    __tracebackhide__ = True
    name = "slice_heads"
    gen = generator(70 + seed)
    for heads, kv, head_dim, hidden, remove in _head_slice_cases():
        g = heads // kv
        wq = torch.randn(heads * head_dim, hidden, generator=gen)
        wk = torch.randn(kv * head_dim, hidden, generator=gen)
        wv = torch.randn(kv * head_dim, hidden, generator=gen)
        wo = torch.randn(hidden, heads * head_dim, generator=gen)
        where = (f"with {heads} query heads over {kv} kv heads (head_dim {head_dim}, hidden {hidden}), removing heads "
                 f"{remove}")
        inputs = [w.clone() for w in (wq, wk, wv, wo)]
        try:
            result = call(slice_heads, *inputs, list(remove), head_dim, kv, name=name, returns="(wq, wk, wv, wo) without the removed heads")
        except CheckFailed as error:
            if "index" in str(error).lower() or "size" in str(error).lower():
                raise CheckFailed(f"{error}\n{where}: the shapes are: {_LAYOUT_HINT}.") from None
            raise
        for before, after, label in zip((wq, wk, wv, wo), inputs, ("wq", "wk", "wv", "wo")):
            if not torch.equal(before, after):
                fail(f"{where}: slice_heads modified {label} in place; return new tensors.")
        if not isinstance(result, (tuple, list)) or len(result) != 4:
            fail(f"{where}: return the four weights (wq, wk, wv, wo) as a tuple, got {type(result).__name__}")
        ref = _package_head_slices(wq, wk, wv, wo, remove, head_dim, kv, seed)
        keep = [h for h in range(heads) if h not in remove]
        keep_kv = [j for j in range(kv) if any(h // g == j for h in keep)]
        got_q, got_k, got_v, got_o = (r.detach() if isinstance(r, torch.Tensor) else r for r in result)
        for label, value in zip(("wq", "wk", "wv", "wo"), (got_q, got_k, got_v, got_o)):
            if not isinstance(value, torch.Tensor):
                fail(f"{where}: {label} should be a torch.Tensor, got {type(value).__name__}")

        if got_o.shape == (len(keep) * head_dim, heads * head_dim) and got_o.shape != ref[3].shape:
            fail(f"{where}: wo has shape {tuple(got_o.shape)}: you sliced the ROWS of o_proj. Its weight is (hidden, "
                 f"num_heads * head_dim); the heads are its input features, the COLUMNS: wo[:, rows of the kept heads].")
        _diagnose_head_side("wq", got_q, wq, ref[0], keep, remove, head_dim, heads, where, dim=0)
        _diagnose_head_side("wo", got_o, wo, ref[3], keep, remove, head_dim, heads, where, dim=1)
        # --- k_proj / v_proj: rows of the kv heads whose group survives
        for label, got, full, reference in (("wk", got_k, wk, ref[1]), ("wv", got_v, wv, ref[2])):
            if torch.equal(got, reference):
                continue
            dropped_groups = [j for j in range(kv) if j not in keep_kv]
            touched_groups = sorted({h // g for h in remove})
            if got.shape == full.shape and dropped_groups:
                fail(f"{where}: {label} still holds every kv head, but all query heads of group(s) {dropped_groups} were "
                     f"removed: nothing reads their keys/values any more; remove kv head(s) {dropped_groups} too.")
            if got.shape[0] == len(keep) * head_dim and g > 1:
                fail(f"{where}: {label} has one head per kept QUERY head ({len(keep)}); K and V have num_kv_heads heads, "
                     f"each shared by the {g} query heads of its group: keep each surviving kv head {keep_kv} once.")
            if g > 1 and got.shape[0] == (kv - len(touched_groups)) * head_dim and touched_groups != dropped_groups:
                fail(f"{where}: {label}: you removed the kv heads {touched_groups} of every group that lost a query head, "
                     f"but groups {[j for j in touched_groups if j in keep_kv]} still have query heads that need their "
                     "keys and values. K/V are shared within a group: a kv head goes only when its whole group goes.")
            if g == 1 and got.shape == full.shape:
                fail(f"{where}: {label} still has every head; without grouped-query attention (num_kv_heads = "
                     "num_heads) every head has its own K and V rows: remove them with the query head.")
            if got.shape != reference.shape:
                fail(f"{where}: {label} should have shape {tuple(reference.shape)} (kv heads {keep_kv} of {kv}), got "
                     f"{tuple(got.shape)}. {_LAYOUT_HINT}.")
            index, value, want = largest_difference(got, reference)
            fail(f"{where}: {label} differs from the reference at {index}: {value:.6g} instead of {want:.6g}; keep the "
                 f"rows of kv heads {keep_kv}, in order.")
    passed("slice_heads keeps the remaining heads' rows of Q, the surviving groups' K/V rows and the heads' columns of O")
