"""Per-layer sensitivity scans, sensitivity-based schedules and per-block sparsity in the drivers."""

import copy

import pytest
import torch
from dense_stats import squared_input_sums

from pruning_course.architectures import set_weight_matrix, weight_matrix
from pruning_course.evaluate import perplexity
from pruning_course.masks import num_to_prune
from pruning_course.methods import prune_model
from pruning_course.schedules import block_sparsities, linear_schedule
from pruning_course.unstructured.sensitivity import (
    LayerSensitivity,
    block_parameter_counts,
    layer_sensitivity,
    pruned_weights,
    schedule_from_sensitivity,
    schedule_sparsity,
)
from pruning_course.unstructured import magnitude_mask, wanda_mask

SEQLEN = 16


@pytest.fixture
def eval_ids(tokenizer):
    return torch.randint(0, len(tokenizer), (6 * SEQLEN,), generator=torch.Generator().manual_seed(1))


def ppl_of(model, ids):
    return perplexity(model, ids, SEQLEN, progress=False).ppl


# ---------------------------------------------------------------------------------------------
# layer_sensitivity
# ---------------------------------------------------------------------------------------------


def test_block_sensitivity_equals_pruning_that_block_alone_by_hand(tiny, eval_ids):
    model, adapter, _ = tiny
    before = copy.deepcopy(model.state_dict())
    results = layer_sensitivity(model, adapter, eval_ids, 0.5, "magnitude", "block", seqlen=SEQLEN, progress=False)

    for key, value in model.state_dict().items():  # every unit was restored
        assert torch.equal(value, before[key]), f"{key} was not restored"
    dense = ppl_of(model, eval_ids)
    assert [r.index for r in results] == list(range(len(adapter.blocks(model))))
    for r, block in zip(results, adapter.blocks(model)):
        assert r.dense_ppl == pytest.approx(dense, rel=1e-6)
        by_hand = copy.deepcopy(model)
        hand_block = adapter.blocks(by_hand)[r.index]
        for linear in adapter.linears(hand_block).values():
            w = weight_matrix(linear)
            set_weight_matrix(linear, w * magnitude_mask(w, 0.5))
        assert r.ppl == pytest.approx(ppl_of(by_hand, eval_ids), rel=1e-6)
        assert r.ppl != pytest.approx(dense, rel=1e-9)
        assert r.parameters == sum(weight_matrix(m).numel() for m in adapter.linears(block).values())
        assert r.sparsity == pytest.approx(0.5, abs=0.01)
        assert r.delta_nll == pytest.approx(r.nll - r.dense_nll) and r.delta_ppl == pytest.approx(r.ppl - dense, rel=1e-6)


@pytest.mark.parametrize("unit", ["block", "linear"])
def test_replaying_the_dense_prefix_gives_the_numbers_of_full_forwards_and_skips_it(tiny, eval_ids, unit):
    model, adapter, _ = tiny
    full = layer_sensitivity(model, adapter, eval_ids, 0.5, "magnitude", unit, seqlen=SEQLEN, batch_size=4,
                             max_cache_mb=0, progress=False)
    calls = [0] * len(adapter.blocks(model))
    handles = [block.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, block in enumerate(adapter.blocks(model))]
    replayed = layer_sensitivity(model, adapter, eval_ids, 0.5, "magnitude", unit, seqlen=SEQLEN, batch_size=4,
                                 progress=False)
    for handle in handles:
        handle.remove()
    assert [(r.name, r.ppl, r.dense_ppl, r.nll) for r in replayed] == [(r.name, r.ppl, r.dense_ppl, r.nll) for r in full]
    batches = 2  # 6 windows in batches of 4
    units_up_to = [sum(1 for r in replayed if r.index <= i) for i in range(len(calls))]
    assert calls == [batches * (1 + n) for n in units_up_to]  # the dense pass, then only the units at or below it
    assert ppl_of(model, eval_ids) == pytest.approx(full[0].dense_ppl, rel=1e-12)  # nothing left swapped in


def test_a_block_that_is_already_zero_has_no_sensitivity(tiny, eval_ids):
    model, adapter, _ = tiny
    for linear in adapter.linears(adapter.blocks(model)[1]).values():
        weight_matrix(linear).zero_()
    results = layer_sensitivity(model, adapter, eval_ids, 0.5, "magnitude", seqlen=SEQLEN, progress=False)
    assert results[1].delta_nll == 0.0 and results[1].sparsity == 1.0
    assert results[0].delta_nll != 0.0


def test_linear_units_cover_every_linear_with_its_block_index(tiny, eval_ids):
    model, adapter, _ = tiny
    results = layer_sensitivity(model, adapter, eval_ids, 0.5, "magnitude", "linear", seqlen=SEQLEN, max_windows=2, progress=False)
    linears = adapter.named_linears(model)
    assert [r.name for r in results] == list(linears)
    for r in results:
        assert r.name.startswith(f"{adapter.blocks_path}.{r.index}.")
        assert r.parameters == weight_matrix(linears[r.name]).numel()


def test_calibrated_sensitivity_prunes_each_block_on_dense_inputs(tiny, windows):
    """Block 1's Wanda statistic must come from the dense block 0, not from a pruned one."""
    model, adapter, _ = tiny
    block = adapter.blocks(model)[1]
    sums = squared_input_sums(model, adapter.linears(block), windows)

    candidates = pruned_weights(model, adapter, 0.5, "wanda", windows, progress=False)
    for name, linear in adapter.linears(block).items():
        w = weight_matrix(linear)
        expected = w * wanda_mask(w, sums[name] / windows.numel(), 0.5)
        assert torch.equal(candidates[f"{adapter.blocks_path}.1.{name}"], expected), name


def test_sparsegpt_sensitivity_runs_and_restores(tiny, windows, eval_ids):
    model, adapter, _ = tiny
    before = copy.deepcopy(model.state_dict())
    results = layer_sensitivity(model, adapter, eval_ids, 0.5, "sparsegpt", windows=windows, seqlen=SEQLEN, progress=False)
    assert len(results) == len(adapter.blocks(model))
    assert all(r.sparsity == pytest.approx(0.5, abs=0.01) for r in results)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_sensitivity_rejects_bad_input(tiny, eval_ids):
    model, adapter, _ = tiny
    with pytest.raises(ValueError, match="unit"):
        layer_sensitivity(model, adapter, eval_ids, unit="head", seqlen=SEQLEN)
    with pytest.raises(ValueError, match="unknown method"):
        layer_sensitivity(model, adapter, eval_ids, method="movement", seqlen=SEQLEN)
    with pytest.raises(ValueError, match="calibration windows"):
        layer_sensitivity(model, adapter, eval_ids, method="wanda", seqlen=SEQLEN)
    with pytest.raises(ValueError, match="sparsity"):
        layer_sensitivity(model, adapter, eval_ids, sparsity=50, seqlen=SEQLEN)


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------


def test_schedule_sparsity_is_the_parameter_weighted_mean():
    assert schedule_sparsity([0.5, 0.7], [1, 3]) == pytest.approx(0.65)
    with pytest.raises(ValueError, match="one per block"):
        schedule_sparsity([0.5, 0.7], [1, 2, 3])


@pytest.mark.parametrize("mapping", ["rank", "linear"])
def test_schedule_keeps_the_weighted_target_and_prunes_the_least_sensitive_most(mapping):
    sensitivity = torch.tensor([2.0, 0.1, 0.3, 0.05, 0.4, 1.2])
    counts = [100, 300, 300, 300, 300, 200]
    schedule = schedule_from_sensitivity(sensitivity, 0.6, spread=0.2, counts=counts, mapping=mapping)
    assert schedule_sparsity(schedule.tolist(), counts) == pytest.approx(0.6, abs=1e-12)
    assert float(schedule.max() - schedule.min()) == pytest.approx(0.2)
    order = torch.argsort(sensitivity)  # least sensitive first: strictly decreasing sparsity
    assert (schedule[order].diff() < 0).all(), schedule
    assert schedule.mean() != pytest.approx(0.6, abs=1e-3)  # the weighting matters here


def test_rank_and_linear_mappings_differ_as_documented():
    sensitivity = [10.0, 0.0, 0.1, 0.2]  # one dominant block
    rank = schedule_from_sensitivity(sensitivity, 0.5, spread=0.3)
    linear = schedule_from_sensitivity(sensitivity, 0.5, spread=0.3, mapping="linear")
    torch.testing.assert_close(rank, torch.tensor([0.35, 0.65, 0.55, 0.45], dtype=torch.float64))
    # linear: u = [1, 0, 0.01, 0.02], so the three small ones stay close together
    assert float(linear[1:].max() - linear[1:].min()) < 0.01


def test_schedule_bounds_shrink_the_spread_but_keep_the_target():
    schedule = schedule_from_sensitivity([5.0, 1.0, 0.0, 0.5], 0.7, spread=0.5, min_sparsity=0.5, max_sparsity=0.8)
    assert float(schedule.min()) >= 0.5 - 1e-12 and float(schedule.max()) <= 0.8 + 1e-12
    assert float(schedule.mean()) == pytest.approx(0.7)
    assert float(schedule.max()) == pytest.approx(0.8)  # the binding bound is reached
    with pytest.raises(ValueError, match="bounds"):
        schedule_from_sensitivity([1.0, 2.0], 0.7, min_sparsity=0.75)


def test_schedule_from_a_scan_uses_delta_nll_and_parameter_counts(tiny, eval_ids):
    model, adapter, _ = tiny
    scan = layer_sensitivity(model, adapter, eval_ids, 0.5, seqlen=SEQLEN, progress=False)
    schedule = schedule_from_sensitivity(scan, 0.5, spread=0.2)
    counts = block_parameter_counts(model, adapter)
    assert schedule_sparsity(schedule.tolist(), counts) == pytest.approx(0.5)
    most_sensitive = max(range(len(scan)), key=lambda i: scan[i].delta_nll)
    assert int(torch.argmin(schedule)) == most_sensitive


def test_schedule_rejects_per_linear_scans_and_bad_input():
    linear_scan = [
        LayerSensitivity(0, f"layers.0.{n}", 10, 0.5, 2.0, 1.0, 0.7, 0.0) for n in ("q", "k")
    ]
    with pytest.raises(ValueError, match="unit='block'"):
        schedule_from_sensitivity(linear_scan, 0.5)
    with pytest.raises(ValueError, match="one per block"):
        schedule_from_sensitivity([1.0, 2.0], 0.5, counts=[1, 2, 3])
    with pytest.raises(ValueError, match="mapping"):
        schedule_from_sensitivity([1.0, 2.0], 0.5, mapping="log")
    with pytest.raises(ValueError, match="finite"):
        schedule_from_sensitivity([1.0, float("nan")], 0.5)
    with pytest.raises(ValueError, match="outside"):
        schedule_from_sensitivity([1.0, 2.0], 0.5, spread=1.2)


def test_equal_sensitivities_give_the_uniform_schedule():
    assert linear_schedule([0.3, 0.3, 0.3], 0.6, 0.2).tolist() == [0.6, 0.6, 0.6]
    assert schedule_from_sensitivity([1.0, 1.0], 0.6).tolist() == [0.6, 0.6]


# ---------------------------------------------------------------------------------------------
# per-block sparsity in the drivers
# ---------------------------------------------------------------------------------------------


def block_sparsity(model, adapter, index):
    linears = adapter.linears(adapter.blocks(model)[index]).values()
    return sum(int((weight_matrix(m) == 0).sum()) for m in linears) / sum(weight_matrix(m).numel() for m in linears)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_drivers_accept_one_sparsity_per_block(tiny, windows, method):
    model, adapter, _ = tiny
    masks = prune_model(model, adapter, method, [0.25, 0.75], windows=windows, progress=False)
    assert masks.keys() == adapter.named_linears(model).keys()
    assert block_sparsity(model, adapter, 0) == pytest.approx(0.25, abs=0.02)
    assert block_sparsity(model, adapter, 1) == pytest.approx(0.75, abs=0.02)
    if method == "wanda":  # every row of block 1 loses floor(in * 0.75)
        for linear in adapter.linears(adapter.blocks(model)[1]).values():
            w = weight_matrix(linear)
            assert ((w == 0).sum(1) == num_to_prune(w.shape[1], 0.75)).all()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_a_uniform_list_or_callable_equals_the_float(tiny, windows, method):
    model, adapter, _ = tiny
    reference = prune_model(copy.deepcopy(model), adapter, method, 0.4, windows=windows, progress=False)
    as_list = prune_model(copy.deepcopy(model), adapter, method, [0.4, 0.4], windows=windows, progress=False)
    as_callable = prune_model(copy.deepcopy(model), adapter, method, lambda i: 0.4, windows=windows, progress=False)
    for name in reference:
        assert torch.equal(reference[name], as_list[name]) and torch.equal(reference[name], as_callable[name]), name


def test_block_sparsities_resolves_and_rejects():
    assert block_sparsities(0.5, 3) == ([0.5, 0.5, 0.5], None)
    assert block_sparsities(None, 2, "2:4") == ([0.5, 0.5], (2, 4))
    assert block_sparsities(torch.tensor([0.1, 0.2]), 2)[0] == pytest.approx([0.1, 0.2])
    assert block_sparsities(lambda i: 0.1 * (i + 1), 3)[0] == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="2 decoder blocks"):
        block_sparsities([0.5, 0.6, 0.7], 2)
    with pytest.raises(ValueError, match="N:M"):
        block_sparsities([0.5, 0.5], 2, "2:4")
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        block_sparsities([0.5, 1.5], 2)
    with pytest.raises(ValueError, match="one number per decoder block"):
        block_sparsities("0.5", 2)


def test_global_magnitude_rejects_a_schedule(tiny):
    model, adapter, _ = tiny
    with pytest.raises(ValueError, match="global"):
        prune_model(model, adapter, "magnitude", [0.3, 0.6], scope="global")
