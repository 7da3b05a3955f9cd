"""DSnoT (Zhang et al., ICLR 2024): its statistics, its expected error, the prune-and-grow step (never a
larger reconstruction error than the base mask on the calibration inputs, the sparsity of every row and
every N:M group kept exactly, kept weights untouched), its base methods through the registry on every tiny
family, and the command line."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from pruning_course.architectures import weight_matrix
from pruning_course.calibration import InputMoments, layer_moments, record_layer_inputs
from pruning_course.errors import InputError
from pruning_course.methods import get_method, prune_model
from pruning_course.unstructured.dsnot import dsnot_prune_layer, dsnot_update, expected_error, squared_error

BASE_STATISTIC = {"wanda": lambda m: m.mean_sq, "sparsegpt": lambda m: 2 * m.second_moment, "magnitude": lambda m: None,
                  "ria": lambda m: m.mean_sq}


def reconstruction_error(x: torch.Tensor, weight: torch.Tensor, pruned: torch.Tensor) -> float:
    """``||X W^T - X W'^T||_F^2`` on the inputs ``x`` ``(tokens, in)``, in float64."""
    x = x.double()
    return float((x @ weight.double().t() - x @ pruned.double().t()).pow(2).sum())


def shifted_inputs(seed: int = 0, tokens: int = 3000, cols: int = 128) -> torch.Tensor:
    """Inputs with non-zero, unequal means and variances per feature (what DSnoT's criteria read)."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.rand(cols, generator=generator) * 2 + 0.05
    shift = torch.randn(cols, generator=generator)
    return torch.randn(tokens, cols, generator=generator) * scale + shift


def test_input_moments_are_the_exact_moments_of_all_tokens():
    x = shifted_inputs(1, tokens=600, cols=16)
    stat = InputMoments(torch.nn.Linear(16, 4))
    for batch in x.reshape(3, 200, 16) + torch.tensor([0.0, 5.0, -5.0]).view(3, 1, 1):  # batch means differ
        stat.add(batch.unsqueeze(0))
    everything = (x.reshape(3, 200, 16) + torch.tensor([0.0, 5.0, -5.0]).view(3, 1, 1)).reshape(-1, 16).double()
    moments = stat.value
    assert moments.tokens == 600
    assert torch.allclose(moments.mean.double(), everything.mean(0), atol=1e-5)
    assert torch.allclose(moments.variance.double(), everything.var(0, unbiased=False), rtol=1e-4)
    assert torch.allclose(moments.second_moment.double(), everything.t() @ everything / 600, rtol=1e-4)


def test_the_expected_and_squared_errors_are_the_means_over_tokens():
    x = shifted_inputs(2, tokens=500, cols=32)
    weight = torch.randn(8, 32, generator=torch.Generator().manual_seed(3))
    pruned = weight * (torch.rand(8, 32, generator=torch.Generator().manual_seed(4)) > 0.5)
    moments = layer_moments(x)
    error = x.double() @ (weight - pruned).double().t()  # (tokens, out)
    assert torch.allclose(expected_error(weight - pruned, moments.mean), error.mean(0), rtol=1e-4, atol=1e-6)
    assert torch.allclose(squared_error(weight - pruned, moments.second_moment), error.pow(2).mean(0), rtol=1e-4)


def check_step(weight, base_pruned, base_mask, pruned, mask, nm):
    """What every DSnoT step must keep: the row (and N:M group) counts, untouched kept values, zeros."""
    assert torch.equal(mask.sum(dim=1), base_mask.sum(dim=1))
    if nm is not None:
        n, m = nm
        groups = mask.reshape(mask.shape[0], -1, m).sum(dim=2)
        assert torch.equal(groups, base_mask.reshape(mask.shape[0], -1, m).sum(dim=2))
    assert bool((pruned[~mask] == 0).all())
    still = mask & base_mask
    assert torch.equal(pruned[still], base_pruned[still])  # the base's kept (updated) weights stay as they were
    grown = mask & ~base_mask
    assert torch.equal(pruned[grown], weight[grown])  # a grown weight takes its dense value


@pytest.mark.parametrize("base", ["wanda", "sparsegpt", "magnitude", "ria"])
@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_dsnot_lowers_the_reconstruction_error_of_its_base_and_keeps_the_sparsity(base, nm):
    x = shifted_inputs()
    weight = torch.randn(48, 128, generator=torch.Generator().manual_seed(5))
    moments = layer_moments(x)
    base_pruned, base_mask = get_method(base).prune_layer(weight, BASE_STATISTIC[base](moments), 0.5, nm)
    pruned, mask = dsnot_prune_layer(weight, moments, 0.5, nm, base=base)
    check_step(weight, base_pruned, base_mask, pruned, mask, nm)
    assert int((mask != base_mask).sum()) > 0  # it did swap weights
    assert reconstruction_error(x, weight, pruned) < reconstruction_error(x, weight, base_pruned)


def wanda_base(inputs_seed: int, rows: int, weight_seed: int, sparsity: float):
    """A layer on shifted inputs, its moments and its Wanda mask: the base DSnoT starts from."""
    weight = torch.randn(rows, 128, generator=torch.Generator().manual_seed(weight_seed))
    moments = layer_moments(shifted_inputs(inputs_seed))
    return (weight, moments, *get_method("wanda").prune_layer(weight, moments.mean_sq, sparsity, None))


def test_the_mean_error_of_every_row_moves_towards_zero_without_changing_sign():
    weight, moments, base_pruned, base_mask = wanda_base(6, 48, 7, 0.6)
    pruned, _ = dsnot_update(weight, base_pruned, base_mask, moments, threshold=0.0)
    before, after = expected_error(weight - base_pruned, moments.mean), expected_error(weight - pruned, moments.mean)
    assert bool((after.abs() <= before.abs() + 1e-9).all()) and bool((after.abs() < before.abs()).any())
    assert bool(((torch.sign(after) == torch.sign(before)) | (after == 0)).all())


def test_the_stopping_rules_cycles_and_threshold():
    weight, moments, base_pruned, base_mask = wanda_base(8, 32, 9, 0.5)
    _, none = dsnot_update(weight, base_pruned, base_mask, moments, max_cycles=0)
    assert torch.equal(none, base_mask)
    _, one = dsnot_update(weight, base_pruned, base_mask, moments, max_cycles=1)
    assert bool(((one != base_mask).sum(dim=1) <= 2).all()) and int((one != base_mask).sum()) > 0  # one swap a row
    _, loose = dsnot_update(weight, base_pruned, base_mask, moments, threshold=1e9)
    assert torch.equal(loose, base_mask)  # every |eps| is already below the threshold


@pytest.mark.parametrize("base", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_on_real_layer_inputs_of_every_family_dsnot_never_does_worse_than_its_base(tiny, windows, base, pattern):
    model, adapter, _ = tiny
    block0 = {name: linear for name, linear in adapter.named_linears(model).items()
              if name.startswith(f"{adapter.blocks_path}.0.")}
    inputs = record_layer_inputs(model, list(block0), windows)
    nm = (2, 4) if pattern else None
    improved = 0
    for name, linear in block0.items():
        weight, x = weight_matrix(linear).detach(), inputs[name]
        moments = layer_moments(x)
        base_pruned, base_mask = get_method(base).prune_layer(weight, BASE_STATISTIC[base](moments), 0.5, nm)
        pruned, mask = dsnot_prune_layer(weight, moments, 0.5, nm, base=base)
        check_step(weight, base_pruned, base_mask, pruned, mask, nm)
        before, after = reconstruction_error(x, weight, base_pruned), reconstruction_error(x, weight, pruned)
        assert after <= before * (1 + 1e-6), name
        improved += after < before * (1 - 1e-6)
    assert improved > 0


def test_without_the_guard_the_mean_error_rule_alone_can_raise_the_reconstruction_error(tokenizer, windows):
    from pruning_course.architectures import adapter_for
    from pruning_course.testing import tiny_model

    model, _ = tiny_model("llama", seed=0, tokenizer=tokenizer)
    adapter = adapter_for(model)
    block0 = {name: m for name, m in adapter.named_linears(model).items() if name.startswith(f"{adapter.blocks_path}.0.")}
    inputs = record_layer_inputs(model, list(block0), windows)
    raised = 0
    for name, linear in block0.items():
        weight, x = weight_matrix(linear).detach(), inputs[name]
        moments = layer_moments(x)
        base_pruned, base_mask = get_method("wanda").prune_layer(weight, moments.mean_sq, 0.5, None)
        unguarded, _ = dsnot_update(weight, base_pruned, base_mask, moments, guard=False)
        guarded, _ = dsnot_update(weight, base_pruned, base_mask, moments)
        base_error = reconstruction_error(x, weight, base_pruned)
        raised += reconstruction_error(x, weight, unguarded) > base_error
        assert reconstruction_error(x, weight, guarded) <= base_error * (1 + 1e-6)
    assert raised > 0


@pytest.mark.parametrize("base,pattern", [("wanda", None), ("sparsegpt", None), ("wanda", "2:4"), ("sparsegpt", "2:4")])
def test_the_registry_drives_dsnot_on_every_family(tiny, windows, base, pattern):
    model, adapter, _ = tiny
    pruned = copy.deepcopy(model)
    masks = prune_model(pruned, adapter, "dsnot", None if pattern else 0.5, pattern, windows=windows, progress=False,
                        base=base)
    for name, linear in adapter.named_linears(pruned).items():
        mask = masks[name]
        assert bool((weight_matrix(linear)[~mask] == 0).all())
        if pattern:
            assert torch.equal(mask.reshape(mask.shape[0], -1, 4).sum(dim=2), torch.full((mask.shape[0], mask.shape[1] // 4), 2))
        elif base == "wanda":
            assert torch.equal(mask.sum(dim=1), torch.full((mask.shape[0],), mask.shape[1] - mask.shape[1] // 2))
        else:
            assert abs(float((~mask).float().mean()) - 0.5) < 0.01


def test_dsnot_without_cycles_is_its_base_method(tiny, windows):
    model, adapter, _ = tiny
    for base in ("wanda", "sparsegpt"):
        a, b = copy.deepcopy(model), copy.deepcopy(model)
        prune_model(a, adapter, base, 0.5, windows=windows, progress=False)
        prune_model(b, adapter, "dsnot", 0.5, windows=windows, progress=False, base=base, max_cycles=0)
        for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.allclose(x, y, atol=1e-6), (base, key)


@pytest.mark.parametrize("options,message", [
    ({"base": "obs"}, "unknown base method 'obs': choose one of magnitude, wanda, sparsegpt, ria"),
    ({"base": "dsnot"}, "unknown base method 'dsnot'"),
    ({"max_cycles": -1}, "max_cycles is a whole number >= 0"),
    ({"threshold": "small"}, "threshold is a number >= 0"),
    ({"blocksize": 64}, "dsnot takes no option 'blocksize'"),
])
def test_bad_options_are_refused_before_any_weight_changes(tiny, windows, options, message):
    model, adapter, _ = tiny
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(InputError, match=message):
        prune_model(model, adapter, "dsnot", 0.5, windows=windows, progress=False, **options)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


TINY = ["--model", "tiny-llama", "--seqlen", "32", "--max-eval-windows", "2", "--calib-samples", "4", "--quiet"]


@pytest.mark.parametrize("extra,base", [([], "wanda"), (["--base", "sparsegpt"], "sparsegpt")])
def test_the_command_line_prunes_with_dsnot(run, tmp_path, extra, base):
    out = tmp_path / "dsnot.json"
    code, stdout, _ = run("prune", "--method", "dsnot", "--sparsity", "0.5", *extra, "--eval", "--json", str(out), *TINY)
    assert code == 0 and "dsnot" in stdout
    record = json.loads(out.read_text())
    assert record["method"] == "dsnot" and record["base"] == base and record["pattern"] == "unstructured"
    assert abs(record["sparsity"] - 0.5) < 0.01 and record["calib_samples"] == 4 and record["ppl"] > 0


@pytest.mark.parametrize("argv,message", [
    (["--method", "dsnot", "--base", "obs", "--sparsity", "0.5"], "unknown base method 'obs'"),
    (["--method", "wanda", "--base", "sparsegpt", "--sparsity", "0.5"], "--base names the mask DSnoT starts from"),
])
def test_the_command_line_refuses_a_bad_base_in_one_line(run, monkeypatch, argv, message):
    import pruning_course.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing the input"))
    code, _, err = run("prune", *argv, *TINY)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
