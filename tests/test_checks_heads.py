"""The graded checks of notebook 04 (attention heads): the reference passes, each classic mistake gets its diagnosis."""

from __future__ import annotations

import pytest
import torch

from pruning_course.checks.heads import (
    check_choose_heads_within_groups,
    check_gate_heads,
    check_michel_importance,
    check_slice_heads,
)
from pruning_course.structured.heads import choose_heads_to_remove

from check_support import fails_with, not_implemented


# ---------------------------------------------------------------------------------------------
# solutions as a learner would write them
# ---------------------------------------------------------------------------------------------


def gate_heads(x, gates):
    return x * gates.repeat_interleave(x.shape[-1] // gates.shape[0])


def michel_importance(grads):
    importance = grads.abs().mean(dim=0)
    return importance / importance.norm(dim=-1, keepdim=True)


def choose_within_groups(importance, num_kv_heads, steps, *, max_steps=None, largest=False, aggregate="mean"):
    layers, heads = importance.shape
    g = heads // num_kv_heads
    candidates = []
    for layer in range(layers):
        order = importance[layer].view(num_kv_heads, g).argsort(dim=1, descending=largest)
        for j in range(g - 1 if max_steps is None else max_steps):
            picked = (order[:, j] + torch.arange(num_kv_heads) * g).tolist()
            values = importance[layer, picked]
            score = {"mean": values.mean(), "min": values.min()}[aggregate].item()
            candidates.append((-score if largest else score, layer, picked))
    candidates.sort(key=lambda c: c[0])
    chosen = {}
    for _score, layer, picked in candidates[:steps]:
        chosen.setdefault(layer, []).extend(picked)
    return {layer: sorted(h) for layer, h in chosen.items()}


def rows(heads, head_dim):
    if not len(heads):
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])


def slice_heads(wq, wk, wv, wo, heads_to_remove, head_dim, num_kv_heads, *, o_rows=False, offset=None,
                kv_rule="groups", order=sorted):
    num_heads = wq.shape[0] // head_dim
    g = num_heads // num_kv_heads
    keep = order([h for h in range(num_heads) if h not in set(heads_to_remove)])
    if kv_rule == "groups":
        keep_kv = sorted({h // g for h in keep})
    elif kv_rule == "unchanged":
        keep_kv = list(range(num_kv_heads))
    elif kv_rule == "per_query":
        keep_kv = [h // g for h in keep]
    elif kv_rule == "touched":
        keep_kv = [j for j in range(num_kv_heads) if j not in {h // g for h in heads_to_remove}]
    else:  # query indices used on K/V
        keep_kv = keep
    q = rows(keep, head_dim) if offset is None else offset(keep, head_dim)
    kv = rows(keep_kv, head_dim)
    return wq[q], wk[kv], wv[kv], (wo[q] if o_rows else wo[:, q])


# ---------------------------------------------------------------------------------------------
# gate_heads(x, gates)
# ---------------------------------------------------------------------------------------------


def test_reference_gate_passes(capsys):
    check_gate_heads(gate_heads)
    check_gate_heads(gate_heads, seed=1)
    assert "\u2713" in capsys.readouterr().out


def test_reshape_solution_passes():
    def by_view(x, gates):
        h = gates.shape[0]
        return (x.reshape(*x.shape[:-1], h, -1) * gates[:, None]).reshape(x.shape)

    check_gate_heads(by_view)


def test_gate_not_implemented():
    fails_with(check_gate_heads, not_implemented, "not implemented yet")


@pytest.mark.parametrize("wrong,fragment", [
    (lambda x, g: x * g.repeat(x.shape[-1] // g.shape[0]), "repeat_interleave"),
    (lambda x, g: x.clone(), "gates were not applied"),
    (lambda x, g: x * (1 - g).repeat_interleave(x.shape[-1] // g.shape[0]), "1 - gates"),
    (lambda x, g: x.mul_(g.repeat_interleave(x.shape[-1] // g.shape[0])), "in place"),
])
def test_wrong_gates_are_diagnosed(wrong, fragment):
    fails_with(check_gate_heads, wrong, fragment)


def test_detached_gates_are_diagnosed():
    fails_with(check_gate_heads, lambda x, g: x * torch.tensor(g.tolist()).repeat_interleave(x.shape[-1] // g.shape[0]),
               "does not require grad", "detached")


def test_gate_with_the_wrong_head_gets_a_position():
    def shifted(x, gates):
        return x * gates.roll(1).repeat_interleave(x.shape[-1] // gates.shape[0])

    fails_with(check_gate_heads, shifted, "belongs to head")


# ---------------------------------------------------------------------------------------------
# michel_importance(grads)
# ---------------------------------------------------------------------------------------------


def test_reference_importance_passes():
    check_michel_importance(michel_importance)
    check_michel_importance(michel_importance, seed=1)


def test_sum_over_windows_passes_too():
    check_michel_importance(lambda g: g.abs().sum(0) / g.abs().sum(0).norm(dim=-1, keepdim=True))


def test_importance_not_implemented():
    fails_with(check_michel_importance, not_implemented, "not implemented yet")


def _per_layer(scores, norm):
    return scores / norm(scores)


@pytest.mark.parametrize("wrong,fragment", [
    (lambda g: _per_layer(g.mean(0).abs(), lambda s: s.norm(dim=-1, keepdim=True)), "abs of every window's gradient BEFORE"),
    (lambda g: _per_layer(g.mean(0), lambda s: s.norm(dim=-1, keepdim=True)), "signed gradients (no abs)"),
    (lambda g: _per_layer(g.abs().mean(0), lambda s: s.sum(dim=-1, keepdim=True)), "L1 norm"),
    (lambda g: _per_layer(g.abs().mean(0), lambda s: s.norm()), "ALL layers"),
    (lambda g: _per_layer(g.abs().mean(0), lambda s: s.norm(dim=0, keepdim=True)), "across the layers (dim 0)"),
    (lambda g: g.abs().mean(0), "not normalised"),
    (lambda g: _per_layer(g.pow(2).mean(0), lambda s: s.norm(dim=-1, keepdim=True)), "squared gradients"),
    (lambda g: (g.abs() / g.abs().norm(dim=-1, keepdim=True)).mean(0), "every window's gradients before averaging"),
    (lambda g: g.abs().mean(-1), "one value per window"),
    (lambda g: g.abs_().mean(0) / g.mean(0).norm(dim=-1, keepdim=True), "in place"),
])
def test_wrong_importance_is_diagnosed(wrong, fragment):
    fails_with(check_michel_importance, wrong, fragment)


def test_importance_generic_message_names_a_position():
    fails_with(check_michel_importance, lambda g: michel_importance(g) + 0.01, "at layer", "expected row")


# ---------------------------------------------------------------------------------------------
# choose_heads_within_groups(importance, num_kv_heads, steps)
# ---------------------------------------------------------------------------------------------


def test_reference_choice_passes():
    check_choose_heads_within_groups(choose_within_groups)
    check_choose_heads_within_groups(choose_within_groups, seed=1)


def test_package_choice_passes():
    check_choose_heads_within_groups(lambda imp, kv, steps: choose_heads_to_remove(
        imp, count=steps * kv, num_kv_heads=kv, mode="within_groups"))


def test_choice_not_implemented():
    fails_with(check_choose_heads_within_groups, not_implemented, "not implemented yet")


def test_choice_removing_the_most_important():
    fails_with(check_choose_heads_within_groups, lambda i, kv, s: choose_within_groups(i, kv, s, largest=True), "MOST important")


def test_choice_ranking_single_heads_gives_uneven_groups():
    def single_heads(importance, kv, steps):
        order = importance.flatten().argsort()[: steps * kv].tolist()
        chosen = {}
        for flat in order:
            chosen.setdefault(flat // importance.shape[1], []).append(flat % importance.shape[1])
        return chosen

    fails_with(check_choose_heads_within_groups, single_heads, "same number of query heads", "EACH group")


def test_choice_emptying_a_layer():
    fails_with(check_choose_heads_within_groups,
               lambda i, kv, s: choose_within_groups(i, kv, s, max_steps=i.shape[1] // kv), "every head of layer")


def test_choice_removing_whole_groups():
    fails_with(check_choose_heads_within_groups,
               lambda i, kv, s: choose_heads_to_remove(i, count=s * kv, num_kv_heads=kv, mode="groups"), "whole kv groups")


def test_choice_with_strided_groups():
    def strided(importance, kv, steps):
        layers, heads = importance.shape
        g = heads // kv
        members = torch.arange(heads).view(g, kv).t()
        candidates = []
        for layer in range(layers):
            order = importance[layer][members].argsort(dim=1)
            for j in range(g - 1):
                picked = members.gather(1, order[:, j:j + 1]).flatten().tolist()
                candidates.append((importance[layer, picked].mean().item(), layer, picked))
        candidates.sort(key=lambda c: c[0])
        chosen = {}
        for _s, layer, picked in candidates[:steps]:
            chosen.setdefault(layer, []).extend(picked)
        return chosen

    fails_with(check_choose_heads_within_groups, strided, "strided", "consecutive")


def test_choice_with_the_wrong_count():
    fails_with(check_choose_heads_within_groups, lambda i, kv, s: choose_within_groups(i, kv, s + 1), "you remove")


def test_choice_ranking_steps_by_their_minimum():
    fails_with(check_choose_heads_within_groups, lambda i, kv, s: choose_within_groups(i, kv, s, aggregate="min"),
               "minimum importance")


def test_choice_spread_evenly_over_layers():
    def even(importance, kv, steps):
        layers = importance.shape[0]
        per_layer = {}
        for layer in range(min(steps, layers)):
            scores = importance[layer].view(kv, -1)
            per_layer[layer] = sorted((scores.argsort(dim=1)[:, 0] + torch.arange(kv) * scores.shape[1]).tolist())
        return per_layer

    fails_with(check_choose_heads_within_groups, even, "evenly over the layers")


def test_choice_returning_a_mask():
    fails_with(check_choose_heads_within_groups, lambda i, kv, s: torch.zeros_like(i, dtype=torch.bool), "return a dict")


# ---------------------------------------------------------------------------------------------
# slice_heads(wq, wk, wv, wo, heads_to_remove, head_dim, num_kv_heads)
# ---------------------------------------------------------------------------------------------


def test_reference_slicing_passes(capsys):
    check_slice_heads(slice_heads)
    check_slice_heads(slice_heads, seed=1)
    assert "\u2713" in capsys.readouterr().out


def test_slicing_not_implemented():
    fails_with(check_slice_heads, not_implemented, "not implemented yet")


def test_slicing_rows_of_o_proj():
    fails_with(check_slice_heads, lambda *a: slice_heads(*a, o_rows=True), "ROWS of o_proj", "COLUMNS")


def test_slicing_without_the_head_dim_offset():
    offset = lambda keep, d: torch.cat([torch.arange(h, h + d) for h in keep])  # noqa: E731
    fails_with(check_slice_heads, lambda *a: slice_heads(*a, offset=offset), "start at h * head_dim")


def test_slicing_with_a_strided_layout():
    def wrong(wq, wk, wv, wo, remove, d, kv):
        heads = wq.shape[0] // d
        keep = [h for h in range(heads) if h not in remove]
        q = torch.tensor([i for i in range(heads * d) if i % heads in keep])
        _, k, v, _ = slice_heads(wq, wk, wv, wo, remove, d, kv)
        return wq[q], k, v, wo[:, q]

    fails_with(check_slice_heads, wrong, "contiguous blocks")


def test_slicing_keeping_k_v_of_removed_groups():
    fails_with(check_slice_heads, lambda *a: slice_heads(*a, kv_rule="unchanged"), "still holds every kv head")


def test_slicing_k_v_once_per_query_head():
    fails_with(check_slice_heads, lambda *a: slice_heads(*a, kv_rule="per_query"), "one head per kept QUERY head")


def test_slicing_k_v_of_every_touched_group():
    fails_with(check_slice_heads, lambda *a: slice_heads(*a, kv_rule="touched"), "shared within a group")


def test_slicing_k_v_with_query_indices_crashes_with_a_hint():
    fails_with(check_slice_heads, lambda *a: slice_heads(*a, kv_rule="query"), "raised", "num_kv_heads * head_dim")


def test_slicing_in_the_wrong_order():
    fails_with(check_slice_heads, lambda *a: slice_heads(*a, order=lambda k: sorted(k, reverse=True)), "another order")


def test_slicing_kept_the_removed_heads():
    def removed(wq, wk, wv, wo, remove, d, kv):
        q = rows(sorted(remove), d)
        _, k, v, _ = slice_heads(wq, wk, wv, wo, remove, d, kv)
        return wq[q], k, v, wo[:, q]

    fails_with(check_slice_heads, removed, "heads to REMOVE")


def test_slicing_in_place_and_forgetting_o():
    def forgot_o(wq, wk, wv, wo, remove, d, kv):
        q, k, v, _ = slice_heads(wq, wk, wv, wo, remove, d, kv)
        return q, k, v, wo

    fails_with(check_slice_heads, forgot_o, "wo still has shape")

    def in_place(wq, wk, wv, wo, remove, d, kv):
        result = slice_heads(wq, wk, wv, wo, remove, d, kv)
        wq.zero_()
        return result

    fails_with(check_slice_heads, in_place, "in place")


def test_checks_do_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_gate_heads(gate_heads)
    check_slice_heads(slice_heads)
    assert torch.equal(torch.rand(3), expected)
