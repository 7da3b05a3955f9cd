"""MLP width pruning (Wanda-sp / FLAP fluctuation / activation-norm neuron scores, neuron removal) on tiny models."""

import copy

import pytest
import torch

from pruning_course.architectures import weight_matrix
from pruning_course.architectures import layout_for
from pruning_course.structured.resize import mlp_width
from pruning_course.structured.saving import load_pruned, save_pruned
from pruning_course.structured.width import (
    METRICS,
    choose_neurons_to_keep,
    mlp_neuron_importance,
    neuron_scores,
    prune_mlp_width,
)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def down_projections(model, adapter):
    name = layout_for(adapter).mlp_out
    return [block.get_submodule(name) for block in adapter.blocks(model)]


def zero_neurons(model, adapter, keep):
    """The masked reference: zero the down-projection columns of every neuron not in ``keep``."""
    for layer, down in enumerate(down_projections(model, adapter)):
        if layer in keep:
            drop = torch.ones(weight_matrix(down).shape[1], dtype=torch.bool)
            drop[keep[layer]] = False
            weight_matrix(down)[:, drop] = 0.0


def down_inputs(model, adapter, windows):
    """Every block's down-projection inputs over all calibration tokens, from one plain forward pass."""
    captured = {i: [] for i in range(len(adapter.blocks(model)))}
    handles = [
        down.register_forward_hook(lambda _m, args, _o, i=i: captured[i].append(args[0].reshape(-1, args[0].shape[-1])))
        for i, down in enumerate(down_projections(model, adapter))
    ]
    try:
        logits(model, windows)
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(captured[i]).double() for i in sorted(captured)]


# --- scores -----------------------------------------------------------------------------------


def test_neuron_scores_by_hand():
    weight = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -0.5]])  # (out=2, in=3)
    mean_sq = torch.tensor([4.0, 1.0, 9.0])
    variance = torch.tensor([1.0, 2.0, 0.0])
    torch.testing.assert_close(neuron_scores(weight, mean_sq), torch.tensor([2.0 * 2, 1.0 * 1, 0.5 * 3]))
    torch.testing.assert_close(neuron_scores(weight, mean_sq, metric="activation"), torch.tensor([2.0, 1.0, 3.0]))
    torch.testing.assert_close(neuron_scores(weight, mean_sq, variance, "fluctuation"), torch.tensor([10.0, 8.0, 0.0]))
    with pytest.raises(ValueError, match="needs the variance"):
        neuron_scores(weight, mean_sq, metric="fluctuation")
    with pytest.raises(ValueError, match="unknown metric"):
        neuron_scores(weight, mean_sq, metric="magnitude")
    with pytest.raises(ValueError, match="one mean square per input feature"):
        neuron_scores(weight, mean_sq[:2])


@pytest.mark.parametrize("metric", METRICS)
def test_importance_matches_the_activations_of_a_full_forward(tiny, windows, metric):
    model, adapter, _ = tiny
    scores = mlp_neuron_importance(model, adapter, windows, metric, batch_size=3, progress=False)
    inputs = down_inputs(model, adapter, windows)
    assert len(scores) == len(adapter.blocks(model))
    for layer, (a, down) in enumerate(zip(inputs, down_projections(model, adapter))):
        w = weight_matrix(down).double()
        rms = a.pow(2).mean(dim=0).sqrt()
        expected = {
            "wanda_sp": w.abs().mean(dim=0) * rms,
            "activation": rms,
            "fluctuation": a.var(dim=0, unbiased=True) * w.pow(2).sum(dim=0),
        }[metric]
        assert scores[layer].shape == (mlp_width(adapter.blocks(model)[layer], adapter),)
        torch.testing.assert_close(scores[layer].double(), expected, rtol=1e-4, atol=1e-6)


def test_choose_neurons_keeps_the_top_scores_in_every_layer():
    scores = [torch.tensor([0.5, 0.1, 0.9, 0.3]), torch.tensor([1.0, 2.0, 3.0, 0.0, 5.0, 4.0, 0.5, 0.2, 0.1, 0.3])]
    keep = choose_neurons_to_keep(scores, 0.5)
    assert keep[0].tolist() == [0, 2] and keep[1].tolist() == [0, 1, 2, 4, 5]
    assert choose_neurons_to_keep(scores, 0.75)[1].numel() == 10 - 2  # floor(10 * 0.25) removed
    assert choose_neurons_to_keep(scores, 1.0)[0].tolist() == [0, 1, 2, 3]


# --- removal ----------------------------------------------------------------------------------


def test_removed_model_equals_zeroing_the_same_neurons(tiny, windows):
    model, adapter, _ = tiny
    reference = copy.deepcopy(model)
    width = mlp_width(adapter.blocks(model)[0], adapter)
    generator = torch.Generator().manual_seed(3)
    keep = {0: torch.randperm(width, generator=generator)[: width // 3], 1: torch.arange(width - 7)}
    zero_neurons(reference, adapter, keep)
    prune_mlp_width(model, adapter, keep)
    assert [mlp_width(b, adapter) for b in adapter.blocks(model)] == [width // 3, width - 7]
    torch.testing.assert_close(logits(model, windows), logits(reference, windows), rtol=1e-5, atol=1e-5)


def test_shapes_after_removal(tiny):
    model, adapter, _ = tiny
    hidden = model.config.hidden_size
    prune_mlp_width(model, adapter, {1: [0, 5, 9]})
    block = adapter.blocks(model)[1]
    if adapter.family == "llama":
        assert block.mlp.gate_proj.weight.shape == block.mlp.up_proj.weight.shape == (3, hidden)
        assert block.mlp.down_proj.weight.shape == (hidden, 3) and block.mlp.intermediate_size == 3
    elif adapter.family == "gpt2":  # Conv1D stores (in, out)
        assert block.mlp.c_fc.weight.shape == (hidden, 3) and block.mlp.c_fc.bias.shape == (3,)
        assert block.mlp.c_proj.weight.shape == (3, hidden) and block.mlp.c_proj.bias.shape == (hidden,)
        assert (block.mlp.c_fc.nf, block.mlp.c_proj.nx) == (3, 3)
    else:
        assert block.fc1.weight.shape == (3, hidden) and block.fc1.bias.shape == (3,)
        assert block.fc2.weight.shape == (hidden, 3) and block.fc2.in_features == 3
    assert mlp_width(adapter.blocks(model)[0], adapter) > 3  # layer 0 untouched


def test_a_keep_ratio_uses_the_scores(tiny, windows):
    model, adapter, _ = tiny
    scores = mlp_neuron_importance(model, adapter, windows, progress=False)
    width = scores[0].numel()
    chosen = choose_neurons_to_keep(scores, 0.75)
    reference = copy.deepcopy(model)
    zero_neurons(reference, adapter, chosen)
    prune_mlp_width(model, adapter, 0.75, scores=scores)
    assert [mlp_width(b, adapter) for b in adapter.blocks(model)] == [width - width // 4] * 2
    torch.testing.assert_close(logits(model, windows), logits(reference, windows), rtol=1e-5, atol=1e-5)


def test_save_and_reload_round_trip(tiny, windows, tmp_path):
    model, adapter, tokenizer = tiny
    scores = mlp_neuron_importance(model, adapter, windows, "fluctuation", progress=False)
    prune_mlp_width(model, adapter, 0.5, scores=scores)
    prune_mlp_width(model, adapter, {1: torch.arange(10)})
    expected = logits(model, windows)
    save_pruned(model, tmp_path, tokenizer)
    reloaded = load_pruned(tmp_path)
    assert [mlp_width(b, adapter) for b in adapter.blocks(reloaded)] == [scores[0].numel() // 2, 10]
    torch.testing.assert_close(logits(reloaded, windows), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "keep, message",
    [
        ({0: []}, "cannot remove all"),
        ({0: torch.tensor([], dtype=torch.long)}, "cannot remove all"),
        ({0: [0, 0, 1]}, "duplicates"),
        ({0: [10_000]}, "outside that range"),
        ({0: [-1]}, "outside that range"),
        ({0: torch.tensor([0.0, 1.0])}, "integer indices"),
        ({2: [0]}, "out of range"),
        ({1: [1, 2], 5: [0]}, "out of range"),
        (0.0, r"keep ratio must be in \(0, 1\]"),
        (1.5, r"keep ratio must be in \(0, 1\]"),
        (-0.25, r"keep ratio must be in \(0, 1\]"),
        (1e-12, "keeps no neuron"),  # floor rounding keeps 1 neuron for any ratio above ~1e-9
    ],
)
def test_bad_input_is_rejected_and_leaves_the_model_untouched(tiny, windows, keep, message):
    model, adapter, _ = tiny
    before = logits(model, windows)
    widths = [mlp_width(b, adapter) for b in adapter.blocks(model)]
    scores = [torch.rand(w) for w in widths]
    with pytest.raises(ValueError, match=message):
        prune_mlp_width(model, adapter, keep, scores=scores)
    assert [mlp_width(b, adapter) for b in adapter.blocks(model)] == widths
    torch.testing.assert_close(logits(model, windows), before, rtol=0, atol=0)


def test_a_ratio_without_scores_is_rejected(tiny):
    model, adapter, _ = tiny
    with pytest.raises(ValueError, match="needs scores"):
        prune_mlp_width(model, adapter, 0.5)


def test_unknown_metric_is_rejected(tiny, windows):
    model, adapter, _ = tiny
    with pytest.raises(ValueError, match="unknown metric"):
        mlp_neuron_importance(model, adapter, windows, "random", progress=False)
