"""RTN and GPTQ quantization, int packing, and the compressed safetensors files (tiny models only)."""

import math
import os
import struct

import pytest
import torch

from pruning_course.architectures import adapter_for, weight_matrix
from pruning_course.testing import tiny_model
from pruning_course.masks import is_nm_sparse, nm_mask
from pruning_course.methods import prune_model
from pruning_course.quantize import (
    decode_weight,
    dequantize,
    encode_weight,
    gptq_quantize,
    load_compressed,
    measure_inference_memory,
    pack_int,
    pack_mask,
    packed_nbytes,
    quantize_model,
    quantize_rtn,
    read_metadata,
    save_compressed,
    unpack_int,
    unpack_mask,
)
from pruning_course.quantize.rtn import SCALE_DTYPE


def correlated_layer(rows=24, cols=64, tokens=512, seed=0):
    """A weight and inputs whose features are strongly correlated (low rank plus a little noise)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, 6, generator=gen) @ torch.randn(6, cols, generator=gen) + 0.05 * torch.randn(tokens, cols, generator=gen)
    weight = torch.randn(rows, cols, generator=gen)
    return weight, x, 2.0 / tokens * x.t() @ x


def output_error(x, weight, new_weight):
    return float((x @ weight.t() - x @ new_weight.t()).norm())


# ---------------------------------------------------------------------------------------------
# The grid and RTN
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [16, -1])
@pytest.mark.parametrize("sym", [False, True])
def test_rtn_round_trip_is_within_half_a_step(bits, group_size, sym):
    gen = torch.Generator().manual_seed(bits)
    weight = torch.randn(12, 48, generator=gen) * torch.logspace(-3, 1, 12).unsqueeze(1)  # rows of very different scale
    codes, scales, zeros = quantize_rtn(weight, bits, group_size, sym=sym)
    g = 48 if group_size == -1 else group_size
    assert codes.dtype == torch.uint8 and codes.shape == weight.shape and int(codes.max()) <= 2**bits - 1
    assert scales.shape == zeros.shape == (12, 48 // g)
    assert torch.equal(scales.to(SCALE_DTYPE).float(), scales)  # exactly representable on disk
    error = (dequantize(codes, scales, zeros) - weight).abs().reshape(12, -1, g)
    assert (error <= scales.unsqueeze(-1) / 2 * (1 + 1e-6)).all()
    # and the grid is no finer than it may be: the step is the min-max range over 2^b - 1, rounded up to float16
    span = weight.reshape(12, -1, g).amax(-1).clamp(min=0) - weight.reshape(12, -1, g).amin(-1).clamp(max=0)
    if not sym:
        step = span / (2**bits - 1)
        assert (scales >= step).all() and (scales <= step * (1 + 2**-10) + 2**-24).all()


def test_rtn_keeps_zeros_exactly_zero_and_uses_one_grid_per_group():
    weight = torch.tensor([[0.0, 1.0, -2.0, 0.0, 4.0, 8.0, 0.0, 0.5]])
    codes, scales, zeros = quantize_rtn(weight, 4, group_size=4)
    restored = dequantize(codes, scales, zeros)
    assert (restored[weight == 0] == 0).all()
    assert scales.shape == (1, 2) and scales[0, 0] < scales[0, 1]  # the second group spans a wider range
    assert torch.equal(codes[0, [0, 3]], zeros[0, [0, 0]])  # zero weight <=> zero point


@pytest.mark.parametrize("bad", [1, 5, 16, 0])
def test_unsupported_bit_widths_are_rejected(bad):
    with pytest.raises(ValueError, match="bits must be one of 2, 3, 4, 8"):
        quantize_rtn(torch.randn(4, 16), bad, 8)
    with pytest.raises(ValueError, match="bits must be one of"):
        gptq_quantize(torch.randn(4, 16), torch.eye(16), bad, 8)


@pytest.mark.parametrize("bad", [48, 0, -2, 100])
def test_group_sizes_that_do_not_divide_the_width_are_rejected(bad):
    with pytest.raises(ValueError, match="group_size"):
        quantize_rtn(torch.randn(4, 64), 4, bad)
    with pytest.raises(ValueError, match="group_size"):
        gptq_quantize(torch.randn(4, 64), torch.eye(64), 4, bad)


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("count", [1, 7, 8, 33, 1000])
def test_packing_round_trip_is_exact_and_tight(bits, count):
    values = torch.randint(0, 2**bits, (count,), generator=torch.Generator().manual_seed(count))
    packed = pack_int(values, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(count, bits) == -(-count * bits // 8)
    assert torch.equal(unpack_int(packed, bits, count), values.to(torch.uint8))


def test_int4_packs_two_codes_per_byte_low_nibble_first():
    assert pack_int(torch.tensor([0x3, 0xA, 0xF, 0x1, 0x7]), 4).tolist() == [0xA3, 0x1F, 0x07]
    mask = torch.tensor([[True, False, True, True], [False, False, False, True]])
    assert pack_mask(mask).tolist() == [0b10001101]
    assert torch.equal(unpack_mask(pack_mask(mask), (2, 4)), mask)


def test_packing_rejects_values_that_do_not_fit():
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_int(torch.tensor([3, 16]), 4)


# ---------------------------------------------------------------------------------------------
# GPTQ
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits,group_size", [(4, 16), (4, -1), (3, 32), (8, 16)])
def test_gptq_reconstructs_the_layer_better_than_rtn_on_the_same_grid(bits, group_size):
    weight, x, hessian = correlated_layer(seed=bits)
    rtn = dequantize(*quantize_rtn(weight, bits, group_size))
    codes, scales, zeros = gptq_quantize(weight, hessian, bits, group_size, blocksize=16)
    gptq = dequantize(codes, scales, zeros)
    assert int(codes.max()) <= 2**bits - 1 and scales.shape == (24, 64 // (64 if group_size == -1 else group_size))
    assert output_error(x, weight, gptq) < 0.7 * output_error(x, weight, rtn)


def test_gptq_with_an_identity_hessian_is_rtn():
    """With uncorrelated inputs no error can be compensated: GPTQ reduces to rounding to nearest."""
    weight = torch.randn(8, 32, generator=torch.Generator().manual_seed(3))
    expected = quantize_rtn(weight, 4, 8)
    for got, want in zip(gptq_quantize(weight, torch.eye(32), 4, 8, blocksize=8), expected):
        assert torch.equal(got, want)


def test_gptq_block_size_does_not_change_the_result_much():
    weight, x, hessian = correlated_layer(seed=5)
    a = dequantize(*gptq_quantize(weight, hessian, 4, 16, blocksize=64))
    b = dequantize(*gptq_quantize(weight, hessian, 4, 16, blocksize=16))
    assert abs(output_error(x, weight, a) - output_error(x, weight, b)) < 0.05 * output_error(x, weight, a)


def test_gptq_joint_mode_keeps_pruned_weights_exactly_zero():
    weight, x, hessian = correlated_layer(seed=7)
    keep = torch.rand(weight.shape, generator=torch.Generator().manual_seed(7)) > 0.5
    codes, scales, zeros = gptq_quantize(weight, hessian, 4, 16, mask=keep)
    joint = dequantize(codes, scales, zeros)
    assert (joint[~keep] == 0).all() and (joint[keep] != 0).float().mean() > 0.8
    # better than pruning then rounding without compensation
    naive = dequantize(*quantize_rtn(weight * keep, 4, 16))
    assert output_error(x, weight, joint) < output_error(x, weight, naive)


def test_gptq_rejects_a_hessian_or_mask_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"must be \(16, 16\)"):
        gptq_quantize(torch.randn(4, 16), torch.eye(8), 4, 8)
    with pytest.raises(ValueError, match="bool keep-mask"):
        gptq_quantize(torch.randn(4, 16), torch.eye(16), 4, 8, mask=torch.ones(4, 16))


# ---------------------------------------------------------------------------------------------
# Whole models
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_quantize_model_writes_dequantized_weights_and_returns_the_codes(tiny, windows, method):
    model, adapter, _ = tiny
    before = {name: weight_matrix(m).clone() for name, m in adapter.named_linears(model).items()}
    quantized = quantize_model(model, adapter, method, 4, 16, windows, progress=False)
    assert set(quantized) == set(before)
    for name, module in adapter.named_linears(model).items():
        q = quantized[name]
        assert q.bits == 4 and q.group_size == 16 and q.codes.shape == before[name].shape
        assert torch.equal(weight_matrix(module), q.dequantize())
        assert not torch.equal(weight_matrix(module), before[name])
    assert model.lm_head.weight.dtype == torch.float32  # embeddings and head untouched


def test_pruned_model_stays_exactly_sparse_after_gptq(windows, tokenizer):
    model, _ = tiny_model("llama", tokenizer=tokenizer)
    adapter = adapter_for(model)
    masks = prune_model(model, adapter, "wanda", None, "2:4", windows=windows, progress=False)
    quantize_model(model, adapter, "gptq", 4, 16, windows, progress=False)
    for name, module in adapter.named_linears(model).items():
        weight = weight_matrix(module)
        assert (weight[~masks[name]] == 0).all()
        assert is_nm_sparse(weight, 2, 4)


def test_quantize_model_rejects_a_group_size_before_changing_anything(tiny, windows):
    model, adapter, _ = tiny
    before = [weight_matrix(m).clone() for m in adapter.named_linears(model).values()]
    common = math.gcd(*(w.shape[1] for w in before))  # 32 for llama/opt (64 and 160 inputs), 64 for gpt2
    with pytest.raises(ValueError, match=f"does not divide the input width.*e.g. {common}"):
        quantize_model(model, adapter, "rtn", 4, 128)
    with pytest.raises(ValueError, match="calibration windows"):
        quantize_model(model, adapter, "gptq", 4, 16)
    with pytest.raises(ValueError, match="unknown quantization method"):
        quantize_model(model, adapter, "awq", 4, 16)
    assert all(torch.equal(a, weight_matrix(m)) for a, m in zip(before, adapter.named_linears(model).values()))


# ---------------------------------------------------------------------------------------------
# Compressed files
# ---------------------------------------------------------------------------------------------


def logits(model, windows):
    with torch.no_grad():
        return model(input_ids=windows, use_cache=False).logits


@pytest.mark.parametrize("pattern,bits", [(None, 4), ("2:4", 8), ("unstructured", 4), ("2:4", None), ("unstructured", None)])
def test_saved_file_reloads_to_identical_weights_and_logits(tiny, windows, tmp_path, pattern, bits):
    model, adapter, tok = tiny
    if pattern is not None:
        prune_model(model, adapter, "magnitude", 0.5 if pattern == "unstructured" else None,
                    None if pattern == "unstructured" else pattern)
    quantized = quantize_model(model, adapter, "gptq", bits, 16, windows, progress=False) if bits else None
    path = tmp_path / "model.safetensors"
    report = save_compressed(model, adapter, path, quantized, float_dtype=None)
    expected = "dense" if pattern is None else ("2:4" if pattern == "2:4" else "bitmask")
    assert set(report["storage_per_linear"]) == {expected}
    for base in (None, tiny_model(adapter.family, seed=1, tokenizer=tok)[0]):  # from the file's config, or filled in
        reloaded = load_compressed(path, base).model
        for name, module in adapter_for(reloaded).named_linears(reloaded).items():
            assert torch.equal(weight_matrix(module), weight_matrix(model.get_submodule(name)))
        assert torch.equal(logits(reloaded, windows), logits(model, windows))
    packed = load_compressed(path, packed=True).model
    assert torch.allclose(logits(packed, windows), logits(model, windows), atol=1e-5)


def test_float16_storage_keeps_quantized_weights_exact_and_rounds_the_rest(windows, tmp_path, tokenizer):
    model, _ = tiny_model("llama", tokenizer=tokenizer)
    adapter = adapter_for(model)
    quantized = quantize_model(model, adapter, "rtn", 4, 32)
    save_compressed(model, adapter, tmp_path / "m.safetensors", quantized)  # float16 by default
    reloaded = load_compressed(tmp_path / "m.safetensors").model
    for name, module in adapter.named_linears(reloaded).items():
        assert torch.equal(weight_matrix(module), weight_matrix(model.get_submodule(name)))
    embed = model.model.embed_tokens.weight
    assert torch.equal(reloaded.model.embed_tokens.weight, embed.half().float())
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight  # tied weights stay tied


def test_size_on_disk_is_real_and_shrinks_with_bits_and_sparsity(windows, tmp_path, tokenizer):
    model, _ = tiny_model("llama", tokenizer=tokenizer)
    adapter = adapter_for(model)
    sizes = {"fp16": save_compressed(model, adapter, tmp_path / "fp16.st")["bytes"]}
    for bits in (8, 4):
        m, _ = tiny_model("llama", tokenizer=tokenizer)
        q = quantize_model(m, adapter, "rtn", bits, 32)
        sizes[f"int{bits}"] = save_compressed(m, adapter, tmp_path / f"int{bits}.st", q)["bytes"]
    prune_model(model, adapter, "magnitude", 0.5)
    report = save_compressed(model, adapter, tmp_path / "sparse.st")
    sizes["sparse"] = report["bytes"]
    assert sizes["int4"] < sizes["int8"] < sizes["sparse"] < sizes["fp16"]
    for name, size in sizes.items():
        assert size == os.path.getsize(tmp_path / f"{name}.st")
    # the file is exactly the safetensors header plus the tensors we count
    with open(tmp_path / "sparse.st", "rb") as f:
        header_length = struct.unpack("<Q", f.read(8))[0]
    assert report["bytes"] == 8 + header_length + sum(v for k, v in report["breakdown"].items() if k != "header_and_metadata")
    # 50% unstructured in fp16: 1 mask bit + 8 value bits (half of 16) per weight
    assert report["bits_per_linear_weight"] == pytest.approx(9.0, abs=0.01)


def test_int4_dense_file_stores_two_codes_per_byte(tmp_path, tokenizer):
    model, _ = tiny_model("llama", tokenizer=tokenizer)
    adapter = adapter_for(model)
    quantized = quantize_model(model, adapter, "rtn", 4, 32)
    report = save_compressed(model, adapter, tmp_path / "m.st", quantized)
    params = report["linear_params"]
    assert report["breakdown"]["linear_weights"] == params // 2
    assert report["breakdown"]["quantization_params"] == params // 32 * 2 + params // 32 // 2  # fp16 scale + int4 zero
    layers = read_metadata(tmp_path / "m.st")["layers"]
    assert all(layer["bits"] == 4 and layer["storage"] == "dense" for layer in layers.values())


def test_auto_storage_keeps_2_4_weights_in_2_4_format_unless_a_bitmask_is_much_smaller():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 64, generator=gen)
    weight = weight * nm_mask(weight.abs(), 2, 4)
    weight[0, weight[0].nonzero()[0]] = 0.0  # one kept weight that happens to be zero: the bitmask is a byte smaller
    sizes = {s: encode_weight(weight, storage=s).nbytes for s in ("dense", "bitmask", "nm")}
    assert sizes["bitmask"] < sizes["nm"] < sizes["dense"]
    assert sizes["nm"] == 16 * 32 * 2 + 16 * 32 * 2 // 8  # fp16 values of the kept half + 2-bit indices
    chosen = encode_weight(weight)
    assert chosen.meta["storage"] == "2:4" and torch.equal(decode_weight(chosen.meta, chosen.tensors), weight.half())
    very_sparse = weight * (torch.rand(weight.shape, generator=gen) < 0.2)  # still fits 2:4, ~90% zeros
    assert encode_weight(very_sparse).meta["storage"] == "bitmask"


def test_forced_storage_that_does_not_fit_is_rejected(tmp_path, tokenizer):
    model, _ = tiny_model("llama", tokenizer=tokenizer)
    adapter = adapter_for(model)
    with pytest.raises(ValueError, match="at most 2 non-zeros"):
        save_compressed(model, adapter, tmp_path / "m.st", storage="nm")
    with pytest.raises(ValueError, match="unknown storage"):
        save_compressed(model, adapter, tmp_path / "m.st", storage="csr")
    quantized = quantize_model(model, adapter, "rtn", 4, 32)
    weight_matrix(model.model.layers[0].mlp.up_proj).mul_(2)
    with pytest.raises(ValueError, match="changed after quantize_model"):
        save_compressed(model, adapter, tmp_path / "m.st", quantized)


def test_a_file_from_another_architecture_is_rejected(tmp_path, tokenizer):
    model, _ = tiny_model("llama", tokenizer=tokenizer)
    save_compressed(model, adapter_for(model), tmp_path / "m.st")
    with pytest.raises(ValueError, match="does not fit this model"):
        load_compressed(tmp_path / "m.st", tiny_model("gpt2", tokenizer=tokenizer)[0])


def test_inference_memory_is_measured_in_a_fresh_process(tmp_path, tokenizer):
    model, _ = tiny_model("llama", tokenizer=tokenizer)
    save_compressed(model, adapter_for(model), tmp_path / "m.st")
    result = measure_inference_memory(tmp_path / "m.st", packed=True, seqlen=32)
    assert result["packed"] and result["seqlen"] == 32
    assert result["peak_inference_mb"] >= result["resident_after_load_mb"] > result["baseline_mb"] > 0
