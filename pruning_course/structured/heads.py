"""Attention-head pruning: score heads through a gate on their output, then remove them for real.

**Head masks.** Michel et al. (2019, "Are Sixteen Heads Really Better than One?", Sec. 2) write
multi-head attention with a gate ``xi_h`` on every head's output,
``MHAtt(x) = sum_h xi_h Att_h(x)``; ``xi_h = 0`` switches head ``h`` off. Every family the course
supports concatenates the heads' outputs before the output projection (Llama ``o_proj``, GPT-2
``c_proj``, OPT ``out_proj``), so :func:`head_masks` installs a forward pre-hook on that projection
which multiplies head ``h``'s ``head_dim`` input features by ``mask[layer, h]``. With a mask of ones
nothing changes; the mask can carry ``requires_grad``.

**Importance (Michel et al., Sec. 4.1, Eq. 2).** ``I_h = E_x |dL(x) / d xi_h|`` at ``xi = 1``, with
``L(x)`` the language-modelling loss of sample ``x``: a first-order estimate of how much the loss
changes when the head is masked. :func:`head_importance` takes each calibration window as one sample
(its mean next-token loss) and gets every window's own gradient from one backward pass per batch by
giving each window its own copy of the mask. As in the authors' code, the scores of each layer are
then divided by their L2 norm across the layer's heads, which makes layers comparable for a global
ranking.

**Textbook variant.** :func:`qkv_gradient_importance` scores a head by the first-order Taylor term
summed over its weights, ``sum |W * dL/dW|`` over the head's rows of Q, K and V.

**Removal.** :func:`remove_heads` slices the projections (rows of Q, K, V, columns of the output
projection; GPT-2's fused ``c_attn`` included) and updates the attention modules so that the
smaller model computes exactly what the masked model computed. With grouped-query attention
(SmolLM2: 9 query heads over 3 key/value heads) ``repeat_kv`` pairs query head ``i`` with kv head
``i // group_size``, so within a layer every remaining kv group must keep the same number of query
heads: one can remove whole groups (their query heads and their K/V heads) and/or the same number of
query heads from every group. :func:`choose_heads_to_remove` and :func:`prune_heads_iteratively`
(prune a fraction, rescore the smaller model, repeat; Michel et al., Sec. 4, prune in steps of 10%
of the heads) respect that.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..architectures import ArchitectureAdapter, grad_matrix, layout_for, weight_matrix
from .resize import AttentionShape, attention_shapes, shrink_attention

__all__ = [
    "head_masks",
    "removal_mask",
    "head_importance",
    "normalize_per_layer",
    "qkv_gradient_importance",
    "choose_heads_to_remove",
    "remove_heads",
    "prune_heads_iteratively",
]


# ---------------------------------------------------------------------------------------------
# Head masks
# ---------------------------------------------------------------------------------------------


def _output_projections(model: nn.Module, adapter: ArchitectureAdapter) -> list[nn.Module]:
    layout = layout_for(adapter)
    return [block.get_submodule(f"{layout.attention}.{layout.o}") for block in adapter.blocks(model)]


@contextmanager
def head_masks(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    mask: torch.Tensor | None = None,
    *,
    requires_grad: bool = False,
) -> Iterator[torch.Tensor]:
    """Within the ``with`` block, multiply the output of head ``h`` of layer ``l`` by ``mask[l, h]``.

    Yields the mask: ``(num_layers, max_heads)``, ones by default (with ``requires_grad`` if asked).
    A ``(batch, num_layers, max_heads)`` mask gives every sequence of a batch its own gates. Layers with
    fewer heads than ``max_heads`` (after head removal) use the first entries of their row. The hooks
    read the tensor at every forward pass, so editing it in place inside the block takes effect.
    """
    shapes = attention_shapes(model, adapter)
    num_layers, max_heads = len(shapes), max(s.num_heads for s in shapes)
    device = next(model.parameters()).device
    if mask is None:
        mask = torch.ones(num_layers, max_heads, device=device, requires_grad=requires_grad)
    if mask.dim() not in (2, 3) or tuple(mask.shape[-2:]) != (num_layers, max_heads):
        raise InputError(
            f"head mask must have shape ({num_layers}, {max_heads}) or (batch, {num_layers}, {max_heads}) "
            f"for this model (layers, heads), got {tuple(mask.shape)}"
        )

    def hook(layer: int, shape: AttentionShape):
        def scale_heads(_module, args):
            x = args[0]
            gates = mask[..., layer, : shape.num_heads].repeat_interleave(shape.head_dim, dim=-1).to(x.dtype)
            if gates.dim() == 2:  # per-sequence gates: (batch, features) -> (batch, 1, features)
                gates = gates.reshape(gates.shape[0], *([1] * (x.dim() - 2)), gates.shape[-1])
            return (x * gates, *args[1:])

        return scale_heads

    handles = [
        projection.register_forward_pre_hook(hook(layer, shape))
        for layer, (projection, shape) in enumerate(zip(_output_projections(model, adapter), shapes))
    ]
    try:
        yield mask
    finally:
        for handle in handles:
            handle.remove()


def removal_mask(shapes: Sequence[AttentionShape], heads_to_remove: Mapping[int, Sequence[int]]) -> torch.Tensor:
    """A ``(num_layers, max_heads)`` mask of ones with zeros at ``heads_to_remove`` (use with :func:`head_masks`).

    ``shapes`` is :func:`~pruning_course.structured.resize.attention_shapes` of the model.
    """
    mask = torch.ones(len(shapes), max(s.num_heads for s in shapes))
    for layer, heads in heads_to_remove.items():
        mask[layer, list(heads)] = 0.0
    return mask


# ---------------------------------------------------------------------------------------------
# Importance scores
# ---------------------------------------------------------------------------------------------


def normalize_per_layer(importance: torch.Tensor, exponent: float = 2.0) -> torch.Tensor:
    """Divide each layer's row by its L``exponent`` norm across heads (Michel et al.'s code); NaN entries stay NaN."""
    norms = importance.nan_to_num(0.0).abs().pow(exponent).sum(-1, keepdim=True).pow(1.0 / exponent)
    return importance / (norms + 1e-20)


def _pad(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-layer score vectors into ``(num_layers, max_heads)``; heads a layer lacks are NaN."""
    width = max(r.numel() for r in rows)
    out = torch.full((len(rows), width), float("nan"), dtype=torch.float32)
    for layer, row in enumerate(rows):
        out[layer, : row.numel()] = row.float()
    return out


@contextmanager
def _only_grad_for(model: nn.Module, params: Sequence[nn.Parameter]):
    """Gradients for ``params`` only (none for the rest of the model); restores flags, grads and mode after."""
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    was_training = model.training
    wanted = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
        p.grad = None
    model.eval()
    try:
        yield
    finally:
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad
        model.train(was_training)


def _window_losses(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of every window of ``batch``: shape ``(batch,)``."""
    logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="none")
    return nll.view(batch.shape[0], -1).mean(dim=1)


def _check_windows(windows: torch.Tensor) -> None:
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise InputError(f"windows must be an (n, seqlen) tensor of token ids with seqlen >= 2, got shape {tuple(windows.shape)}")


def head_importance(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    *,
    batch_size: int = 4,
    normalize: bool = True,
) -> torch.Tensor:
    """Michel et al. (2019), Sec. 4.1, Eq. 2: ``I_h = E_x |dL(x)/d xi_h|`` at ``xi = 1``.

    ``x`` runs over the calibration ``windows`` (``(n, seqlen)`` token ids), ``L(x)`` is window ``x``'s
    mean next-token cross-entropy and ``xi`` the head gates of :func:`head_masks`; the expectation is
    the mean over windows. With ``normalize`` (default, as in the authors' code) each layer's scores
    are divided by their L2 norm across the layer's heads.

    Returns a float32 ``(num_layers, max_heads)`` tensor on the CPU; entries for heads a layer no
    longer has (after :func:`remove_heads`) are NaN. The model's weights get no gradients and are
    left unchanged.
    """
    _check_windows(windows)
    shapes = attention_shapes(model, adapter)
    device = next(model.parameters()).device
    total = torch.zeros(len(shapes), max(s.num_heads for s in shapes), dtype=torch.float64)
    with _only_grad_for(model, []):
        for batch in windows.split(batch_size):
            batch = batch.to(device)
            gates = torch.ones(batch.shape[0], *total.shape, device=device, requires_grad=True)
            with head_masks(model, adapter, gates):
                losses = _window_losses(model, batch)
            # d(sum_b L(x_b)) / d gates[b] = dL(x_b) / d gates[b]: each window's own gradient.
            (grad,) = torch.autograd.grad(losses.sum(), gates)
            total += grad.abs().sum(dim=0).double().cpu()
    importance = _pad([total[l, : s.num_heads] / windows.shape[0] for l, s in enumerate(shapes)])
    return normalize_per_layer(importance) if normalize else importance


def qkv_gradient_importance(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    *,
    batch_size: int = 4,
    normalize: bool = False,
) -> torch.Tensor:
    """First-order Taylor importance of each head: ``sum |W * dL/dW|`` over the head's rows of Q, K and V.

    ``L`` is the mean next-token cross-entropy over all calibration ``windows``. Each weight's term
    ``|W_ij * dL/dW_ij|`` estimates the loss change from zeroing that weight (Molchanov et al., 2019,
    "Importance Estimation for Neural Network Pruning"; LLM-Pruner, Ma et al., 2023, Sec. 3.2, uses the
    same element-wise first-order term and sums it over a group of coupled weights). Here the group
    of head ``h`` is its ``head_dim`` rows of the query projection and of the key and value projections
    (biases and the output projection's columns are left out).

    Grouped-query attention: a key/value head's rows serve ``group_size`` query heads, so each of
    those query heads is credited an equal share, ``1 / group_size``, of the K and V terms. Summing the
    scores of a group's query heads therefore gives the group's total (its Q, K and V rows), which is
    what :func:`choose_heads_to_remove` ranks when removing whole groups.

    Returns a float32 ``(num_layers, max_heads)`` tensor (NaN for heads a layer no longer has),
    divided per layer by its L2 norm if ``normalize``. Weights are unchanged and their ``.grad`` is
    restored afterwards.
    """
    _check_windows(windows)
    layout = layout_for(adapter)
    shapes = attention_shapes(model, adapter)
    attentions = [block.get_submodule(layout.attention) for block in adapter.blocks(model)]
    names = (layout.qkv,) if layout.qkv is not None else (layout.q, layout.k, layout.v)
    projections = [[attention.get_submodule(name) for name in names] for attention in attentions]
    device = next(model.parameters()).device

    rows = []
    with _only_grad_for(model, [p.weight for group in projections for p in group]):
        for batch in windows.split(batch_size):
            batch = batch.to(device)
            (_window_losses(model, batch).sum() / windows.shape[0]).backward()
        for shape, group in zip(shapes, projections):
            per_row = torch.cat([(weight_matrix(p) * grad_matrix(p)).abs().sum(dim=1) for p in group]).double().cpu()
            q_size, kv_size = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
            q, k, v = per_row.split([q_size, kv_size, kv_size])
            kv_per_head = (k + v).view(shape.num_kv_heads, shape.head_dim).sum(dim=1) / shape.group_size
            rows.append(q.view(shape.num_heads, shape.head_dim).sum(dim=1) + kv_per_head.repeat_interleave(shape.group_size))
    importance = _pad(rows)
    return normalize_per_layer(importance) if normalize else importance


# ---------------------------------------------------------------------------------------------
# Choosing heads
# ---------------------------------------------------------------------------------------------


def _per_layer(value, num_layers: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * num_layers
    values = [int(v) for v in value]
    if len(values) != num_layers:
        raise InputError(f"{name} must have one entry per layer ({num_layers}), got {len(values)}")
    return values


def choose_heads_to_remove(
    importance: torch.Tensor,
    fraction: float | None = None,
    *,
    count: int | None = None,
    num_kv_heads: int | Sequence[int] | None = None,
    mode: str = "auto",
) -> dict[int, list[int]]:
    """The least important heads, ranked globally across layers: ``{layer: [head, ...]}``.

    ``importance`` is ``(num_layers, max_heads)`` (NaN for heads a layer does not have; the present
    heads come first). Remove ``fraction`` of the present heads (rounded down) or exactly ``count``
    heads at most. Every layer keeps at least one head. ``num_kv_heads`` (an int or one per layer;
    default: no grouped-query attention) sets the groups. ``mode``:

    * ``"heads"``: single heads (only without grouped-query attention);
    * ``"groups"``: whole kv groups, scored by the mean importance of their query heads; every layer
      keeps at least one group;
    * ``"within_groups"``: the same number of query heads from every group of a layer; one step
      removes, from every group, its least important remaining head, scored by their mean, and every
      group keeps at least one head;
    * ``"auto"``: ``"heads"`` without grouped-query attention, else ``"groups"``.

    Greedy: steps are taken in increasing score (ties to the earlier layer and head) as long as the
    total stays within the budget, so the result may remove fewer heads than asked when whole groups
    do not fit.
    """
    importance = torch.as_tensor(importance, dtype=torch.float64)
    if importance.dim() != 2:
        raise InputError(f"importance must be a (num_layers, max_heads) tensor, got shape {tuple(importance.shape)}")
    num_layers = importance.shape[0]
    present = ~importance.isnan()
    num_heads = present.sum(dim=1).tolist()
    for layer, h in enumerate(num_heads):
        if h == 0 or not present[layer, :h].all():
            raise InputError(f"layer {layer}: importance must list its heads first and NaN only after them")
    kv = num_heads if num_kv_heads is None else _per_layer(num_kv_heads, num_layers, "num_kv_heads")
    for layer, (h, k) in enumerate(zip(num_heads, kv)):
        if k < 1 or h % k:
            raise InputError(f"layer {layer}: {h} heads cannot be split over {k} kv heads")
    grouped = any(h // k > 1 for h, k in zip(num_heads, kv))
    if mode == "auto":
        mode = "groups" if grouped else "heads"
    if mode not in ("heads", "groups", "within_groups"):
        raise InputError(f"unknown mode {mode!r}; choose 'auto', 'heads', 'groups' or 'within_groups'")
    if mode == "heads" and grouped:
        raise InputError(
            "this model uses grouped-query attention, where single heads cannot be removed freely: "
            "choose mode='groups' (whole kv groups) or mode='within_groups' (the same number of heads from every group)"
        )
    if mode == "within_groups" and not grouped:
        raise InputError("mode='within_groups' needs grouped-query attention (several query heads per kv head); use mode='heads'")

    total = sum(num_heads)
    if (fraction is None) == (count is None):
        raise InputError("give exactly one of fraction and count")
    if fraction is not None:
        if not 0.0 <= fraction < 1.0:
            raise InputError(f"fraction must be in [0, 1) (at least one head per layer stays), got {fraction}")
        count = math.floor(fraction * total)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= total:
        raise InputError(f"count must be an integer between 0 and the number of heads ({total}), got {count!r}")

    # Candidate steps: (score, layer, order within layer, heads it removes).
    steps: list[tuple[float, int, int, list[int]]] = []
    limit: dict[int, int] = {}  # most steps a layer may take
    for layer, (h, k) in enumerate(zip(num_heads, kv)):
        scores, g = importance[layer, :h], h // k
        if mode == "heads":
            steps += [(float(scores[i]), layer, i, [i]) for i in range(h)]
            limit[layer] = h - 1
        elif mode == "groups":
            steps += [(float(scores[j * g:(j + 1) * g].mean()), layer, j, list(range(j * g, (j + 1) * g))) for j in range(k)]
            limit[layer] = k - 1
        elif g > 1:  # within_groups: step j removes every group's j-th least important head
            order = scores.view(k, g).argsort(dim=1, stable=True) + torch.arange(k)[:, None] * g
            for j in range(g - 1):
                heads = order[:, j].tolist()
                steps.append((float(scores[heads].mean()), layer, j, heads))
            limit[layer] = g - 1
    steps.sort(key=lambda s: (s[0], s[1], s[2]))

    chosen: dict[int, list[int]] = {}
    taken = {layer: 0 for layer in limit}
    removed = 0
    for _score, layer, _order, heads in steps:
        if removed + len(heads) > count or taken[layer] >= limit[layer]:
            continue
        chosen.setdefault(layer, []).extend(heads)
        taken[layer] += 1
        removed += len(heads)
        if removed == count:
            break
    return {layer: sorted(heads) for layer, heads in sorted(chosen.items())}


# ---------------------------------------------------------------------------------------------
# Removing heads
# ---------------------------------------------------------------------------------------------


def _plan_layer(layer: int, shape: AttentionShape, heads: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The query and kv heads a layer keeps after removing ``heads``; ValueError for an illegal request."""
    for h in heads:
        if isinstance(h, bool) or not isinstance(h, int):
            raise InputError(f"layer {layer}: head indices must be integers, got {h!r}")
    bad = sorted(h for h in heads if not 0 <= h < shape.num_heads)
    if bad:
        raise InputError(f"layer {layer} has {shape.num_heads} heads (0..{shape.num_heads - 1}); cannot remove heads {bad}")
    if len(set(heads)) != len(heads):
        raise InputError(f"layer {layer}: heads {sorted({h for h in heads if list(heads).count(h) > 1})} are given more than once")
    if len(heads) == shape.num_heads:
        raise InputError(f"cannot remove all {shape.num_heads} heads of layer {layer}: at least one must remain (remove the block with remove_blocks instead)")
    removed = set(heads)
    keep = [h for h in range(shape.num_heads) if h not in removed]
    if shape.group_size == 1:
        return torch.tensor(keep), None

    g = shape.group_size
    kept_per_group = [sum(1 for h in keep if h // g == group) for group in range(shape.num_kv_heads)]
    surviving = [n for n in kept_per_group if n > 0]
    if len(set(surviving)) != 1:
        groups = ", ".join(f"group {j} (heads {j * g}-{j * g + g - 1}) keeps {n}" for j, n in enumerate(kept_per_group))
        raise InputError(
            f"layer {layer}: grouped-query attention ({shape.num_heads} query heads over {shape.num_kv_heads} kv heads, "
            f"{g} per group) needs every remaining kv group to keep the same number of query heads, but {groups}. "
            f"Legal: remove whole groups and/or the same number of heads from every remaining group, so that each "
            f"keeps the same count, any of 1..{g}."
        )
    keep_kv = [j for j, n in enumerate(kept_per_group) if n > 0]
    return torch.tensor(keep), torch.tensor(keep_kv)


def remove_heads(
    model: nn.Module, adapter: ArchitectureAdapter, heads_to_remove: Mapping[int, Sequence[int]]
) -> nn.Module:
    """Delete attention heads in place: ``heads_to_remove = {layer: [head, ...]}`` (current head indices).

    The query/key/value rows and output-projection columns of those heads are sliced away (GPT-2's
    fused ``c_attn`` included) and the attention modules' per-layer attributes updated, so the model
    computes exactly what it computed with those heads masked to 0 by :func:`head_masks`. With
    grouped-query attention a layer may lose whole kv groups (all their query heads: the K/V heads go
    too) and/or the same number of query heads from every remaining group.

    Raises ``ValueError``, before changing anything, for out-of-range layers or heads, duplicates,
    removing every head of a layer, or an uneven grouped-query request. Returns the model.
    """
    blocks = adapter.blocks(model)
    shapes = attention_shapes(model, adapter)
    plans = {}
    for layer, heads in heads_to_remove.items():
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(blocks):
            raise InputError(f"layer {layer!r} is out of range for a model with {len(blocks)} blocks (0..{len(blocks) - 1})")
        heads = list(heads)
        if heads:
            plans[layer] = _plan_layer(layer, shapes[layer], heads)
    for layer, (keep, keep_kv) in plans.items():
        shrink_attention(blocks[layer], adapter, keep, keep_kv)
    return model


# ---------------------------------------------------------------------------------------------
# Iterative pruning
# ---------------------------------------------------------------------------------------------


def prune_heads_iteratively(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    fraction: float,
    *,
    steps: int = 4,
    mode: str = "auto",
    score: Callable[..., torch.Tensor] = head_importance,
    batch_size: int = 4,
) -> dict[int, list[int]]:
    """Remove ``fraction`` of all heads in ``steps`` rounds, rescoring the smaller model before each round.

    Round ``s`` (1-based) brings the total removed to ``floor(fraction * heads * s / steps)`` heads (or
    fewer when whole groups do not fit; the next round makes up for it), chosen with
    :func:`choose_heads_to_remove` from ``score(model, adapter, windows, batch_size=...)``
    (default :func:`head_importance`) and removed with :func:`remove_heads`. Michel et al. (2019,
    Sec. 4) prune in steps of 10% of the heads.

    Returns ``{layer: [head, ...]}`` of the removed heads in the layer's *original* numbering.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"fraction must be in [0, 1), got {fraction}")
    shapes = attention_shapes(model, adapter)
    original = [list(range(s.num_heads)) for s in shapes]  # original index of each current head
    total = sum(s.num_heads for s in shapes)
    removed: dict[int, list[int]] = {}
    done = 0
    for step in range(1, steps + 1):
        target = math.floor(fraction * total * step / steps)
        if target <= done:
            continue
        importance = score(model, adapter, windows, batch_size=batch_size)
        kv = [s.num_kv_heads for s in attention_shapes(model, adapter)]
        chosen = choose_heads_to_remove(importance, count=target - done, num_kv_heads=kv, mode=mode)
        remove_heads(model, adapter, chosen)
        for layer, heads in chosen.items():
            removed.setdefault(layer, []).extend(original[layer][h] for h in heads)
            original[layer] = [o for i, o in enumerate(original[layer]) if i not in set(heads)]
            done += len(heads)
    return {layer: sorted(heads) for layer, heads in sorted(removed.items())}
