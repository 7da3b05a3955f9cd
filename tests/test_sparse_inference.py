import copy

import pytest
import torch

from pruning_course.architectures import weight_matrix
from pruning_course.sparse_inference import (
    CSRLinear,
    break_even_sparsity,
    compare_model_dense_vs_csr,
    csr_linear,
    csr_memory_break_even,
    csr_nbytes,
    csr_nbytes_formula,
    dense_linear,
    dense_nbytes,
    linear_bytes,
    random_sparse_weight,
    replace_linears_with_csr,
    sweep,
    time_dense_vs_csr,
    to_csr,
)
from pruning_course.unstructured import prune_magnitude


@pytest.mark.parametrize("sparsity", [0.5, 0.73, 0.99])
def test_random_sparse_weight_has_exact_zero_count(sparsity):
    w = random_sparse_weight(48, 36, sparsity, seed=1)
    assert w.shape == (48, 36)
    assert int((w == 0).sum()) == int(48 * 36 * sparsity + 1e-9)
    assert torch.equal(w, random_sparse_weight(48, 36, sparsity, seed=1))
    assert not torch.equal(w, random_sparse_weight(48, 36, sparsity, seed=2))


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_csr_product_equals_dense(batch):
    w = random_sparse_weight(40, 24, 0.8, seed=0)
    x = torch.randn(batch, 24, generator=torch.Generator().manual_seed(3))
    csr = to_csr(w)
    assert csr.layout == torch.sparse_csr
    expected = x @ w.t()
    torch.testing.assert_close(csr_linear(x, csr), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense_linear(x, w), expected)


def test_byte_counts_are_exact():
    w = random_sparse_weight(30, 20, 0.7, seed=0)
    csr = to_csr(w)
    nnz = int((w != 0).sum())
    # values (fp32) + col indices (int64) + 31 row pointers (int64)
    assert csr_nbytes(csr) == nnz * 4 + nnz * 8 + 31 * 8
    assert csr_nbytes(csr) == csr_nbytes_formula(30, 20, nnz, torch.float32, torch.int64)
    assert dense_nbytes(w) == 30 * 20 * 4
    assert dense_nbytes(w.half()) == 30 * 20 * 2
    half = to_csr(w.half())
    assert csr_nbytes(half) == csr_nbytes_formula(30, 20, nnz, torch.float16, torch.int64) == nnz * 10 + 31 * 8
    with pytest.raises(ValueError, match="CSR"):
        csr_nbytes(w)


def test_memory_break_even_formula():
    assert csr_memory_break_even(torch.float32, torch.int64) == pytest.approx(2 / 3)
    assert csr_memory_break_even(torch.float32, torch.int32) == pytest.approx(0.5)
    assert csr_memory_break_even(torch.float16, torch.int64) == pytest.approx(0.8)
    assert csr_memory_break_even(4, 8) == pytest.approx(2 / 3)
    # with the row pointers the break-even is a little higher, and it bounds the measured bytes
    rows, cols = 64, 48
    s = csr_memory_break_even(torch.float32, torch.int64, rows, cols)
    assert 2 / 3 < s < 0.7
    numel = rows * cols
    nnz_at = (1 - s) * numel
    assert csr_nbytes_formula(rows, cols, int(nnz_at) + 1) > dense_nbytes(torch.empty(rows, cols))
    assert csr_nbytes_formula(rows, cols, int(nnz_at) - 1) < dense_nbytes(torch.empty(rows, cols))
    w = random_sparse_weight(rows, cols, 0.5)
    assert csr_nbytes(to_csr(w)) > dense_nbytes(w)  # 50% unstructured fp32 CSR is bigger than dense
    w = random_sparse_weight(rows, cols, 0.75)
    assert csr_nbytes(to_csr(w)) < dense_nbytes(w)
    with pytest.raises(ValueError, match="both rows and cols"):
        csr_memory_break_even(torch.float32, torch.int64, rows=4)
    with pytest.raises(ValueError, match="dtype"):
        csr_memory_break_even("fp32")


def test_time_dense_vs_csr_rows():
    w = random_sparse_weight(32, 16, 0.9, seed=0)
    rows = time_dense_vs_csr(w, batch_sizes=(1, 8), warmup=1, repeats=3)
    assert [r["batch"] for r in rows] == [1, 8]
    for r in rows:
        assert r["sparsity"] == pytest.approx(int(32 * 16 * 0.9) / (32 * 16))
        assert r["dense_ms"] > 0 and r["csr_ms"] > 0
        assert r["time_ratio"] == pytest.approx(r["csr_ms"] / r["dense_ms"])
        assert r["csr_bytes"] == csr_nbytes(to_csr(w)) and r["dense_bytes"] == 32 * 16 * 4
        assert r["max_abs_diff"] < 1e-4
        assert r["threads"] == torch.get_num_threads()
    with pytest.raises(ValueError, match="batch"):
        time_dense_vs_csr(w, batch_sizes=(0,))


def test_sweep_covers_the_grid():
    rows = sweep(sparsities=(0.5, 0.9), batch_sizes=(1, 2), shapes=((8, 4), (4, 4)), warmup=0, repeats=1, progress=False)
    assert len(rows) == 8
    assert {(r["out_features"], r["in_features"], r["target_sparsity"], r["batch"]) for r in rows} == {
        (o, i, s, b) for (o, i) in ((8, 4), (4, 4)) for s in (0.5, 0.9) for b in (1, 2)
    }


def _rows(points, batch=1, shape=(8, 8)):
    return [{"sparsity": s, "batch": batch, "time_ratio": r, "out_features": shape[0], "in_features": shape[1]} for s, r in points]


def test_break_even_interpolates_the_crossing():
    rows = _rows([(0.5, 3.0), (0.7, 1.5), (0.9, 0.5), (0.99, 0.1)])
    assert break_even_sparsity(rows, 1) == pytest.approx(0.8)  # ratio 1.5 -> 0.5: 1 is halfway
    rows += _rows([(0.5, 2.0), (0.9, 1.2)], batch=4)
    assert break_even_sparsity(rows, 4) is None
    assert break_even_sparsity(rows, 1) == pytest.approx(0.8)
    # order of rows does not matter; a noisy win below a later loss is not the break-even
    noisy = _rows([(0.9, 0.5), (0.5, 0.9), (0.7, 2.0), (0.99, 0.2)])
    assert break_even_sparsity(noisy, 1) == pytest.approx(0.7 + 1.0 / 1.5 * 0.2)
    assert break_even_sparsity(_rows([(0.5, 0.8), (0.9, 0.3)]), 1) == 0.5


def test_break_even_needs_a_shape_when_rows_mix_shapes():
    rows = _rows([(0.5, 2.0), (0.9, 0.0)], shape=(8, 8)) + _rows([(0.5, 3.0), (0.9, 1.0), (0.99, 0.5)], shape=(4, 8))
    with pytest.raises(ValueError, match="shape"):
        break_even_sparsity(rows, 1)
    assert break_even_sparsity(rows, 1, shape=(8, 8)) == pytest.approx(0.7)
    assert break_even_sparsity(rows, 1, shape=(4, 8)) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="batch size 2"):
        break_even_sparsity(rows, 2, shape=(8, 8))


def test_csr_linear_module_matches_linear():
    linear = torch.nn.Linear(12, 20)
    linear.weight.data = random_sparse_weight(20, 12, 0.6)
    module = CSRLinear.from_linear(linear)
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(module(x), linear(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not a prunable linear"):
        CSRLinear.from_linear(torch.nn.LayerNorm(4))


def test_csr_model_logits_equal_dense(tiny, windows):
    model, adapter, _ = tiny
    prune_magnitude(model, adapter, 0.5)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        expected = reference(input_ids=windows[:2], use_cache=False).logits
        replaced = replace_linears_with_csr(model, adapter)
        assert len(replaced) == len(adapter.named_linears(reference)) > 0
        assert adapter.named_linears(model) == {}
        got = model(input_ids=windows[:2], use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # bytes: values + int64 indices of each linear, exactly
    expected_bytes = 0
    for m in adapter.named_linears(reference).values():
        w = weight_matrix(m)
        expected_bytes += int((w != 0).sum()) * 12 + (w.shape[0] + 1) * 8
    assert linear_bytes(model, adapter) == expected_bytes


def test_compare_model_dense_vs_csr(tiny, windows):
    model, adapter, _ = tiny
    prune_magnitude(model, adapter, 0.5)
    before = {n: weight_matrix(m).clone() for n, m in adapter.named_linears(model).items()}
    result = compare_model_dense_vs_csr(model, adapter, windows[:1], warmup=0, repeats=1)
    assert result["max_abs_logit_diff"] < 1e-4
    assert result["linear_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert result["csr_linear_bytes"] > result["dense_linear_bytes"]  # 50% with int64 indices costs more
    assert result["tokens"] == windows.shape[1]
    after = adapter.named_linears(model)  # the model itself is untouched
    assert all(torch.equal(weight_matrix(after[n]), w) for n, w in before.items())
    with pytest.raises(ValueError, match="batch, seqlen"):
        compare_model_dense_vs_csr(model, adapter, windows[0])
