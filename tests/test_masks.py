import pytest
import torch

from pruning_course.masks import (
    global_masks, is_nm_sparse, nm_mask, num_to_prune, parse_pattern, per_matrix_mask, per_row_mask,
    resolve_target, validate_sparsity,
)


def scores(rows=16, cols=64, seed=0):
    return torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sparsity", [0.1, 0.29, 0.5, 0.7, 0.9])
def test_per_row_mask_removes_exactly_the_lowest_of_every_row(sparsity):
    s = scores()
    mask = per_row_mask(s, sparsity)
    k = num_to_prune(64, sparsity)
    assert (mask.sum(dim=1) == 64 - k).all()
    # every kept score of a row is at least every removed score of that row
    for row, m in zip(s, mask):
        assert row[m].min() >= row[~m].max()


def test_num_to_prune_is_immune_to_float_noise():
    assert num_to_prune(100, 0.29) == 29
    assert num_to_prune(576, 0.5) == 288


def test_per_matrix_mask_exact_count_and_threshold():
    s = scores()
    mask = per_matrix_mask(s, 0.5)
    assert int((~mask).sum()) == s.numel() // 2
    assert s[mask].min() >= s[~mask].max()
    # per-matrix is not per-row: rows keep different fractions on a skewed matrix
    skewed = s * torch.linspace(0.1, 10, 16).unsqueeze(1)
    assert per_matrix_mask(skewed, 0.5).sum(dim=1).unique().numel() > 1


def test_global_masks_rank_all_matrices_together():
    a, b = torch.full((4, 4), 1.0), torch.full((4, 4), 2.0)
    masks = global_masks({"a": a, "b": b}, 0.5)
    assert not masks["a"].any() and masks["b"].all()


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (1, 2)])
def test_nm_mask_keeps_n_largest_of_each_group_along_inputs(n, m):
    s = scores()
    mask = nm_mask(s, n, m)
    groups = mask.reshape(16, 64 // m, m)
    assert (groups.sum(dim=2) == n).all()
    kept = s.reshape(16, -1, m)[groups].reshape(16, -1, n)
    dropped = s.reshape(16, -1, m)[~groups].reshape(16, -1, m - n)
    assert (kept.min(dim=2).values >= dropped.max(dim=2).values).all()
    assert is_nm_sparse(s * mask, n, m)
    assert not is_nm_sparse(s, n, m)


def test_nm_mask_rejects_width_not_divisible_with_advice():
    with pytest.raises(ValueError, match="not a multiple of 4"):
        nm_mask(scores(cols=66), 2, 4)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, 50, "abc", None])
def test_bad_sparsity_is_rejected_with_a_hint(bad):
    with pytest.raises(ValueError, match=r"sparsity"):
        validate_sparsity(bad)


def test_percent_sparsity_gets_a_hint():
    with pytest.raises(ValueError, match="did you mean a fraction"):
        validate_sparsity(50)


@pytest.mark.parametrize("bad", ["4:2", "2:2", "0:4", "x", "2:4:8", "2-4"])
def test_bad_patterns_are_rejected(bad):
    with pytest.raises(ValueError, match="N:M|0 < N < M"):
        parse_pattern(bad)


def test_resolve_target():
    assert resolve_target(0.5, None) == (0.5, None)
    assert resolve_target(None, "2:4") == (0.5, (2, 4))
    assert resolve_target(0.5, "2:4") == (0.5, (2, 4))
    assert resolve_target(None, "1:4") == (0.75, (1, 4))
    with pytest.raises(ValueError, match="keeps 2 of every 4"):
        resolve_target(0.7, "2:4")
    with pytest.raises(ValueError, match="give a sparsity"):
        resolve_target(None, None)
