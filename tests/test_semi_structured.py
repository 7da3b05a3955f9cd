import math

import pytest
import torch
from torch import nn

from pruning_course.architectures import adapter_for
from pruning_course.testing import tiny_model
from pruning_course.masks import is_nm_sparse, nm_mask
from pruning_course.semi_structured import (
    CompressedNM,
    SemiStructuredUnsupported,
    compress_nm,
    compressed_size_report,
    decompress_nm,
    index_bits,
    semi_structured_support,
    sparsify_model_semi_structured,
    to_semi_structured,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="semi-structured kernels need a CUDA GPU")


def random_nm(rows, cols, n, m, dtype=torch.float32, seed=0, extra_zero_fraction=0.0):
    """A random N:M-sparse weight; ``extra_zero_fraction`` zeroes some kept values too (groups with < n non-zeros)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    w = w * nm_mask(torch.rand(rows, cols, generator=g), n, m)
    if extra_zero_fraction:
        w = w * (torch.rand(rows, cols, generator=g) >= extra_zero_fraction)
    return w.to(dtype)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_is_exact(n, m, dtype):
    w = random_nm(16, 64, n, m, dtype, extra_zero_fraction=0.3)
    w[0] = 0  # an all-zero row
    w[1, :m] = 0  # an all-zero group
    c = compress_nm(w, n, m)
    assert c.values.shape == (16, 64 * n // m) and c.values.dtype == dtype
    assert c.indices.dtype == torch.uint8
    back = decompress_nm(c)
    assert back.dtype == dtype and torch.equal(back, w)


def test_groups_with_fewer_than_n_nonzeros_store_zeros():
    w = torch.tensor([[0.0, 0.0, 3.0, 0.0, 1.0, 0.0, 0.0, 2.0]])
    c = compress_nm(w, 2, 4)
    # group 0 keeps position 2 (the non-zero) and position 0 (the first zero); group 1 keeps 0 and 3
    assert c.values.tolist() == [[0.0, 3.0, 1.0, 2.0]]
    # indices 0, 2, 0, 3 at 2 bits each, least significant first: 0b11_00_10_00
    assert c.indices.tolist() == [0b11001000]
    assert torch.equal(decompress_nm(c), w)


def test_dense_weight_round_trips_when_already_nm():
    w = random_nm(8, 32, 2, 4)
    assert is_nm_sparse(w, 2, 4)
    assert torch.equal(decompress_nm(compress_nm(w)), w)


def test_exact_byte_counts_2_4_fp16():
    c = compress_nm(random_nm(64, 128, 2, 4, torch.float16), 2, 4)
    assert c.values.numel() * c.values.element_size() == 8192
    assert c.indices.numel() == 1024
    assert c.nbytes == 8192 + 1024
    assert c.dense_nbytes == 64 * 128 * 2
    assert c.ratio == pytest.approx(0.5625)


@pytest.mark.parametrize(
    "n,m,dtype,ratio",
    [(2, 4, torch.float16, 0.5625), (2, 4, torch.float32, 0.53125), (1, 4, torch.float16, 0.28125),
     (4, 8, torch.bfloat16, 0.5 + 4 * 3 / (8 * 8 * 2))],
)
def test_ratios(n, m, dtype, ratio):
    report = compressed_size_report(random_nm(32, 256, n, m, dtype), n, m)
    assert report["ratio"] == pytest.approx(ratio)
    assert report["expected_ratio"] == pytest.approx(ratio)
    assert report["compressed_bytes"] == report["values_bytes"] + report["index_bytes"]


def test_index_bits():
    assert [index_bits(m) for m in (2, 3, 4, 5, 8, 16)] == [1, 2, 2, 3, 3, 4]
    assert all(index_bits(m) == math.ceil(math.log2(m)) for m in range(2, 33))


def test_odd_bit_widths_pack_across_bytes():
    w = random_nm(3, 24, 2, 8, seed=1)  # 3 bits per index: fields straddle byte boundaries
    c = compress_nm(w, 2, 8)
    assert c.indices.numel() == math.ceil(3 * 3 * 2 * 3 / 8)
    assert torch.equal(decompress_nm(c), w)


def test_not_nm_sparse_names_row_and_group():
    w = random_nm(4, 16, 2, 4)
    w[2, 9] = w[2, 10] = w[2, 11] = w[2, 8] = 1.0
    with pytest.raises(ValueError, match=r"not 2:4 sparse: row 2, group 2 \(columns 8..11\) has 4 non-zeros"):
        compress_nm(w, 2, 4)


def test_width_not_multiple_of_m():
    with pytest.raises(ValueError, match="30 is not a multiple of 4"):
        compress_nm(torch.zeros(2, 30), 2, 4)


def test_bad_pattern_and_shape():
    with pytest.raises(ValueError, match="0 < N < M"):
        compress_nm(torch.zeros(2, 8), 4, 4)
    with pytest.raises(ValueError, match="2-D"):
        compress_nm(torch.zeros(2, 2, 8), 2, 4)


def test_compressed_is_a_dataclass_with_metadata():
    c = compress_nm(random_nm(4, 8, 1, 4), 1, 4)
    assert isinstance(c, CompressedNM) and c.shape == (4, 8) and (c.n, c.m) == (1, 4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_support_reason_without_cuda():
    w = random_nm(64, 64, 2, 4, torch.float16)
    assert semi_structured_support(w).startswith("no CUDA device")
    linear = nn.Linear(64, 64, bias=False).half()
    with pytest.raises(SemiStructuredUnsupported, match="no CUDA device"):
        to_semi_structured(linear)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_sparsify_model_skips_everything_without_cuda():
    model, _ = tiny_model("llama")
    adapter = adapter_for(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    skipped = sparsify_model_semi_structured(model, adapter)
    assert set(skipped) == set(adapter.named_linears(model))
    assert all("no CUDA device" in reason for reason in skipped.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_conv1d_is_refused():
    from transformers.pytorch_utils import Conv1D

    with pytest.raises(SemiStructuredUnsupported, match="Conv1D is not an nn.Linear"):
        to_semi_structured(Conv1D(64, 64))


# ---------------------------------------------------------------------------------------------
# CUDA: the real kernels (skipped on CPU-only machines)
# ---------------------------------------------------------------------------------------------


def _cuda_capable() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


needs_sparse_cores = pytest.mark.skipif(not _cuda_capable(), reason="2:4 sparse kernels need CUDA capability >= 8.0")


@needs_cuda
def test_support_reasons_on_cuda():
    w = random_nm(64, 128, 2, 4, torch.float16)
    assert "move the layer to a CUDA device" in semi_structured_support(w)
    if not _cuda_capable():
        assert "compute capability" in semi_structured_support(w.cuda())
        return
    assert semi_structured_support(w.cuda()) is None
    assert "dtype float32 not supported" in semi_structured_support(w.float().cuda())
    assert "shape (100, 128)" in semi_structured_support(random_nm(100, 128, 2, 4, torch.float16).cuda())
    dense = torch.randn(64, 128, dtype=torch.float16, device="cuda")
    assert "not 2:4 sparse" in semi_structured_support(dense)


@needs_sparse_cores
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_semi_structured_linear_matches_dense(dtype, bias):
    torch.manual_seed(0)
    linear = nn.Linear(256, 128, bias=bias).to("cuda", dtype)
    with torch.no_grad():
        linear.weight.mul_(nm_mask(linear.weight.abs(), 2, 4))
    x = torch.randn(3, 5, 256, device="cuda", dtype=dtype)  # 15 tokens: not a multiple of the tile
    with torch.no_grad():
        expected = linear(x)
        to_semi_structured(linear)
        assert isinstance(linear.weight, torch.sparse.SparseSemiStructuredTensor)
        got = linear(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)


@needs_sparse_cores
def test_sparsify_tiny_model_on_cuda():
    from pruning_course.methods import prune_model

    model, tokenizer = tiny_model("llama")
    adapter = adapter_for(model)
    prune_model(model, adapter, "magnitude", pattern="2:4")
    model = model.to("cuda", torch.float16)
    ids = torch.randint(0, len(tokenizer), (2, 16), device="cuda")
    with torch.no_grad():
        expected = model(ids).logits
        skipped = sparsify_model_semi_structured(model, adapter)
        got = model(ids).logits
    # widths 64 and 160 fit cuSPARSELt's 16x16 tile; CUTLASS (32x64) skips the 160-wide down_proj
    assert len(skipped) < len(adapter.named_linears(model))
    torch.testing.assert_close(got, expected, rtol=5e-2, atol=5e-2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_gpu_benchmark_script_skips_cleanly_without_cuda():
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_semi_structured.py"
    done = subprocess.run([sys.executable, str(script), "--no-model"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["skipped"].startswith("no CUDA device")
