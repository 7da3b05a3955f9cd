"""The calibration engine and the model-level drivers, end to end on tiny Llama, GPT-2 and OPT."""

import copy

import pytest
import torch
from torch.nn.utils import prune as torch_prune

from pruning_course.architectures import adapter_for, weight_matrix
from pruning_course.testing import tiny_model
from pruning_course.calibration import InputHessian, SquaredInputNorm, capture_block_inputs, run_blockwise
from pruning_course.evaluate import perplexity, sparsity_report
from pruning_course.architectures import apply_mask
from pruning_course.masks import is_nm_sparse, num_to_prune, per_matrix_mask
from pruning_course.methods import prune_model


def stats_from_full_forward(model, adapter, windows):
    """Squared input norms of every linear, collected the textbook way: hooks + one full forward."""
    stats, handles = {}, []
    for name, linear in adapter.named_linears(model).items():
        stats[name] = SquaredInputNorm(linear)
        handles.append(linear.register_forward_hook(lambda _m, args, _o, s=stats[name]: s.add(args[0])))
    with torch.no_grad():
        model(input_ids=windows, use_cache=False)
    for h in handles:
        h.remove()
    return {name: s.value for name, s in stats.items()}


def test_capture_gets_block_inputs_and_every_keyword(tiny, windows):
    model, adapter, _ = tiny
    captured = capture_block_inputs(model, adapter, windows, batch_size=4)
    assert len(captured) == 2 and captured[0][0].shape == (4, 32, 64)
    if adapter.family == "llama":
        assert "position_embeddings" in captured[0][1]
        torch.testing.assert_close(captured[0][0], model.model.embed_tokens(windows[:4]))


def test_blockwise_statistics_equal_a_full_forward_when_nothing_is_pruned(tiny, windows):
    model, adapter, _ = tiny
    expected = stats_from_full_forward(model, adapter, windows)
    got = {}

    def record(index, block, stats):
        for name, s in stats.items():
            got[f"{adapter.blocks_path}.{index}.{name}"] = s.value

    run_blockwise(model, adapter, windows, record, batch_size=3, progress=False)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)


def test_later_blocks_are_calibrated_on_the_pruned_outputs(tiny, windows):
    model, adapter, _ = tiny
    reference = copy.deepcopy(model)
    for linear in adapter.linears(adapter.blocks(reference)[0]).values():
        apply_mask(linear, per_matrix_mask(weight_matrix(linear).abs(), 0.5))
    expected = stats_from_full_forward(reference, adapter, windows)
    got = {}

    def prune_block0_record_block1(index, block, stats):
        if index == 0:
            for linear in adapter.linears(block).values():
                apply_mask(linear, per_matrix_mask(weight_matrix(linear).abs(), 0.5))
        if index == 1:
            got.update({f"{adapter.blocks_path}.1.{n}": s.value for n, s in stats.items()})

    run_blockwise(model, adapter, windows, prune_block0_record_block1, progress=False)
    for name, value in got.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5)


def test_hessian_statistic_is_two_over_n_xtx():
    linear = torch.nn.Linear(8, 4)
    x = torch.randn(3, 5, 8)
    stat = InputHessian(linear)
    stat.add(x[:2])
    stat.add(x[2:])
    flat = x.reshape(-1, 8)
    torch.testing.assert_close(stat.value, 2 / 15 * flat.t() @ flat)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_drivers_prune_every_linear_and_nothing_else(tiny, windows, method, pattern):
    model, adapter, tokenizer = tiny
    untouched = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = prune_model(model, adapter, method, 0.5, pattern, windows=windows, progress=False)
    linears = adapter.named_linears(model)
    assert masks.keys() == linears.keys()
    for name, linear in linears.items():
        w = weight_matrix(linear)
        assert (w[~masks[name]] == 0).all(), f"{name}: a removed weight is not zero"
        if pattern:
            assert is_nm_sparse(w, 2, 4), name
        elif method == "wanda":  # per output row
            assert ((w == 0).sum(1) == num_to_prune(w.shape[1], 0.5)).all(), name
        else:
            assert int((w == 0).sum()) >= num_to_prune(w.numel(), 0.5) - 1, name
    linear_params = {f"{n}.weight" for n in linears}
    for name, param in model.named_parameters():
        if name not in linear_params:
            assert torch.equal(param, untouched[name]), f"{name} changed: only linear weights may be pruned"
    assert abs(sparsity_report(model, adapter)["sparsity"] - 0.5) < 0.01
    ppl = perplexity(model, windows.reshape(-1), 16, progress=False).ppl
    assert torch.isfinite(torch.tensor(ppl))


def test_gpt2_conv1d_groups_run_along_the_input_dimension(tokenizer, windows):
    model, _ = tiny_model("gpt2", tokenizer=tokenizer)
    adapter = adapter_for(model)
    prune_model(model, adapter, "wanda", None, "2:4", windows=windows, progress=False)
    c_attn = adapter.blocks(model)[0].attn.c_attn
    assert c_attn.weight.shape == (64, 192)  # Conv1D stores (in, out)
    assert is_nm_sparse(c_attn.weight.t(), 2, 4)
    assert not is_nm_sparse(c_attn.weight, 2, 4)


def test_pruned_model_saves_and_reloads_with_its_zeros(tiny, windows, tmp_path):
    from transformers import AutoModelForCausalLM

    model, adapter, _ = tiny
    prune_model(model, adapter, "sparsegpt", 0.5, windows=windows, progress=False)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for name, linear in adapter.named_linears(reloaded).items():
        assert torch.equal(weight_matrix(linear), weight_matrix(adapter.named_linears(model)[name]))
    assert sparsity_report(reloaded, adapter)["sparsity"] == sparsity_report(model, adapter)["sparsity"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(windows[:2]).logits, model(windows[:2]).logits)


def test_magnitude_masks_work_with_torch_prune(tiny, windows):
    model, adapter, _ = tiny
    with torch.no_grad():
        dense_logits = model(windows[:2]).logits
    masks = prune_model(model, adapter, "magnitude", 0.5, use_torch_prune=True)
    linear = adapter.named_linears(model)
    first = next(iter(masks))
    assert hasattr(linear[first], "weight_mask") and hasattr(linear[first], "weight_orig")
    with torch.no_grad():
        masked_logits = model(windows[:2]).logits
    assert not torch.allclose(masked_logits, dense_logits)
    for module in linear.values():
        torch_prune.remove(module, "weight")
    with torch.no_grad():
        torch.testing.assert_close(model(windows[:2]).logits, masked_logits)
    assert abs(sparsity_report(model, adapter)["sparsity"] - 0.5) < 0.01


def test_calibrated_methods_need_windows_and_known_names(tiny):
    model, adapter, _ = tiny
    with pytest.raises(ValueError, match="calibration windows"):
        prune_model(model, adapter, "wanda", 0.5)
    with pytest.raises(ValueError, match="unknown pruning method 'obs'"):
        prune_model(model, adapter, "obs", 0.5)


def test_a_failing_step_leaves_the_model_as_it_was_found(tiny, windows):
    from pruning_course.calibration import run_blockwise

    model, adapter, _ = tiny
    model.train()

    def fails(index, block, stats):
        raise RuntimeError("a method's per-layer step failed")
    with pytest.raises(RuntimeError, match="per-layer step failed"):
        run_blockwise(model, adapter, windows, fails, progress=False)
    assert model.training  # run_blockwise evaluates in eval mode and restores the mode it found
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_record_layer_inputs_sees_what_each_layer_receives(tiny, windows):
    from pruning_course.calibration import layer_hessian, record_layer_inputs

    model, adapter, _ = tiny
    names = list(adapter.named_linears(model))[:2]
    inputs = record_layer_inputs(model, names, windows)
    stats = {}

    def on_block(index, block, block_stats):
        for name, stat in block_stats.items():
            stats[f"{adapter.blocks_path}.{index}.{name}"] = stat.value

    from pruning_course.calibration import InputHessian
    run_blockwise(model, adapter, windows, on_block, statistic=InputHessian, progress=False)
    for name in names:
        assert inputs[name].shape == (windows.numel(), weight_matrix(model.get_submodule(name)).shape[1])
        assert torch.allclose(layer_hessian(inputs[name]), stats[name], atol=1e-5)
    assert not any(m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------------------------------------
# calibration dtype: block forwards in bfloat16, statistics and pruning in float32
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_a_float32_calibration_copy_changes_nothing(tiny, windows, method):
    """``calib_dtype=float32`` takes the copy-per-block path with no cast: bit-identical masks and weights."""
    model, adapter, _ = tiny
    other = copy.deepcopy(model)
    plain = prune_model(model, adapter, method, 0.5, windows=windows, progress=False)
    copied = prune_model(other, adapter, method, 0.5, windows=windows, progress=False, calib_dtype=torch.float32)
    assert all(torch.equal(plain[name], copied[name]) for name in plain)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_bfloat16_calibration_prunes_a_float32_model_with_masks_close_to_float32(tiny, windows, method):
    model, adapter, _ = tiny
    other = copy.deepcopy(model)
    reference = prune_model(model, adapter, method, 0.5, windows=windows, progress=False)
    fast = prune_model(other, adapter, method, 0.5, windows=windows, progress=False, calib_dtype=torch.bfloat16)
    assert {p.dtype for p in other.parameters()} == {torch.float32}
    agree = sum(int((reference[n] == fast[n]).sum()) for n in reference) / sum(m.numel() for m in reference.values())
    assert agree > 0.9, f"only {agree:.1%} of the keep-mask agrees with the float32 run"
    for name, mask in fast.items():  # the same sparsity as float32: per row for Wanda, per layer for SparseGPT
        if method == "wanda":
            assert torch.equal(mask.sum(dim=1), reference[name].sum(dim=1)), name
        assert int(mask.sum()) == int(reference[name].sum()), name
    assert sparsity_report(other, adapter)["sparsity"] == pytest.approx(sparsity_report(model, adapter)["sparsity"])


def test_bfloat16_calibration_statistics_are_float32_and_close(tiny, windows):
    model, adapter, _ = tiny
    seen = {}

    def grab(dtype):
        def on_block(index, block, stats):
            for name, stat in stats.items():
                seen[dtype, index, name] = stat.value
        run_blockwise(model, adapter, windows, on_block, statistic=SquaredInputNorm, progress=False, dtype=dtype)

    grab(None)
    grab(torch.bfloat16)
    for (dtype, index, name), value in seen.items():
        if dtype is None:
            fast = seen[torch.bfloat16, index, name]
            assert fast.dtype == torch.float32
            torch.testing.assert_close(fast, value, rtol=0.05, atol=1e-3)


def test_calib_dtype_on_the_command_line(run):
    code, out, err = run("prune", "--model", "tiny-llama", "--method", "wanda", "--sparsity", "0.5",
                         "--calib-samples", "2", "--seqlen", "32", "--calib-dtype", "bfloat16", "--quiet")
    assert code == 0, err
    assert "wanda" in out
    code, _, err = run("prune", "--model", "tiny-llama", "--method", "wanda", "--sparsity", "0.5", "--owl",
                       "--calib-dtype", "bfloat16")
    assert code == 2 and "--owl calibrates in float32 only" in err


@pytest.mark.parametrize("statistic", [SquaredInputNorm, InputHessian])
def test_linears_fed_the_same_tensor_share_one_statistic_with_the_same_numbers(tiny, windows, statistic):
    from pruning_course.calibration import block_statistics

    model, adapter, _ = tiny
    inputs = capture_block_inputs(model, adapter, windows, batch_size=4)
    block = adapter.blocks(model)[0]
    with torch.no_grad():
        shared = block_statistics(block, adapter, inputs, statistic)
        apart = block_statistics(block, adapter, inputs, statistic, share=False)
    assert shared.keys() == apart.keys()
    for name in shared:
        assert torch.equal(shared[name].value, apart[name].value), name
        assert shared[name].tokens == apart[name].tokens
    distinct = len({id(s) for s in shared.values()})
    if adapter.family in ("llama", "opt"):  # q, k, v (and gate, up) read one normalised input
        assert distinct < len(shared)
    assert len({id(s) for s in apart.values()}) == len(apart)
