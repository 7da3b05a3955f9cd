"""The registry of one-shot methods: every consumer dispatches through it, and a new method is one
entry -- here Wanda's scores ranked over the whole matrix instead of per output row (the
comparison-group ablation of the Wanda paper, Sec. 5), added in a test and used by the driver,
OWL, sensitivity analysis and the command line without touching any of them."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from pruning_course import methods
from pruning_course.calibration import SquaredInputNorm
from pruning_course.cli import main
from pruning_course.masks import keep_mask
from pruning_course.methods import REGISTRY, get_method, prune_model, register
from pruning_course.oneshot import OneShotMethod
from pruning_course.unstructured.sensitivity import pruned_weights
from pruning_course.unstructured import prune_owl, prune_sparsegpt, prune_wanda, wanda_scores


def wanda_matrix_layer(weight, act_sq_norm, sparsity, nm=None):
    mask = keep_mask(wanda_scores(weight, act_sq_norm), sparsity, nm, scope="matrix")
    return weight * mask, mask


WANDA_MATRIX = OneShotMethod("wanda-matrix", SquaredInputNorm, wanda_matrix_layer, citation="Sun et al., Sec. 5")


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(REGISTRY, WANDA_MATRIX.name, WANDA_MATRIX)
    return WANDA_MATRIX


def test_the_registry_holds_the_five_methods_with_their_statistics():
    assert list(REGISTRY) == ["magnitude", "wanda", "sparsegpt", "ria", "dsnot"]
    assert [m.needs_data for m in REGISTRY.values()] == [False, True, True, True, True]
    assert get_method("sparsegpt").options == ("blocksize", "percdamp")
    with pytest.raises(ValueError, match="unknown pruning method 'obs'; choose one of: magnitude, wanda, sparsegpt, ria, dsnot"):
        get_method("obs")


def test_the_named_drivers_are_the_registry_entries(tiny, windows):
    model, adapter, _ = tiny
    for name, driver in (("wanda", prune_wanda), ("sparsegpt", prune_sparsegpt)):
        a, b = copy.deepcopy(model), copy.deepcopy(model)
        masks_a = driver(a, adapter, windows, 0.5, progress=False)
        masks_b = prune_model(b, adapter, name, 0.5, windows=windows, progress=False)
        assert all(torch.equal(masks_a[k], masks_b[k]) for k in masks_a)
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_options_are_checked_before_any_weight_changes(tiny, windows):
    model, adapter, _ = tiny
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="wanda takes no option 'blocksize'"):
        prune_model(model, adapter, "wanda", 0.5, windows=windows, blocksize=64)
    with pytest.raises(ValueError, match="calibration windows"):
        prune_model(model, adapter, "sparsegpt", 0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_new_method_is_one_entry_for_the_driver_owl_and_sensitivity(registered, tiny, windows):
    model, adapter, _ = tiny
    pruned = copy.deepcopy(model)
    masks = prune_model(pruned, adapter, "wanda-matrix", 0.5, windows=windows, progress=False)
    rows = torch.cat([m.float().mean(dim=1) for m in masks.values()])
    assert abs(float(torch.cat([m.flatten().float() for m in masks.values()]).mean()) - 0.5) < 0.01
    assert rows.std() > 0  # ranked over the matrix: rows keep different shares, unlike Wanda's

    owl = prune_owl(copy.deepcopy(model), adapter, windows, 0.7, "wanda-matrix", progress=False)
    assert owl.sparsities.mean().item() == pytest.approx(0.7)

    weights = pruned_weights(copy.deepcopy(model), adapter, 0.5, "wanda-matrix", windows, progress=False)
    assert set(weights) == set(masks)


def test_a_new_method_is_accepted_by_the_command_line(registered, tmp_path, capsys):
    out = tmp_path / "out.json"
    argv = ["--model", "tiny-llama", "--seqlen", "32", "--max-eval-windows", "2", "--calib-samples", "4", "--quiet"]
    assert main(["prune", "--method", "wanda-matrix", "--sparsity", "0.5", "--eval", "--json", str(out), *argv]) == 0
    record = json.loads(out.read_text())
    assert record["method"] == "wanda-matrix" and record["calib_samples"] == 4
    compare = tmp_path / "compare.json"
    assert main(["compare", "--methods", "wanda,wanda-matrix", "--patterns", "unstructured", "--json", str(compare),
                 *argv]) == 0
    assert [r["method"] for r in json.loads(compare.read_text())["results"]] == ["dense", "wanda", "wanda-matrix"]


def test_register_refuses_a_second_method_of_the_same_name(registered):
    assert register(WANDA_MATRIX) is WANDA_MATRIX
    with pytest.raises(ValueError, match="already registered"):
        register(OneShotMethod("wanda-matrix", None, wanda_matrix_layer))
    assert methods.REGISTRY["wanda-matrix"] is WANDA_MATRIX


def test_prune_and_measure_is_the_record_the_cli_writes(tiny, windows):
    from pruning_course.evaluate import prune_and_measure

    model, adapter, _ = tiny
    test_ids = torch.randint(0, 200, (4 * 32,), generator=torch.Generator().manual_seed(1))
    dense = prune_and_measure(copy.deepcopy(model), adapter, "dense", test_ids=test_ids, seqlen=32)
    assert dense["pattern"] == "dense" and dense["target_sparsity"] == 0 and dense["calib_samples"] == 0
    record = prune_and_measure(copy.deepcopy(model), adapter, "wanda", None, "2:4", windows, test_ids=test_ids, seqlen=32)
    assert record["pattern"] == "2:4" and record["calib_samples"] == len(windows)
    assert abs(record["sparsity"] - 0.5) < 0.01 and record["eval_tokens"] == 4 * 32 and record["ppl"] > 0
    owl = prune_and_measure(copy.deepcopy(model), adapter, "wanda", 0.7, None, windows, owl=(5.0, 0.05))
    assert len(owl["block_sparsities"]) == 2 and "ppl" not in owl
    scheduled = copy.deepcopy(model)
    record = prune_and_measure(scheduled, adapter, "wanda", [0.3, 0.7], None, windows)
    by_hand = copy.deepcopy(model)
    prune_model(by_hand, adapter, "wanda", [0.3, 0.7], windows=windows, progress=False)
    assert record["block_sparsities"] == [0.3, 0.7] and record["target_sparsity"] == pytest.approx(0.5)
    assert all(torch.equal(a, b) for a, b in zip(scheduled.state_dict().values(), by_hand.state_dict().values()))
    with pytest.raises(ValueError, match="not a schedule"):
        prune_and_measure(copy.deepcopy(model), adapter, "wanda", [0.3, 0.7], None, windows, owl=(5.0, 0.05))


def test_rank_correlation_and_macs_per_token():
    from pruning_course.evaluate import rank_correlation
    from pruning_course.inventory import macs_per_token
    from pruning_course.architectures import adapter_for
    from pruning_course.testing import tiny_model

    a = torch.tensor([0.1, 0.5, 0.3, 0.9])
    assert rank_correlation(a, a * 10) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, a ** 3) == pytest.approx(1.0)  # ranks only: any increasing map
    assert rank_correlation(a[:2], a[:2]) != rank_correlation(a[:2], a[:2])  # NaN below three values
    model, _ = tiny_model("llama")
    adapter = adapter_for(model)
    blocks = sum(m.weight.numel() for m in adapter.named_linears(model).values())
    assert macs_per_token(model, adapter) == blocks + model.lm_head.weight.numel()
