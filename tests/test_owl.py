"""OWL (Yin et al., 2024): outlier ratios, the per-block schedule and the driver on tiny models."""

import copy

import pytest
import torch
from dense_stats import squared_input_sums

from pruning_course.architectures import weight_matrix
from pruning_course.evaluate import sparsity_report
from pruning_course.masks import num_to_prune
from pruning_course.unstructured import prune_wanda, wanda_scores
from pruning_course.unstructured.owl import outlier_ratio, owl_outlier_ratios, owl_sparsities, prune_owl

# ---------------------------------------------------------------------------------------------
# the pure functions
# ---------------------------------------------------------------------------------------------


def test_outlier_ratio_on_a_hand_made_case():
    scores = torch.tensor([1.0] * 9 + [100.0])  # mean 10.9: only 100 exceeds 5 * 10.9
    assert outlier_ratio(scores, 5) == pytest.approx(0.1)
    assert outlier_ratio(scores, 10) == 0.0
    assert outlier_ratio(scores, 0.5) == pytest.approx(0.1)  # 0.5 * 10.9 = 5.45: still only one


def test_outlier_ratio_pools_the_linears_of_a_block():
    small, large = torch.full((4, 4), 1.0), torch.full((2, 2), 30.0)
    # pooled mean = (16 + 120) / 20 = 6.8, so 30 > 4 * 6.8 is an outlier; per-matrix means would find none
    assert outlier_ratio([small, large], 4) == pytest.approx(4 / 20)
    assert outlier_ratio(small, 4) == 0.0 and outlier_ratio(large, 4) == 0.0
    with pytest.raises(ValueError, match="positive"):
        outlier_ratio(small, 0)


def test_owl_sparsities_follow_the_reference_formula():
    ratios = torch.tensor([0.01, 0.02, 0.04])
    u = torch.tensor([0.0, 1 / 3, 1.0], dtype=torch.float64)
    expected = 0.7 - 2 * 0.08 * (u - u.mean())
    torch.testing.assert_close(owl_sparsities(ratios, 0.7, 0.08), expected)
    # ratios placed symmetrically give exactly the paper's interval [S - lambda, S + lambda]
    torch.testing.assert_close(owl_sparsities([0.0, 0.5, 1.0], 0.7, 0.08), torch.tensor([0.78, 0.7, 0.62], dtype=torch.float64))


@pytest.mark.parametrize("seed", range(5))
def test_owl_sparsities_mean_spread_and_order(seed):
    gen = torch.Generator().manual_seed(seed)
    ratios = torch.rand(12, generator=gen) * 0.05
    target, lam = 0.6, 0.05
    s = owl_sparsities(ratios, target, lam)
    assert float(s.mean()) == pytest.approx(target, abs=1e-12)
    assert float(s.max() - s.min()) == pytest.approx(2 * lam)
    assert float(s.min()) >= target - 2 * lam - 1e-12 and float(s.max()) <= target + 2 * lam + 1e-12
    order = torch.argsort(ratios)  # more outliers, strictly lower sparsity
    assert (s[order].diff() < 0).all()
    assert float(s[torch.argmax(ratios)]) == pytest.approx(float(s.min()))


def test_owl_sparsities_degenerate_cases():
    assert owl_sparsities([0.02, 0.02, 0.02], 0.7, 0.08).tolist() == [0.7, 0.7, 0.7]
    assert owl_sparsities([0.01, 0.03], 0.7, 0.0).tolist() == [0.7, 0.7]


def test_owl_sparsities_rejects_bad_lambda_and_target():
    with pytest.raises(ValueError, match="too large"):
        owl_sparsities([0.0, 1.0, 1.0], 0.7, 0.3)  # the first block would get 0.7 + 0.6 * 2/3 = 1.1
    with pytest.raises(ValueError, match="lambda"):
        owl_sparsities([0.0, 1.0], 0.7, -0.1)
    with pytest.raises(ValueError, match="sparsity"):
        owl_sparsities([0.0, 1.0], 70, 0.08)


# ---------------------------------------------------------------------------------------------
# on tiny models
# ---------------------------------------------------------------------------------------------


def test_outlier_ratios_are_measured_on_the_dense_model(tiny, windows):
    model, adapter, _ = tiny
    before = copy.deepcopy(model.state_dict())
    sums = squared_input_sums(model, adapter.named_linears(model), windows)

    ratios = owl_outlier_ratios(model, adapter, windows, M=3, progress=False)
    assert ratios.shape == (len(adapter.blocks(model)),)
    for index, block in enumerate(adapter.blocks(model)):
        scores = [
            wanda_scores(weight_matrix(linear), sums[f"{adapter.blocks_path}.{index}.{name}"])  # sum, not mean: same ratio
            for name, linear in adapter.linears(block).items()
        ]
        assert float(ratios[index]) == pytest.approx(outlier_ratio(scores, 3))
    assert (ratios > 0).all()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"measuring outliers changed {key}"


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
def test_prune_owl_realises_the_schedule(tiny, windows, method):
    model, adapter, _ = tiny
    result = prune_owl(model, adapter, windows, 0.6, method, M=3, lam=0.1, progress=False)
    assert result.masks.keys() == adapter.named_linears(model).keys()
    assert float(result.sparsities.mean()) == pytest.approx(0.6)
    assert float(result.sparsities.max() - result.sparsities.min()) == pytest.approx(0.2)
    for index, block in enumerate(adapter.blocks(model)):
        linears = adapter.linears(block).values()
        zeros = sum(int((weight_matrix(m) == 0).sum()) for m in linears)
        total = sum(weight_matrix(m).numel() for m in linears)
        assert zeros / total == pytest.approx(float(result.sparsities[index]), abs=0.02), index
    # all blocks have the same size, so the model-wide sparsity is the target (up to floor rounding)
    assert sparsity_report(model, adapter)["sparsity"] == pytest.approx(0.6, abs=0.02)


def test_prune_owl_with_wanda_equals_wanda_with_the_schedule(tiny, windows):
    model, adapter, _ = tiny
    reference = copy.deepcopy(model)
    ratios = owl_outlier_ratios(model, adapter, windows, progress=False)
    result = prune_owl(model, adapter, windows, 0.7, "wanda", ratios=ratios, lam=0.05, progress=False)
    masks = prune_wanda(reference, adapter, windows, owl_sparsities(ratios, 0.7, 0.05).tolist(), progress=False)
    torch.testing.assert_close(result.outlier_ratios, ratios)
    for name, mask in masks.items():
        assert torch.equal(mask, result.masks[name]), name
    for index, block in enumerate(adapter.blocks(model)):  # each row loses floor(in * s_l)
        for linear in adapter.linears(block).values():
            w = weight_matrix(linear)
            assert ((w == 0).sum(1) == num_to_prune(w.shape[1], float(result.sparsities[index]))).all()


def test_prune_owl_rejects_bad_input(tiny, windows):
    model, adapter, _ = tiny
    with pytest.raises(ValueError, match="unknown method"):
        prune_owl(model, adapter, windows, 0.7, "movement")
    with pytest.raises(ValueError, match="3 outlier ratios"):
        prune_owl(model, adapter, windows, 0.7, ratios=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="too large"):
        prune_owl(model, adapter, windows, 0.9, ratios=[0.1, 0.2], lam=0.1)
