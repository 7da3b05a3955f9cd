"""RIA (Zhang et al., ICLR 2024): the score on a case worked by hand, the comparison group, the channel
permutation for N:M (a valid N:M mask of the permuted layout that keeps at least the plain mask's score,
and a model whose input channels are permuted computes the same function), the registry on every tiny
family, and the command line."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from pruning_course.architectures import set_weight_matrix, weight_matrix
from pruning_course.calibration import record_layer_inputs
from pruning_course.errors import InputError
from pruning_course.masks import nm_mask
from pruning_course.methods import prune_model
from pruning_course.unstructured.ria import (
    kept_score, reallocation_order, relative_importance, ria_channel_permutation, ria_mask, ria_scores, unpermute_mask,
)


HAND_W = torch.tensor([[1.0, -2.0, 3.0], [4.0, 0.0, -1.0]])
HAND_ACT_SQ = torch.tensor([4.0, 1.0, 9.0])  # ||X_j||_2 = 2, 1, 3


def test_relative_importance_on_a_2x3_case_by_hand():
    # row L1 sums 6 and 5; column L1 sums 5, 2, 4
    by_hand = torch.tensor([[1 / 5 + 1 / 6, 2 / 2 + 2 / 6, 3 / 4 + 3 / 6],
                            [4 / 5 + 4 / 5, 0.0, 1 / 4 + 1 / 5]])
    assert torch.allclose(relative_importance(HAND_W), by_hand, atol=1e-7)


@pytest.mark.parametrize("exponent,activation", [(0.5, [math.sqrt(2), 1.0, math.sqrt(3)]), (1.0, [2.0, 1.0, 3.0])])
def test_ria_score_is_relative_importance_times_the_activation_norm_to_the_power_a(exponent, activation):
    ri = [[11 / 30, 4 / 3, 5 / 4], [8 / 5, 0.0, 9 / 20]]
    by_hand = torch.tensor([[r * a for r, a in zip(row, activation)] for row in ri])
    assert torch.allclose(ria_scores(HAND_W, HAND_ACT_SQ, exponent), by_hand, atol=1e-6)


def test_an_all_zero_row_or_column_scores_zero_not_nan():
    weight = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    scores = ria_scores(weight, torch.ones(2))
    assert torch.isfinite(scores).all() and scores[1].sum() == 0 and scores[:, 0].sum() == 0


def test_the_default_comparison_group_is_the_whole_matrix_and_row_is_an_option():
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 3, 16).unsqueeze(1)
    act = torch.rand(32, generator=torch.Generator().manual_seed(1)) + 0.1
    scores = ria_scores(weight, act)
    matrix = ria_mask(weight, act, 0.5)
    assert int((~matrix).sum()) == 16 * 32 // 2
    assert scores[matrix].min() >= scores[~matrix].max()  # one threshold over the matrix
    assert matrix.sum(dim=1).float().std() > 0  # ... so rows keep different shares
    rows = ria_mask(weight, act, 0.5, scope="row")
    assert torch.equal(rows.sum(dim=1), torch.full((16,), 16))
    with pytest.raises(InputError, match="unknown RIA comparison scope 'global'"):
        ria_mask(weight, act, 0.5, scope="global")


def _layer(seed=0, rows=24, cols=64):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator) * torch.rand(cols, generator=generator).pow(3).mul(4)
    act = torch.rand(cols, generator=generator) * 10
    return weight, act


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_permuted_mask_is_nm_in_the_permuted_layout_and_keeps_at_least_the_plain_score(n, m, seed):
    weight, act = _layer(seed)
    scores = ria_scores(weight, act)
    perm = ria_channel_permutation(scores, n, m)
    assert sorted(perm.tolist()) == list(range(weight.shape[1]))
    mask = ria_mask(weight, act, None, f"{n}:{m}", permute=True)
    assert torch.equal(mask, unpermute_mask(nm_mask(scores[:, perm], n, m), perm))
    groups = mask[:, perm].reshape(weight.shape[0], -1, m).sum(dim=2)
    assert torch.equal(groups, torch.full_like(groups, n))  # N of every M in the stored (permuted) layout
    plain = kept_score(scores, nm_mask(scores, n, m))
    assert kept_score(scores, mask) >= plain - 1e-9


def test_the_permutation_keeps_strictly_more_when_strong_channels_share_groups():
    weight, act = _layer(3)
    act[:16] *= 50  # the strongest channels sit in the first four groups of four
    scores = ria_scores(weight, act)
    plain = kept_score(scores, nm_mask(scores, 2, 4))
    heuristic = reallocation_order(scores, 4)
    assert kept_score(scores[:, heuristic], nm_mask(scores[:, heuristic], 2, 4)) > plain
    refined = kept_score(scores, ria_mask(weight, act, None, "2:4", permute=True))
    assert refined >= kept_score(scores, unpermute_mask(nm_mask(scores[:, heuristic], 2, 4), heuristic)) - 1e-9
    assert refined > plain * 1.01


def test_a_pruned_layer_stored_permuted_computes_the_same_outputs():
    weight, act = _layer(4)
    x = torch.randn(10, 7, weight.shape[1], generator=torch.Generator().manual_seed(5))
    scores = ria_scores(weight, act)
    perm = ria_channel_permutation(scores, 2, 4)
    pruned = weight * unpermute_mask(nm_mask(scores[:, perm], 2, 4), perm)
    stored = pruned[:, perm]  # the genuine 2:4 matrix a kernel would hold
    assert torch.equal((stored.reshape(weight.shape[0], -1, 4) != 0).sum(dim=2) <= 2, torch.ones(weight.shape[0], 16, dtype=torch.bool))
    assert torch.allclose(x[..., perm] @ stored.t(), x @ pruned.t(), atol=1e-5)


def _permute_inputs(model, adapter, perms):
    """Store every linear's weight with permuted input channels and gather its input the same way."""
    handles = []
    for name, linear in adapter.named_linears(model).items():
        perm = perms[name]
        set_weight_matrix(linear, weight_matrix(linear)[:, perm].clone())
        handles.append(linear.register_forward_pre_hook(lambda _m, args, perm=perm: (args[0][..., perm],) + args[1:]))
    return handles


def test_permuting_every_layer_input_leaves_the_dense_model_outputs_unchanged(tiny, windows):
    model, adapter, _ = tiny
    names = list(adapter.named_linears(model))
    inputs = record_layer_inputs(model, names, windows)
    perms = {}
    for name, linear in adapter.named_linears(model).items():
        scores = ria_scores(weight_matrix(linear), inputs[name].pow(2).mean(dim=0))
        perms[name] = ria_channel_permutation(scores, 2, 4)
        assert not torch.equal(perms[name], torch.arange(len(perms[name])))
    with torch.no_grad():
        dense = model(input_ids=windows).logits
    permuted = copy.deepcopy(model)
    _permute_inputs(permuted, adapter, perms)
    with torch.no_grad():
        assert torch.allclose(permuted(input_ids=windows).logits, dense, atol=1e-5)


def test_the_registry_drives_ria_on_every_family(tiny, windows):
    model, adapter, _ = tiny
    unstructured = copy.deepcopy(model)
    masks = prune_model(unstructured, adapter, "ria", 0.5, windows=windows, progress=False)
    for name, linear in adapter.named_linears(unstructured).items():
        assert int((~masks[name]).sum()) == masks[name].numel() // 2
        assert bool((weight_matrix(linear)[~masks[name]] == 0).all())
    plain, permuted = copy.deepcopy(model), copy.deepcopy(model)
    plain_masks = prune_model(plain, adapter, "ria", None, "2:4", windows=windows, progress=False)
    permuted_masks = prune_model(permuted, adapter, "ria", None, "2:4", windows=windows, progress=False, permute=True)
    assert any(not torch.equal(plain_masks[k], permuted_masks[k]) for k in plain_masks)
    for name in permuted_masks:
        assert int(permuted_masks[name].sum()) * 2 == permuted_masks[name].numel()


def test_permutation_without_nm_is_refused_before_any_weight_changes(tiny, windows):
    model, adapter, _ = tiny
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(InputError, match="channel permutation is for N:M patterns"):
        prune_model(model, adapter, "ria", 0.5, windows=windows, progress=False, permute=True)
    with pytest.raises(InputError, match="ria takes no option 'blocksize'"):
        prune_model(model, adapter, "ria", 0.5, windows=windows, progress=False, blocksize=8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


TINY = ["--model", "tiny-llama", "--seqlen", "32", "--max-eval-windows", "2", "--calib-samples", "4", "--quiet"]


def test_the_command_line_prunes_with_ria_and_its_permutation(run, tmp_path):
    out = tmp_path / "ria.json"
    code, stdout, _ = run("prune", "--method", "ria", "--pattern", "2:4", "--permute", "--eval", "--json", str(out), *TINY)
    assert code == 0 and "ria" in stdout
    record = json.loads(out.read_text())
    assert record["method"] == "ria" and record["pattern"] == "2:4" and record["permute"] is True
    assert abs(record["sparsity"] - 0.5) < 0.01 and record["calib_samples"] == 4 and record["ppl"] > 0


@pytest.mark.parametrize("argv,message", [
    (["--method", "ria", "--sparsity", "0.5", "--permute"], "channel permutation is for N:M patterns"),
    (["--method", "wanda", "--pattern", "2:4", "--permute"], "--permute is RIA's channel permutation"),
])
def test_the_command_line_refuses_a_permutation_it_cannot_use_in_one_line(run, monkeypatch, argv, message):
    import pruning_course.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing the input"))
    code, _, err = run("prune", *argv, *TINY)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
