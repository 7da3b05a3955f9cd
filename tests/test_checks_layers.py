"""The graded checks of notebook 05 (layers): the reference passes, each classic mistake gets its diagnosis."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning_course.checks.layers import (
    _hidden_pair,
    _unclamped_cosine_exceeds_one,
    angular_distance,
    check_angular_distance,
    check_choose_consecutive_blocks,
    check_remove_blocks,
)
from pruning_course.architectures import adapter_for
from pruning_course.checks import generator
from pruning_course.testing import tiny_random_model
from pruning_course.structured import angular_distances, choose_consecutive_blocks, remove_blocks

from check_support import fails_with, not_implemented


# ---------------------------------------------------------------------------------------------
# the reference angular_distance is the package's
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("last_token_only", [False, True])
def test_reference_distance_equals_the_package_on_block_boundaries(last_token_only):
    model = tiny_random_model("llama", seed=0, num_blocks=4)
    adapter = adapter_for(model)
    windows = torch.randint(0, 384, (3, 10), generator=torch.Generator().manual_seed(0))
    states = []
    hooks = [b.register_forward_pre_hook(lambda _m, args: states.append(args[0])) for b in adapter.blocks(model)]
    hooks.append(adapter.blocks(model)[-1].register_forward_hook(lambda _m, _a, out: states.append(out)))
    with torch.no_grad():
        model(input_ids=windows, use_cache=False)
    for hook in hooks:
        hook.remove()
    for n in (1, 3):
        package = angular_distances(model, adapter, windows, n=n, last_token_only=last_token_only)
        ours = [angular_distance(states[l], states[l + n], last_token_only) for l in range(5 - n)]
        assert ours == pytest.approx(package.tolist(), abs=1e-6)


def test_the_clamp_case_really_produces_cosines_above_one():
    gen = generator(50)
    for shape in ((2, 7, 16), (3, 5, 10), (1, 9, 24)):
        _hidden_pair(gen, shape)
    x_in, x_out = _hidden_pair(gen, (3, 8, 16), identical_tokens=5)
    assert _unclamped_cosine_exceeds_one(x_in, x_out)
    assert angular_distance(x_in, x_out) > 0.02  # the other tokens still move


# ---------------------------------------------------------------------------------------------
# angular_distance(x_in, x_out)
# ---------------------------------------------------------------------------------------------


def distance(x_in, x_out):
    """The notebook's solution."""
    cos = F.cosine_similarity(x_in, x_out, dim=-1).clamp(-1.0, 1.0)
    return (torch.arccos(cos) / math.pi).mean()


def distance_by_hand_float64(x_in, x_out):
    a, b = x_in.double(), x_out.double()
    cos = ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).clamp(-1, 1)
    return float(torch.arccos(cos).mean() / math.pi)


def test_reference_distances_pass(capsys):
    check_angular_distance(distance)
    check_angular_distance(distance_by_hand_float64)
    check_angular_distance(lambda a, b: angular_distance(a, b))
    assert "\u2713" in capsys.readouterr().out


def test_distance_not_implemented():
    fails_with(check_angular_distance, not_implemented, "not implemented yet")


@pytest.mark.parametrize(
    "wrong, fragments",
    [
        (lambda a, b: distance(a, b) * math.pi, ("divide by pi",)),
        (lambda a, b: distance(a, b) * 180, ("DEGREES",)),
        (lambda a, b: F.cosine_similarity(a, b, dim=-1).mean(), ("cosine SIMILARITY",)),
        (lambda a, b: (1 - F.cosine_similarity(a, b, dim=-1)).mean(), ("Block Influence",)),
        (lambda a, b: 1 - distance(a, b), ("1 - the distance",)),
        (lambda a, b: distance(a[:, -1], b[:, -1]), ("LAST token", "every token")),
        (lambda a, b: distance(a[:, 0], b[:, 0]), ("FIRST token",)),
        (lambda a, b: torch.arccos(F.cosine_similarity(a, b, dim=-1).mean()) / math.pi, ("MEAN cosine",)),
        (lambda a, b: distance(a.reshape(-1, a.shape[-1]).mean(0), b.reshape(-1, b.shape[-1]).mean(0)),
         ("averaged the hidden VECTORS",)),
        (lambda a, b: distance(a.mean(1), b.mean(1)), ("each sequence's hidden vectors",)),
        (lambda a, b: (torch.arccos(F.cosine_similarity(a, b).clamp(-1, 1)) / math.pi).mean(), ("dim=1", "dim=-1")),
        (lambda a, b: (torch.arccos(F.cosine_similarity(a, b, dim=0).clamp(-1, 1)) / math.pi).mean(), ("BATCH axis",)),
        (lambda a, b: distance(a.reshape(-1), b.reshape(-1)), ("flattened",)),
        (lambda a, b: torch.arccos(F.cosine_similarity(a, b, dim=-1).clamp(-1, 1)) / math.pi, ("shape (2, 7)", "ONE number")),
        (lambda a, b: "0.3", ("should return a float",)),
    ],
)
def test_distance_mistakes_are_diagnosed(wrong, fragments):
    fails_with(check_angular_distance, wrong, *fragments)


def test_distance_without_clamp_is_diagnosed_as_nan():
    def no_clamp(a, b):
        return (torch.arccos(F.cosine_similarity(a, b, dim=-1)) / math.pi).mean()

    def no_clamp_by_hand(a, b):
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        return (torch.arccos(cos) / math.pi).mean()

    for wrong in (no_clamp, no_clamp_by_hand):
        fails_with(check_angular_distance, wrong, "nan", "1.0000001", "clamp(-1, 1)", "last 5 tokens")


def test_distance_modifying_its_inputs_is_diagnosed():
    def in_place(a, b):
        a /= a.norm(dim=-1, keepdim=True)
        b /= b.norm(dim=-1, keepdim=True)
        return (torch.arccos((a * b).sum(-1).clamp(-1, 1)) / math.pi).mean()

    fails_with(check_angular_distance, in_place, "in place")


def test_distance_wrong_only_on_real_hidden_states_gets_the_generic_message():
    def wrong_on_wide_states(a, b):
        value = distance(a, b)
        return value + 0.01 if a.shape[-1] == 64 else value  # the tiny Llama is 64 wide, the synthetic cases are not

    message = fails_with(check_angular_distance, wrong_on_wide_states, "tiny Llama", "expected mean over tokens")
    assert "block 0" in message


# ---------------------------------------------------------------------------------------------
# choose_consecutive_blocks(distances, n)
# ---------------------------------------------------------------------------------------------


def choose(distances, n):
    """The notebook's solution."""
    start = int(torch.argmin(distances))
    return list(range(start, start + n))


def test_reference_choices_pass(capsys):
    check_choose_consecutive_blocks(choose)
    check_choose_consecutive_blocks(choose_consecutive_blocks)
    check_choose_consecutive_blocks(lambda d, n: torch.arange(int(d.argmin()), int(d.argmin()) + n))
    check_choose_consecutive_blocks(lambda d, n: range(int(d.argmin()), int(d.argmin()) + n))
    assert "\u2713" in capsys.readouterr().out


def test_choice_not_implemented():
    fails_with(check_choose_consecutive_blocks, not_implemented, "not implemented yet")


@pytest.mark.parametrize(
    "wrong, fragments",
    [
        (lambda d, n: int(d.argmin()), ("single number", "LIST")),
        (lambda d, n: list(range(int(d.argmax()), int(d.argmax()) + n)), ("LARGEST",)),
        (lambda d, n: list(range(int(d.argmin()), int(d.argmin()) + n + 1)), ("off by one", "9 blocks")),
        (lambda d, n: list(range(int(d.argmin()), int(d.argmin()) + n - 1)), ("off by one", "7 blocks")),
        (lambda d, n: list(range(int(d.argmin()) - n + 1, int(d.argmin()) + 1)), ("STARTS at l",)),
        (lambda d, n: list(range(int(d.argmin()) + 1, int(d.argmin()) + n + 1)), ("shifted by one",)),
        (lambda d, n: sorted(torch.argsort(d)[:n].tolist()), ("8 smallest distances", "single best window")),
        (lambda d, n: list(range(int(d.argmin()), int(d.argmin()) + n))[::-1], ("wrong order",)),
        (lambda d, n: list(range(int(d.argmin()), int(d.argmin()) + n)) if n != 2 else [5, 6], ("earliest window",)),
        (lambda d, n: [0.5] * n, ("whole-number",)),
        (lambda d, n: "12", ("should return a list",)),
    ],
)
def test_choice_mistakes_are_diagnosed(wrong, fragments):
    fails_with(check_choose_consecutive_blocks, wrong, *fragments)


def test_choice_modifying_the_distances_is_diagnosed():
    def in_place(d, n):
        d[int(d.argmin())] = float("inf")
        return choose(d.clone().fill_(0), n)

    fails_with(check_choose_consecutive_blocks, in_place, "in place")


# ---------------------------------------------------------------------------------------------
# remove_blocks(model, adapter, indices)
# ---------------------------------------------------------------------------------------------


def validate(blocks, indices):
    bad = [i for i in indices if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"block indices {bad} are out of range for {len(blocks)} blocks")
    if len(set(indices)) >= len(blocks):
        raise ValueError("cannot remove every block")


def renumber(blocks):
    for position, block in enumerate(blocks):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = position


def remove(model, adapter, indices, *, order=lambda ix: sorted(set(ix), reverse=True), do_renumber=True,
           do_config=True, do_validate=True):
    """The notebook's solution, with switches for the classic mistakes."""
    blocks = adapter.blocks(model)
    if do_validate:
        validate(blocks, indices)
    for index in order(indices):
        del blocks[index]
    if do_renumber:
        renumber(blocks)
    if do_config:
        model.config.num_hidden_layers = len(blocks)
    return model


def test_reference_removal_passes(capsys):
    check_remove_blocks(remove)
    check_remove_blocks(lambda m, a, ix: None if remove(m, a, ix) else None)  # returning None is accepted
    check_remove_blocks(remove_blocks)
    assert "\u2713" in capsys.readouterr().out


def test_removal_building_a_new_module_list_passes():
    def rebuild(model, adapter, indices):
        blocks = adapter.blocks(model)
        validate(blocks, indices)
        kept = nn.ModuleList(b for i, b in enumerate(blocks) if i not in indices)
        parent, _, attribute = adapter.blocks_path.rpartition(".")
        setattr(model.get_submodule(parent), attribute, kept)
        renumber(kept)
        model.config.num_hidden_layers = len(kept)
        return model

    check_remove_blocks(rebuild)


def test_removal_not_implemented():
    fails_with(check_remove_blocks, not_implemented, "not implemented yet")


def test_removal_deleting_in_increasing_order():
    fails_with(check_remove_blocks, lambda m, a, ix: remove(m, a, ix, order=sorted),
               "kept blocks [0, 2] instead of [0, 3]", "increasing order", "reverse=True")


def test_removal_keeping_the_blocks_to_remove():
    def inverted(model, adapter, indices):
        blocks = adapter.blocks(model)
        return remove(model, adapter, [i for i in range(len(blocks)) if i not in indices], do_validate=False)

    fails_with(check_remove_blocks, inverted, "blocks to REMOVE")


def test_removal_without_renumbering_layer_idx():
    message = fails_with(check_remove_blocks, lambda m, a, ix: remove(m, a, ix, do_renumber=False),
                         "still has layer_idx 3", "KV cache", "module.layer_idx")
    assert "IndexError" in message  # the consequence, shown on the learner's own model


def test_removal_without_renumbering_nor_config_update():
    message = fails_with(check_remove_blocks, lambda m, a, ix: remove(m, a, ix, do_renumber=False, do_config=False),
                         "still has layer_idx 3")
    assert "IndexError" not in message


def test_removal_without_updating_num_hidden_layers():
    fails_with(check_remove_blocks, lambda m, a, ix: remove(m, a, ix, do_config=False),
               "num_hidden_layers is 4", "from_pretrained would rebuild 4 blocks")


def test_removal_leaving_a_plain_list():
    def plain_list(model, adapter, indices):
        blocks = adapter.blocks(model)
        validate(blocks, indices)
        kept = [b for i, b in enumerate(blocks) if i not in indices]
        renumber(kept)
        parent, _, attribute = adapter.blocks_path.rpartition(".")
        module = model.get_submodule(parent)
        del module._modules[attribute]
        object.__setattr__(module, attribute, kept)
        model.config.num_hidden_layers = len(kept)
        return model

    fails_with(check_remove_blocks, plain_list, "nn.ModuleList")


def test_removal_changing_other_weights():
    def also_scales(model, adapter, indices):
        remove(model, adapter, indices)
        with torch.no_grad():
            adapter.embeddings(model)[0].weight.mul_(1.5)
        return model

    fails_with(check_remove_blocks, also_scales, "logits differ")


def test_removal_returning_something_else():
    fails_with(check_remove_blocks, lambda m, a, ix: [remove(m, a, ix)], "should return the model")


def test_removal_without_validation():
    fails_with(check_remove_blocks, lambda m, a, ix: remove(m, a, ix, do_validate=False),
               "[1, 4]", "raised IndexError", "raise ValueError")


def test_removal_accepting_negative_indices():
    def negative_ok(model, adapter, indices):
        blocks = adapter.blocks(model)
        if any(i >= len(blocks) for i in indices) or len(set(indices)) >= len(blocks):
            raise ValueError("bad indices")
        return remove(model, adapter, [i % len(blocks) for i in indices], do_validate=False)

    fails_with(check_remove_blocks, negative_ok, "[-1]", "returned without an error", "negative")


def test_removal_allowing_every_block_to_go():
    def all_ok(model, adapter, indices):
        blocks = adapter.blocks(model)
        if any(not 0 <= i < len(blocks) for i in indices):
            raise ValueError("bad indices")
        return remove(model, adapter, indices, do_validate=False)

    fails_with(check_remove_blocks, all_ok, "[0, 1, 2, 3]", "every block")


def test_removal_validating_too_late():
    def late(model, adapter, indices):
        blocks = adapter.blocks(model)
        num_blocks = len(blocks)
        for index in sorted((i for i in indices if 0 <= i < num_blocks), reverse=True):
            del blocks[index]
        validate(list(range(num_blocks)), indices)
        renumber(blocks)
        model.config.num_hidden_layers = len(blocks)
        return model

    fails_with(check_remove_blocks, late, "BEFORE")


def test_removal_check_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_remove_blocks(remove)
    assert torch.equal(torch.rand(3), expected)
