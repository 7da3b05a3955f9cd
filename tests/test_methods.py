"""Tensor-level properties of magnitude, Wanda and SparseGPT."""

import pytest
import torch

from pruning_course.calibration import InputHessian
from pruning_course.masks import is_nm_sparse, num_to_prune
from pruning_course.unstructured import magnitude_mask, sparsegpt_prune, wanda_mask, wanda_scores


def test_wanda_score_equals_the_formula_on_a_hand_made_case():
    weight = torch.tensor([[1.0, -2.0, 3.0, -4.0]])
    act_sq_norm = torch.tensor([16.0, 1.0, 4.0, 1 / 16])  # norms 4, 1, 2, 0.25
    assert torch.equal(wanda_scores(weight, act_sq_norm), torch.tensor([[4.0, 2.0, 6.0, 1.0]]))
    assert wanda_mask(weight, act_sq_norm, 0.5).tolist() == [[True, False, True, False]]
    # magnitude alone would have kept the two largest weights instead
    assert magnitude_mask(weight, 0.5).tolist() == [[False, False, True, True]]


def test_wanda_ranks_within_each_output_row():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 32, generator=gen) * torch.logspace(-2, 2, 8).unsqueeze(1)  # rows of very different scale
    act = torch.rand(32, generator=gen)
    mask = wanda_mask(weight, act, 0.5)
    assert (mask.sum(dim=1) == 16).all()


def test_wanda_nm_groups_along_the_input_dimension():
    gen = torch.Generator().manual_seed(1)
    weight, act = torch.randn(8, 32, generator=gen), torch.rand(32, generator=gen)
    mask = wanda_mask(weight, act, None, "2:4")
    assert is_nm_sparse(weight * mask, 2, 4)
    assert (mask.reshape(8, 8, 4).sum(-1) == 2).all()


def test_wanda_rejects_a_norm_vector_of_the_wrong_size():
    with pytest.raises(ValueError, match="one entry per input feature"):
        wanda_scores(torch.randn(4, 8), torch.rand(4))


def correlated_inputs(tokens=2048, features=64, rank=16, seed=0):
    """Inputs that mostly live in a low-dimensional subspace, as LLM activations do."""
    gen = torch.Generator().manual_seed(seed)
    low_rank = torch.randn(tokens, rank, generator=gen) @ torch.randn(rank, features, generator=gen)
    return low_rank + 0.1 * torch.randn(tokens, features, generator=gen)


def hessian_of(x, weight):
    stat = InputHessian(torch.nn.Linear(weight.shape[1], weight.shape[0]))
    stat.add(x)
    return stat.value


def reconstruction_error(weight, new_weight, x):
    return float(((x @ weight.t() - x @ new_weight.t()).norm() / (x @ weight.t()).norm()))


@pytest.mark.parametrize("sparsity,pattern", [(0.5, None), (0.7, None), (None, "2:4")])
def test_sparsegpt_reconstructs_better_than_magnitude(sparsity, pattern):
    x = correlated_inputs()
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    new_weight, mask = sparsegpt_prune(weight, hessian_of(x, weight), sparsity, pattern, blocksize=32)
    assert torch.equal(new_weight == 0, ~mask)
    mag = weight * magnitude_mask(weight, sparsity, pattern, scope="row")
    err_sparsegpt, err_mag = reconstruction_error(weight, new_weight, x), reconstruction_error(weight, mag, x)
    assert err_sparsegpt < 0.9 * err_mag, (err_sparsegpt, err_mag)


def test_sparsegpt_unstructured_mask_is_exact_per_block():
    x = correlated_inputs()
    weight = torch.randn(16, 64)
    _, mask = sparsegpt_prune(weight, hessian_of(x, weight), 0.5, blocksize=16)
    for block in mask.split(16, dim=1):
        assert int((~block).sum()) == num_to_prune(block.numel(), 0.5)


def test_sparsegpt_lazy_batch_updates_do_not_change_the_result():
    """For N:M the mask is chosen group by group, so the block size only changes *when* updates land."""
    x = correlated_inputs()
    weight = torch.randn(16, 64)
    H = hessian_of(x, weight)
    a, mask_a = sparsegpt_prune(weight, H, None, "2:4", blocksize=4)
    b, mask_b = sparsegpt_prune(weight, H, None, "2:4", blocksize=64)
    assert torch.equal(mask_a, mask_b)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_sparsegpt_zeroes_dead_inputs():
    x = correlated_inputs()
    x[:, 5] = 0
    weight = torch.randn(8, 64)
    new_weight, _ = sparsegpt_prune(weight, hessian_of(x, weight), 0.25, blocksize=64)
    assert (new_weight[:, 5] == 0).all()


def test_sparsegpt_rejects_a_mismatched_hessian_and_bad_nm():
    weight = torch.randn(8, 64)
    with pytest.raises(ValueError, match="Hessian"):
        sparsegpt_prune(weight, torch.eye(32), 0.5)
    with pytest.raises(ValueError, match="divide"):
        sparsegpt_prune(torch.randn(8, 66), torch.eye(66), None, "2:4")


def test_magnitude_scopes():
    weight = torch.randn(8, 32) * torch.logspace(-2, 2, 8).unsqueeze(1)
    per_row = magnitude_mask(weight, 0.5, scope="row")
    per_matrix = magnitude_mask(weight, 0.5, scope="matrix")
    assert (per_row.sum(1) == 16).all()
    assert int(per_matrix.sum()) == 128 and not (per_matrix.sum(1) == 16).all()


def test_sparsegpt_prune_never_changes_the_weight_it_is_given_even_a_transposed_view():
    """GPT-2's Conv1D hands SparseGPT ``W = stored.t()``, whose transpose is the layer's own storage."""
    stored = torch.randn(16, 8)  # Conv1D layout (in, out)
    weight = stored.t()  # the (out, in) view weight_matrix returns
    x = torch.randn(64, 16)
    before = stored.clone()
    new_weight, _ = sparsegpt_prune(weight, 2 * x.t() @ x / 64, 0.5)
    assert torch.equal(stored, before)
    assert (new_weight == 0).float().mean() == 0.5


def test_a_singular_hessian_says_what_to_change():
    from pruning_course.unstructured.sparsegpt import inverse_hessian_factor

    hessian = -torch.eye(8)  # not positive definite, and damping by 1% of its mean diagonal cannot fix it
    with pytest.raises(ValueError, match="raise percdamp .* or use more calibration samples"):
        sparsegpt_prune(torch.randn(4, 8), hessian, 0.5)
    with pytest.raises(ValueError, match="inf or nan"):
        inverse_hessian_factor(torch.full((8, 8), float("nan")))


def test_the_sweep_never_writes_into_the_weight_it_was_given():
    from pruning_course.quantize.gptq import gptq_quantize

    gen = torch.Generator().manual_seed(3)
    storage = torch.randn(16, 8, generator=gen)  # a Conv1D keeps (in, out): its weight_matrix is storage.t()
    weight, before = storage.t(), storage.clone()
    x = torch.randn(64, 16, generator=gen)
    hessian = 2 / 64 * x.t() @ x
    sparsegpt_prune(weight, hessian, 0.5)
    gptq_quantize(weight, hessian, 4, -1)
    assert torch.equal(storage, before)
