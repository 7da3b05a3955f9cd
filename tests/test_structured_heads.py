"""Attention-head pruning (Michel et al. 2019 head masks and importance, physical removal) on tiny models."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig

from pruning_course.architectures import adapter_for, weight_matrix
from pruning_course.testing import tiny_config
from pruning_course.structured.heads import (
    choose_heads_to_remove,
    head_importance,
    head_masks,
    normalize_per_layer,
    prune_heads_iteratively,
    qkv_gradient_importance,
    remove_heads,
    removal_mask,
)
from pruning_course.structured.layers import remove_blocks
from pruning_course.structured.resize import attention_shapes, mlp_width
from pruning_course.structured.saving import load_pruned, pruned_structure, save_pruned
from pruning_course.structured.width import prune_mlp_width

NAN = float("nan")


def gqa3_config(vocab_size, layers=2):
    """Llama with 6 query heads over 2 kv heads (3 per group, like SmolLM2's 9 over 3) and q width != hidden."""
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=72, intermediate_size=96, num_hidden_layers=layers,
        num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
    )


def build(kind, tokenizer, layers=2, seed=0):
    config = gqa3_config(len(tokenizer), layers) if kind == "gqa3" else tiny_config(kind, vocab_size=len(tokenizer))
    config.num_hidden_layers = layers
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    return model, adapter_for(model)


def logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False, **kwargs).logits


KINDS = ["llama", "gqa3", "gpt2", "opt"]


# --- masks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_mask_of_ones_changes_nothing_and_a_zero_changes_the_output(kind, tokenizer, windows):
    model, adapter = build(kind, tokenizer)
    before = logits(model, windows)
    with head_masks(model, adapter, requires_grad=True) as mask:
        assert mask.shape == (2, attention_shapes(model, adapter)[0].num_heads) and mask.requires_grad
        torch.testing.assert_close(logits(model, windows), before, rtol=0, atol=0)
        mask.data[1, 0] = 0.0  # hooks read the tensor at every call
        assert (logits(model, windows) - before).abs().max() > 1e-4
    torch.testing.assert_close(logits(model, windows), before, rtol=0, atol=0)  # hooks are gone


def test_a_mask_of_the_wrong_shape_is_rejected(tokenizer):
    model, adapter = build("gpt2", tokenizer)
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        with head_masks(model, adapter, torch.ones(2, 3)):
            pass


# --- removal equals masking -------------------------------------------------------------------

REMOVALS = [
    ("llama", {0: [2, 3]}, (2, 1)),  # whole kv group
    ("llama", {0: [0, 3], 1: [1, 2]}, (2, 2)),  # one query head from each group
    ("gqa3", {0: [3, 4, 5]}, (3, 1)),  # (a) a whole group: its query heads and its k/v head
    ("gqa3", {0: [0, 5], 1: [1, 2, 4, 5]}, (4, 2)),  # (b) one / two heads from every group
    ("gqa3", {1: [0, 1, 2, 4]}, (2, 1)),  # (a) and (b) together: group 0 gone, group 1 keeps 2
    ("gpt2", {0: [1], 1: [0, 2, 3]}, (3, 3)),
    ("opt", {0: [0, 3], 1: [2]}, (2, 2)),
]


@pytest.mark.parametrize("kind, heads, first_shape", REMOVALS)
def test_removed_model_equals_the_masked_model(kind, heads, first_shape, tokenizer, windows):
    model, adapter = build(kind, tokenizer)
    shapes = attention_shapes(model, adapter)
    with head_masks(model, adapter, removal_mask(shapes, heads)):
        expected = logits(model, windows)
        prompt = windows[:2, :5]
        expected_generation = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    remove_heads(model, adapter, heads)

    new = attention_shapes(model, adapter)
    for layer, shape in enumerate(new):
        assert shape.num_heads == shapes[layer].num_heads - len(heads.get(layer, []))
    first = min(heads)
    assert (new[first].num_heads, new[first].num_kv_heads) == first_shape
    torch.testing.assert_close(logits(model, windows), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # generation with a KV cache sized from the pruned layers
        assert torch.equal(model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0), expected_generation)


@pytest.mark.parametrize("kind", ["llama", "gqa3", "opt"])
def test_separate_projections_have_the_right_shapes_after_removal(kind, tokenizer):
    model, adapter = build(kind, tokenizer)
    before = attention_shapes(model, adapter)[0]
    heads = {"llama": [2, 3], "gqa3": [1, 4], "opt": [0]}[kind]
    remove_heads(model, adapter, {0: heads})
    after = attention_shapes(model, adapter)[0]
    attention = adapter.blocks(model)[0].self_attn
    hd, hidden = before.head_dim, model.config.hidden_size
    out = attention.o_proj if kind != "opt" else attention.out_proj
    assert attention.q_proj.weight.shape == (after.num_heads * hd, hidden)
    assert attention.k_proj.weight.shape == attention.v_proj.weight.shape == (after.num_kv_heads * hd, hidden)
    assert out.weight.shape == (hidden, after.num_heads * hd)
    if kind == "opt":
        assert attention.num_heads == after.num_heads and attention.q_proj.bias.shape == (after.num_heads * hd,)
    else:
        assert attention.num_key_value_groups == after.num_heads // after.num_kv_heads


def test_removed_heads_are_the_right_rows(tokenizer):
    model, adapter = build("gqa3", tokenizer)
    attention = adapter.blocks(model)[0].self_attn
    q, k, o = attention.q_proj.weight.clone(), attention.k_proj.weight.clone(), attention.o_proj.weight.clone()
    remove_heads(model, adapter, {0: [0, 1, 2, 4]})  # keep query heads 3 and 5 over kv head 1
    torch.testing.assert_close(attention.q_proj.weight, torch.cat([q[24:32], q[40:48]]), rtol=0, atol=0)
    torch.testing.assert_close(attention.k_proj.weight, k[8:16], rtol=0, atol=0)
    torch.testing.assert_close(attention.o_proj.weight, torch.cat([o[:, 24:32], o[:, 40:48]], dim=1), rtol=0, atol=0)


def test_gpt2_fused_projection_is_sliced_in_all_three_parts(tokenizer):
    model, adapter = build("gpt2", tokenizer)
    attention = adapter.blocks(model)[0].attn
    fused = weight_matrix(attention.c_attn).clone()  # (3 * 64, 64): [q | k | v]
    remove_heads(model, adapter, {0: [1, 2]})
    kept = torch.cat([torch.arange(0, 16), torch.arange(48, 64)])
    expected = torch.cat([fused[kept], fused[64 + kept], fused[128 + kept]])
    assert attention.c_attn.weight.shape == (64, 96) and attention.c_proj.weight.shape == (32, 64)
    assert attention.num_heads == 2 and attention.split_size == 32
    torch.testing.assert_close(weight_matrix(attention.c_attn), expected, rtol=0, atol=0)


# --- bad requests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, heads, message",
    [
        ("gqa3", {0: [0, 1, 3]}, r"same number of query heads.*any of 1\.\.3"),
        ("llama", {1: [3]}, r"group 0 \(heads 0-1\) keeps 2"),
        ("gpt2", {0: [0, 1, 2, 3]}, "cannot remove all 4 heads of layer 0"),
        ("gqa3", {0: list(range(6))}, "cannot remove all 6 heads"),
        ("opt", {2: [0]}, "layer 2 is out of range"),
        ("opt", {-1: [0]}, "out of range"),
        ("gpt2", {0: [4]}, r"has 4 heads \(0\.\.3\); cannot remove heads \[4\]"),
        ("gpt2", {0: [-1]}, "cannot remove heads"),
        ("gpt2", {0: [1, 1]}, "more than once"),
        ("gpt2", {0: [1.0]}, "must be integers"),
    ],
)
def test_bad_requests_are_rejected_and_leave_the_model_untouched(kind, heads, message, tokenizer, windows):
    model, adapter = build(kind, tokenizer)
    before, shapes = logits(model, windows), attention_shapes(model, adapter)
    with pytest.raises(ValueError, match=message):
        remove_heads(model, adapter, heads)
    assert attention_shapes(model, adapter) == shapes
    torch.testing.assert_close(logits(model, windows), before, rtol=0, atol=0)


def test_a_bad_layer_after_a_good_one_changes_nothing(tokenizer):
    model, adapter = build("gpt2", tokenizer)
    shapes = attention_shapes(model, adapter)
    with pytest.raises(ValueError):
        remove_heads(model, adapter, {0: [1], 1: [0, 1, 2, 3]})
    assert attention_shapes(model, adapter) == shapes


# --- importance -------------------------------------------------------------------------------


def fd_importance(model, adapter, windows, eps=1e-4):
    """Brute force: mean over windows of |central finite difference of the window's loss| per head gate."""
    shapes = attention_shapes(model, adapter)
    result = torch.zeros(len(shapes), max(s.num_heads for s in shapes), dtype=torch.float64)
    for window in windows:
        ids = window[None]
        for layer, shape in enumerate(shapes):
            for head in range(shape.num_heads):
                losses = []
                for sign in (1, -1):
                    mask = torch.ones(result.shape, dtype=torch.float64)
                    mask[layer, head] += sign * eps
                    with head_masks(model, adapter, mask):
                        out = logits(model, ids)[0, :-1]
                    losses.append(F.cross_entropy(out, ids[0, 1:]).item())
                result[layer, head] += abs(losses[0] - losses[1]) / (2 * eps)
    return result / windows.shape[0]


def autograd_importance(model, adapter, windows):
    """Brute force: one window at a time, |dL/dmask| of a plain (layers, heads) mask, averaged over windows."""
    total = 0
    for window in windows:
        ids = window[None]
        with head_masks(model, adapter, requires_grad=True) as mask:
            out = model(input_ids=ids, use_cache=False).logits[0, :-1]
            (grad,) = torch.autograd.grad(F.cross_entropy(out, ids[0, 1:]), mask)
        total = total + grad.abs().double()
    return total / windows.shape[0]


# Llama's RMSNorm computes in float32 even in a float64 model, so its finite differences need a larger step.
FD_SETTINGS = {"gqa3": dict(eps=1e-3, rtol=1e-2), "gpt2": dict(eps=1e-4, rtol=1e-4), "opt": dict(eps=1e-4, rtol=1e-4)}


@pytest.mark.parametrize("kind", ["gqa3", "gpt2", "opt"])
def test_head_importance_matches_finite_differences_and_per_window_autograd(kind, tokenizer, windows):
    model, adapter = build(kind, tokenizer)
    model.double()
    ids = windows[:3, :12]
    raw = head_importance(model, adapter, ids, batch_size=2, normalize=False).double()
    expected = autograd_importance(model, adapter, ids)
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-8)
    settings = FD_SETTINGS[kind]
    torch.testing.assert_close(raw, fd_importance(model, adapter, ids, settings["eps"]), rtol=settings["rtol"], atol=1e-7)
    normalized = head_importance(model, adapter, ids, batch_size=3)
    torch.testing.assert_close(normalized.double(), expected / expected.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-8)
    assert torch.allclose(normalized.norm(dim=1), torch.ones(2))


def test_importance_takes_the_absolute_value_per_window_not_per_batch(tokenizer, windows):
    model, adapter = build("gpt2", tokenizer)
    ids = windows[:4, :12]
    together = head_importance(model, adapter, ids, batch_size=4, normalize=False)
    one_by_one = torch.stack([head_importance(model, adapter, w[None], normalize=False) for w in ids]).mean(0)
    torch.testing.assert_close(together, one_by_one, rtol=1e-4, atol=1e-7)


def test_scoring_leaves_weights_flags_and_grads_alone(tokenizer, windows):
    model, adapter = build("gqa3", tokenizer)
    model.lm_head.weight.requires_grad_(True)
    frozen = adapter.blocks(model)[0].mlp.up_proj.weight
    frozen.requires_grad_(False)
    state = copy.deepcopy(model.state_dict())
    head_importance(model, adapter, windows[:2])
    qkv_gradient_importance(model, adapter, windows[:2])
    assert frozen.requires_grad is False
    assert all(p.requires_grad for p in model.parameters() if p is not frozen)
    assert all(p.grad is None for p in model.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name])


def qkv_reference(model, adapter, ids, layer, head):
    """|W * dL/dW| summed over head's Q rows plus 1/group of its kv head's K and V rows, by explicit slicing."""
    attention = adapter.blocks(model)[layer].self_attn
    weights = [attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]
    out = model(input_ids=ids, use_cache=False).logits[:, :-1]
    loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1))
    grads = torch.autograd.grad(loss, weights)
    shape = attention_shapes(model, adapter)[layer]
    hd, g = shape.head_dim, shape.group_size
    kv = head // g
    q_term = (weights[0] * grads[0])[head * hd:(head + 1) * hd].abs().sum()
    kv_term = sum((w * gr)[kv * hd:(kv + 1) * hd].abs().sum() for w, gr in zip(weights[1:], grads[1:]))
    return (q_term + kv_term / g).item()


def test_qkv_gradient_importance_matches_autograd(tokenizer, windows):
    model, adapter = build("gqa3", tokenizer)
    model.double()
    ids = windows[:4, :16]  # equal-length windows: the mean of window losses is the mean token loss
    scores = qkv_gradient_importance(model, adapter, ids, batch_size=3)
    for layer, head in [(0, 0), (0, 4), (1, 2), (1, 5)]:
        assert scores[layer, head].item() == pytest.approx(qkv_reference(model, adapter, ids, layer, head), rel=1e-4)


def test_qkv_gradient_importance_on_gpt2_fused_attention(tokenizer, windows):
    model, adapter = build("gpt2", tokenizer)
    model.double()
    ids = windows[:2, :16]
    scores = qkv_gradient_importance(model, adapter, ids)
    c_attn = adapter.blocks(model)[1].attn.c_attn
    out = model(input_ids=ids, use_cache=False).logits[:, :-1]
    loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1))
    (grad,) = torch.autograd.grad(loss, c_attn.weight)
    taylor = (c_attn.weight * grad).abs().detach()  # Conv1D: (in, out) with out = [q | k | v]
    for head in range(4):
        columns = torch.cat([torch.arange(16) + head * 16 + part * 64 for part in range(3)])
        assert scores[1, head].item() == pytest.approx(taylor[:, columns].sum().item(), rel=1e-4)


def test_normalize_per_layer_keeps_nan_for_missing_heads():
    importance = torch.tensor([[3.0, 4.0, NAN], [1.0, 0.0, 0.0]])
    normalized = normalize_per_layer(importance)
    torch.testing.assert_close(normalized[0, :2], torch.tensor([0.6, 0.8]))
    assert normalized[0, 2].isnan() and normalized[1, 0].item() == pytest.approx(1.0)


# --- choosing heads ---------------------------------------------------------------------------


def test_choose_single_heads_globally_keeping_one_per_layer():
    importance = torch.tensor([[0.9, 0.1, 0.5, 0.2], [0.05, 0.06, 0.07, 0.08]])
    assert choose_heads_to_remove(importance, 0.25) == {1: [0, 1]}  # ranked across layers
    assert choose_heads_to_remove(importance, count=4) == {0: [1], 1: [0, 1, 2]}  # layer 1 keeps one head
    assert choose_heads_to_remove(importance, count=5) == {0: [1, 3], 1: [0, 1, 2]}
    assert choose_heads_to_remove(importance, 0.0) == {}


def test_choose_skips_missing_heads():
    importance = torch.tensor([[0.3, 0.2, NAN], [0.1, 0.4, 0.5]])
    assert choose_heads_to_remove(importance, count=2) == {0: [1], 1: [0]}
    assert choose_heads_to_remove(importance, 0.5) == {0: [1], 1: [0]}  # floor(0.5 * 5 present heads) = 2


def test_choose_whole_groups_and_within_groups():
    # 2 layers x 6 heads over 2 kv heads; group means: layer 0: 0.2, 0.7; layer 1: 0.5, 0.1
    importance = torch.tensor([[0.1, 0.2, 0.3, 0.6, 0.7, 0.8], [0.4, 0.5, 0.6, 0.0, 0.1, 0.2]])
    assert choose_heads_to_remove(importance, count=3, num_kv_heads=2) == {1: [3, 4, 5]}
    assert choose_heads_to_remove(importance, count=6, num_kv_heads=2, mode="groups") == {0: [0, 1, 2], 1: [3, 4, 5]}
    assert choose_heads_to_remove(importance, count=12, num_kv_heads=2, mode="groups") == {0: [0, 1, 2], 1: [3, 4, 5]}
    assert choose_heads_to_remove(importance, count=5, num_kv_heads=2) == {1: [3, 4, 5]}  # a second group does not fit
    # within groups: step 0 of layer 1 removes heads 0 and 3 (mean 0.2), of layer 0 heads 0 and 3 (0.35)
    assert choose_heads_to_remove(importance, count=2, num_kv_heads=2, mode="within_groups") == {1: [0, 3]}
    assert choose_heads_to_remove(importance, count=4, num_kv_heads=[2, 2], mode="within_groups") == {1: [0, 1, 3, 4]}
    chosen = choose_heads_to_remove(importance, count=12, num_kv_heads=2, mode="within_groups")
    assert chosen == {0: [0, 1, 3, 4], 1: [0, 1, 3, 4]}  # every group keeps one head


def test_choose_rejects_bad_input():
    importance = torch.rand(2, 6)
    with pytest.raises(ValueError, match="grouped-query attention"):
        choose_heads_to_remove(importance, 0.5, num_kv_heads=2, mode="heads")
    with pytest.raises(ValueError, match="needs grouped-query attention"):
        choose_heads_to_remove(importance, 0.5, mode="within_groups")
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\)"):
        choose_heads_to_remove(importance, 1.0)
    with pytest.raises(ValueError, match="exactly one"):
        choose_heads_to_remove(importance, 0.5, count=2)
    with pytest.raises(ValueError, match="count must be"):
        choose_heads_to_remove(importance, count=13)
    with pytest.raises(ValueError, match="cannot be split"):
        choose_heads_to_remove(importance, 0.5, num_kv_heads=4)
    with pytest.raises(ValueError, match="unknown mode"):
        choose_heads_to_remove(importance, 0.5, mode="random")


# --- iterative pruning ------------------------------------------------------------------------


@pytest.mark.parametrize("kind, fraction, steps, mode, removed_heads", [
    ("gpt2", 0.5, 2, "auto", 4),
    ("opt", 0.4, 3, "heads", 3),
    ("gqa3", 0.5, 2, "groups", 6),
    ("gqa3", 0.5, 3, "within_groups", 6),
])
def test_iterative_pruning_reports_original_heads(kind, fraction, steps, mode, removed_heads, tokenizer, windows):
    model, adapter = build(kind, tokenizer)
    reference = copy.deepcopy(model)
    shapes = attention_shapes(model, adapter)
    removed = prune_heads_iteratively(model, adapter, windows[:4], fraction, steps=steps, mode=mode)
    assert sum(len(h) for h in removed.values()) == removed_heads
    assert sum(s.num_heads for s in attention_shapes(model, adapter)) == sum(s.num_heads for s in shapes) - removed_heads
    with head_masks(reference, adapter, removal_mask(shapes, removed)):
        expected = logits(reference, windows)
    torch.testing.assert_close(logits(model, windows), expected, rtol=1e-5, atol=1e-5)


# --- save and reload --------------------------------------------------------------------------


@pytest.mark.parametrize("kind, heads", [("gqa3", {0: [0, 1, 2], 1: [2, 5]}), ("gpt2", {1: [0, 3]}), ("opt", {0: [1]})])
def test_save_and_reload_after_head_removal(kind, heads, tokenizer, windows, tmp_path):
    model, adapter = build(kind, tokenizer)
    remove_heads(model, adapter, heads)
    expected = logits(model, windows)
    save_pruned(model, tmp_path, tokenizer)
    with pytest.raises(Exception):  # the plain loader builds full-size blocks
        AutoModelForCausalLM.from_pretrained(tmp_path)
    reloaded = load_pruned(tmp_path)
    assert attention_shapes(reloaded, adapter) == attention_shapes(model, adapter)
    torch.testing.assert_close(logits(reloaded, windows), expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["gqa3", "gpt2", "opt"])
def test_heads_width_and_layers_combined_round_trip(kind, tokenizer, windows, tmp_path):
    model, adapter = build(kind, tokenizer, layers=4)
    heads = {"gqa3": {1: [3, 4, 5], 3: [0, 3]}, "gpt2": {1: [2], 3: [0, 1]}, "opt": {1: [0], 3: [1, 2]}}[kind]
    remove_heads(model, adapter, heads)
    width = mlp_width(adapter.blocks(model)[0], adapter)
    prune_mlp_width(model, adapter, {0: torch.arange(0, width, 2), 3: torch.arange(5)})
    remove_blocks(model, adapter, [2])  # block 3 becomes block 2
    expected = logits(model, windows)
    structure = pruned_structure(model, adapter)["layers"]
    assert structure["2"]["intermediate_size"] == 5 and structure["0"]["intermediate_size"] == width // 2
    save_pruned(model, tmp_path)
    reloaded = load_pruned(tmp_path)
    assert len(adapter.blocks(reloaded)) == 3 and pruned_structure(reloaded, adapter) == pruned_structure(model, adapter)
    torch.testing.assert_close(logits(reloaded, windows), expected, rtol=0, atol=0)
    prompt = windows[:1, :4]
    with torch.no_grad():
        assert torch.equal(
            reloaded.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0),
            model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0),
        )


def test_load_pruned_reads_an_unpruned_checkpoint_too(tokenizer, windows, tmp_path):
    model, _ = build("llama", tokenizer)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(logits(load_pruned(tmp_path), windows), logits(model, windows), rtol=0, atol=0)
