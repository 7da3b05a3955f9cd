"""Movement pruning (Sanh et al., 2020), gradual magnitude pruning and the fine-pruning loop, on tiny models."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from pruning_course.architectures import adapter_for, weight_matrix
from pruning_course.testing import tiny_model
from pruning_course.evaluate import perplexity
from pruning_course.finetune import FineTuneConfig, cached_perplexity, finetune_prune, prepare_data
from pruning_course.masks import num_to_prune, per_matrix_mask
from pruning_course.unstructured.movement import (
    MaskedLinear,
    ThresholdBinarizer,
    TopKBinarizer,
    cubic_sparsity,
    fold_masks,
    global_topk_masks,
    magnitude_binarize,
    mask_model,
    masked_linears,
    select_linears,
    set_pruning_state,
    soft_movement_penalty,
    soft_threshold_for_sparsity,
    soft_threshold_schedule,
    threshold_mask,
    topk_mask,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- binarizers -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 13), (16, 16), (1, 5)])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_topk_binarizer_keeps_exactly_the_highest_scores(shape, sparsity):
    scores = torch.randn(shape, generator=_gen())
    mask = TopKBinarizer.apply(scores, sparsity)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    n = scores.numel()
    assert int(mask.sum()) == n - num_to_prune(n, sparsity)
    kept, dropped = scores[mask.bool()], scores[~mask.bool()]
    if dropped.numel():
        assert kept.min() > dropped.max()


def test_topk_mask_matches_the_per_matrix_mask_and_breaks_ties_exactly():
    scores = torch.randn(24, 40, generator=_gen(3))
    for sparsity in (0.1, 0.5, 0.97):
        assert torch.equal(topk_mask(scores, sparsity), per_matrix_mask(scores, sparsity))
    tied = torch.zeros(10, 10)  # constant initial scores: every score ties
    assert int((~topk_mask(tied, 0.37)).sum()) == 37
    steps = torch.arange(6.0).repeat_interleave(10).view(6, 10)  # six tied levels of ten
    mask = topk_mask(steps, 0.25)  # removes the 10 zeros and 5 of the ones
    assert int((~mask).sum()) == 15 and not mask[0].any() and int(mask[1].sum()) == 5 and mask[2:].all()
    magnitude = torch.rand(6, 10, generator=_gen(4))
    mask = topk_mask(steps, 0.25, tiebreak=magnitude)  # the ones with the largest tiebreak survive
    assert int(mask[1].sum()) == 5 and magnitude[1][mask[1]].min() > magnitude[1][~mask[1]].max()


def test_hard_movement_with_equal_scores_keeps_the_larger_weights():
    torch.manual_seed(0)
    layer = MaskedLinear(nn.Linear(8, 6), method="hard")  # scores start at the constant 0
    layer.sparsity = 0.5
    assert torch.equal(layer.keep_mask(), magnitude_binarize(layer.linear.weight, 0.5).bool())


def test_topk_binarizer_at_zero_sparsity_keeps_everything():
    assert TopKBinarizer.apply(torch.randn(4, 6, generator=_gen()), 0.0).all()


def test_binarizers_pass_the_gradient_straight_through():
    upstream = torch.randn(6, 10, generator=_gen(1))
    for make_mask in (lambda s: TopKBinarizer.apply(s, 0.6), lambda s: ThresholdBinarizer.apply(s, 0.4, True)):
        scores = torch.randn(6, 10, generator=_gen(2), requires_grad=True)
        (make_mask(scores) * upstream).sum().backward()
        assert torch.equal(scores.grad, upstream)  # d mask / d S = identity, including where the mask is 0


def _analytic_case(layer, sparsity=0.4):
    """L = sum(G * layer(x)): dL/dW' = G^T x, so the straight-through dL/dS = W * (G^T x) and dL/dW = M * (G^T x)."""
    masked = MaskedLinear(layer, method="hard")
    with torch.no_grad():
        masked.scores.copy_(torch.randn(masked.scores.shape, generator=_gen(3)))
    masked.sparsity = sparsity
    x = torch.randn(4, 5, generator=_gen(4))
    upstream = torch.randn(4, 3, generator=_gen(5))
    (masked(x) * upstream).sum().backward()
    grad_w_eff = upstream.t() @ x  # (out, in)
    weight = weight_matrix(layer)
    mask = masked.keep_mask().float()
    return masked, grad_w_eff, weight, mask


def test_straight_through_score_gradient_equals_the_analytic_one():
    torch.manual_seed(0)
    masked, grad_w_eff, weight, mask = _analytic_case(nn.Linear(5, 3))
    assert 0 < mask.sum() < mask.numel()
    assert torch.allclose(masked.scores.grad, weight * grad_w_eff, atol=1e-6)
    assert torch.allclose(masked.linear.weight.grad, mask * grad_w_eff, atol=1e-6)


def test_straight_through_gradient_with_a_gpt2_conv1d():
    torch.manual_seed(0)
    layer = Conv1D(3, 5)  # stores W as (in, out)
    nn.init.normal_(layer.weight)
    masked, grad_w_eff, weight, mask = _analytic_case(layer)
    assert masked.scores.shape == (3, 5)
    assert torch.allclose(masked.scores.grad, weight * grad_w_eff, atol=1e-6)
    assert torch.allclose(masked.linear.weight.grad, (mask * grad_w_eff).t(), atol=1e-6)


def test_threshold_mask_is_sigmoid_above_tau_with_a_floor():
    scores = torch.tensor([[-3.0, -1.0, 0.0, 2.0]])
    assert threshold_mask(scores, 0.2).tolist() == [[False, True, True, True]]  # sigmoid(-1) = 0.27
    assert threshold_mask(scores, 0.6).tolist() == [[False, False, False, True]]
    very_low = torch.randn(40, 50, generator=_gen()) - 20
    floor = threshold_mask(very_low, 0.1)
    assert int(floor.sum()) == int(0.005 * very_low.numel()) + 1
    assert very_low[floor].min() > very_low[~floor].max()


def test_magnitude_binarizer_keeps_the_largest_weights():
    weight = torch.tensor([[0.1, -4.0, 3.0, -0.2], [2.0, 0.0, -1.0, 5.0]])
    assert magnitude_binarize(weight, 0.5).bool().tolist() == [[False, True, True, False], [True, False, False, True]]


def test_global_masks_and_the_soft_threshold_for_a_sparsity(tokenizer):
    model, _ = tiny_model("llama", tokenizer=tokenizer)
    adapter = adapter_for(model)
    layers = mask_model(model, adapter, select_linears(model, adapter, [-1]), method="soft")
    with torch.no_grad():
        for i, layer in enumerate(layers.values()):
            layer.scores.normal_(mean=i / 2, generator=_gen(i))  # matrices with different score levels
    scores = {n: m.scores for n, m in layers.items()}
    masks = global_topk_masks(scores, 0.6)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == num_to_prune(total, 0.6)
    per_matrix = [float((~m).float().mean()) for m in masks.values()]
    assert max(per_matrix) - min(per_matrix) > 0.3  # one threshold: each matrix its own sparsity
    tau = soft_threshold_for_sparsity(model, 0.6)
    set_pruning_state(model, threshold=tau)
    assert all(torch.equal(layers[n].keep_mask(), masks[n]) for n in masks)  # sigmoid(S) > tau is the same cut
    assert soft_threshold_for_sparsity(model, 0.0) == 0.0
    folded = fold_masks(model, sparsity=0.6, scope="global")
    assert all(torch.equal(folded[n], masks[n]) for n in masks)


def test_soft_penalty_is_the_mean_sigmoid_of_the_scores_and_pulls_them_down(tokenizer):
    model, _ = tiny_model("llama", tokenizer=tokenizer)
    adapter = adapter_for(model)
    layers = mask_model(model, adapter, select_linears(model, adapter, [-1]), method="soft")
    with torch.no_grad():
        for i, layer in enumerate(layers.values()):
            layer.scores.normal_(generator=_gen(i))
    penalty = soft_movement_penalty(model)
    expected = torch.stack([torch.sigmoid(m.scores).mean() for m in layers.values()]).mean()
    assert torch.allclose(penalty, expected)
    penalty.backward()
    assert all((m.scores.grad > 0).all() for m in layers.values())  # gradient descent lowers every score


# --- schedules --------------------------------------------------------------------------------


def test_cubic_schedule_values_at_known_steps():
    s = lambda t: cubic_sparsity(t, total_steps=100, final_sparsity=0.9, warmup_steps=10, cooldown_steps=20)  # noqa: E731
    assert s(0) == 0.0 and s(9) == 0.0  # 10 dense warm-up steps: 0 .. 9
    assert s(10) == pytest.approx(0.9 - 0.9 * (1 - 1 / 70) ** 3)  # first of the 70 pruning steps
    assert s(44) == pytest.approx(0.9 - 0.9 * 0.5**3)  # half-way: (1 - 35/70)^3
    assert s(79) == pytest.approx(0.9)  # the last pruning step reaches the target
    assert s(80) == 0.9 and s(99) == 0.9  # 20 cool-down steps: 80 .. 99
    values = [s(t) for t in range(100)]
    assert all(a < b for a, b in zip(values[9:80], values[10:80]))  # strictly increasing while pruning
    assert cubic_sparsity(4, 10, 0.8, initial_sparsity=0.2) == pytest.approx(0.8 - 0.6 * 0.5**3)


def test_soft_schedule_scales_lambda_with_the_threshold():
    tau, lam = soft_threshold_schedule(44, 100, final_threshold=0.1, final_lambda=400, warmup_steps=10, cooldown_steps=20)
    assert tau == pytest.approx(0.1 * (1 - 0.5**3))
    assert lam == pytest.approx(400 * tau / 0.1)
    assert soft_threshold_schedule(0, 100, 0.1, 400, warmup_steps=10) == (0.0, 0.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(final_sparsity=1.0), "sparsity must be in"),
        (dict(final_sparsity=-0.1), "sparsity must be in"),
        (dict(final_sparsity=90), "did you mean a fraction"),
        (dict(final_sparsity=0.5, warmup_steps=60, cooldown_steps=50), "exceed total_steps"),
        (dict(final_sparsity=0.5, initial_sparsity=0.6), "initial_sparsity"),
        (dict(final_sparsity=0.5, step=-1), "step must be"),
    ],
)
def test_schedule_rejects_bad_input(kwargs, message):
    kwargs = {"step": 0, "total_steps": 100, **kwargs}
    with pytest.raises(ValueError, match=message):
        cubic_sparsity(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sparsity=1.5), "sparsity must be in"),
        (dict(method="hard", sparsity=None), "needs a final sparsity"),
        (dict(method="movement"), "unknown method"),
        (dict(steps=100, warmup_steps=60, cooldown_steps=50), "exceed total_steps"),
        (dict(method="soft", soft_threshold=1.5), "final_threshold"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_finetune_config_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FineTuneConfig(**kwargs)


def test_masking_rejects_unknown_layers_and_methods(tokenizer):
    model, _ = tiny_model("llama", tokenizer=tokenizer)
    adapter = adapter_for(model)
    with pytest.raises(ValueError, match="never masked"):
        mask_model(model, adapter, ["lm_head"])
    with pytest.raises(ValueError, match="unknown pruning method"):
        mask_model(model, adapter, method="movement")
    mask_model(model, adapter)
    with pytest.raises(ValueError, match="already has masked layers"):
        mask_model(model, adapter)


# --- masking a model and folding the masks ------------------------------------------------------


def test_masked_model_at_zero_sparsity_computes_the_same_function(tiny, windows):
    model, adapter, _ = tiny
    with torch.no_grad():
        reference = model(input_ids=windows).logits
        mask_model(model, adapter, method="hard")
        assert torch.allclose(model(input_ids=windows).logits, reference, atol=1e-5)


@pytest.mark.parametrize("method", ["hard", "magnitude"])
def test_folded_weights_have_exactly_the_target_sparsity(tiny, method):
    model, adapter, _ = tiny
    layers = mask_model(model, adapter, method=method)
    with torch.no_grad():
        for i, layer in enumerate(layers.values()):
            if layer.scores is not None:
                layer.scores.normal_(generator=_gen(i))
    set_pruning_state(model, sparsity=0.7)
    masks = fold_masks(model)
    assert not masked_linears(model)
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        weight = weight_matrix(modules[name])
        assert int((weight == 0).sum()) == num_to_prune(weight.numel(), 0.7), name
        assert torch.equal(weight != 0, mask)


def test_fold_with_a_sparsity_keeps_the_top_scores_of_soft_layers(tokenizer):
    model, _ = tiny_model("gpt2", tokenizer=tokenizer)
    adapter = adapter_for(model)
    layers = mask_model(model, adapter, method="soft")
    with torch.no_grad():
        for i, layer in enumerate(layers.values()):
            layer.scores.normal_(generator=_gen(i))
    scores = {name: layer.scores.detach().clone() for name, layer in layers.items()}
    set_pruning_state(model, threshold=0.5)
    masks = fold_masks(model, sparsity=0.8)
    for name, mask in masks.items():
        assert int((~mask).sum()) == num_to_prune(mask.numel(), 0.8)
        assert scores[name][mask].min() > scores[name][~mask].max()


def test_folded_model_saves_reloads_and_matches_the_masked_logits(tiny, windows, tmp_path):
    model, adapter, _ = tiny
    layers = mask_model(model, adapter, select_linears(model, adapter, name_parts=None), method="hard")
    with torch.no_grad():
        for i, layer in enumerate(layers.values()):
            layer.scores.normal_(generator=_gen(i))
        set_pruning_state(model, sparsity=0.6)
        masked_logits = model(input_ids=windows).logits
        fold_masks(model)
        assert torch.allclose(model(input_ids=windows).logits, masked_logits, atol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=windows).logits, masked_logits, atol=1e-5)
    for name, module in adapter.named_linears(reloaded).items():
        weight = weight_matrix(module)
        assert int((weight == 0).sum()) == num_to_prune(weight.numel(), 0.6), name


# --- the fine-pruning loop ----------------------------------------------------------------------


@pytest.fixture
def splits(tokenizer):
    gen = _gen(7)
    return {"train": torch.randint(0, len(tokenizer), (4000,), generator=gen),
            "validation": torch.randint(0, len(tokenizer), (600,), generator=gen)}


def _config(**kwargs):
    base = dict(method="hard", sparsity=0.5, train_blocks=1, steps=6, batch_size=2, seqlen=16,
                warmup_steps=1, cooldown_steps=1, eval_windows=4, lr=1e-3, scores_lr=1e-1)
    return FineTuneConfig(**{**base, **kwargs})


@pytest.mark.parametrize("method", ["hard", "soft", "magnitude"])
def test_finetune_prune_reaches_the_target_and_reports_validation_perplexity(tokenizer, splits, method):
    model, _ = tiny_model("llama", tokenizer=tokenizer)
    adapter = adapter_for(model)
    result = finetune_prune(model, adapter, splits, _config(method=method), progress=False)
    assert result.pruned_fraction == pytest.approx(0.5, abs=1e-3)
    assert [h["step"] for h in result.history] == list(range(6))
    assert result.history[0]["mask_sparsity"] == 0.0  # the warm-up is dense
    assert result.history[-1]["mask_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert not masked_linears(model)
    full = perplexity(model, splits["validation"], 16, max_windows=4, progress=False)
    assert result.validation.ppl == pytest.approx(full.ppl, rel=1e-5)  # the cached lower blocks change nothing
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_training_on_cached_lower_blocks_matches_running_them(tokenizer, splits):
    losses = []
    for cache in (True, False):
        model, _ = tiny_model("gpt2", tokenizer=tokenizer)
        result = finetune_prune(model, adapter_for(model), splits, _config(cache_lower=cache), progress=False)
        losses.append([h["loss"] for h in result.history])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # GPT-2 has dropout: the RNG state must be restored too
def test_resuming_from_a_checkpoint_reproduces_the_uninterrupted_run(tokenizer, splits, family, tmp_path):
    config = _config()
    reference, _ = tiny_model(family, tokenizer=tokenizer)
    adapter = adapter_for(reference)
    data = prepare_data(reference, adapter, splits, config, progress=False)
    uninterrupted = finetune_prune(reference, adapter, data, config, progress=False)

    first, _ = tiny_model(family, tokenizer=tokenizer)
    interrupted = finetune_prune(first, adapter, data, config, checkpoint_dir=tmp_path, checkpoint_every=2,
                                 stop_after=3, progress=False)
    assert interrupted.interrupted and interrupted.validation is None
    second, _ = tiny_model(family, tokenizer=tokenizer)  # a fresh process would start from the pretrained weights
    resumed = finetune_prune(second, adapter, data, config, checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    assert resumed.resumed_from == 2 and resumed.steps_run == 4
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in uninterrupted.history]
    expected = reference.state_dict()
    for name, value in second.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert resumed.validation.ppl == uninterrupted.validation.ppl


def test_a_checkpoint_of_another_configuration_is_refused(tokenizer, splits, tmp_path):
    model, _ = tiny_model("llama", tokenizer=tokenizer)
    adapter = adapter_for(model)
    finetune_prune(model, adapter, splits, _config(), checkpoint_dir=tmp_path, checkpoint_every=2, stop_after=2,
                   progress=False)
    other, _ = tiny_model("llama", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="different configuration.*sparsity"):
        finetune_prune(other, adapter, splits, _config(sparsity=0.8), checkpoint_dir=tmp_path, progress=False)


def test_cached_perplexity_of_the_untouched_model_matches_the_full_model(tokenizer, splits):
    model, _ = tiny_model("opt", tokenizer=tokenizer)
    adapter = adapter_for(model)
    data = prepare_data(model, adapter, splits, _config(), progress=False)
    assert data.val_hidden is not None
    expected = perplexity(model, splits["validation"], 16, max_windows=4, progress=False)
    assert cached_perplexity(model, adapter, data, progress=False).ppl == pytest.approx(expected.ppl, rel=1e-5)
