"""Layer pruning (Gromov et al. 2024 angular distance, ShortGPT Block Influence, block removal) on tiny Llama, GPT-2, OPT."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from pruning_course.architectures import adapter_for
from pruning_course.testing import TINY_FAMILIES, tiny_config
from pruning_course.evaluate import perplexity
from pruning_course.structured import (
    angular_distances,
    block_influence,
    choose_blocks_to_remove,
    choose_consecutive_blocks,
    choose_lowest_blocks,
    first_blocks,
    last_blocks,
    middle_blocks,
    remove_blocks,
    removal_perplexities,
)

NUM_BLOCKS = 4

# The linears that write a block's two branches into the residual stream, per family (pre-LN blocks).
RESIDUAL_WRITERS = {
    "llama": ("self_attn.o_proj", "mlp.down_proj"),
    "gpt2": ("attn.c_proj", "mlp.c_proj"),
    "opt": ("self_attn.out_proj", "fc2"),
}


@pytest.fixture(params=TINY_FAMILIES)
def deep(request, tokenizer):
    """(model, adapter) of each tiny family with 4 blocks instead of 2, so there is a middle."""
    config = tiny_config(request.param, vocab_size=len(tokenizer))
    config.num_hidden_layers = NUM_BLOCKS
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    return model, adapter_for(model)


def make_identity(model, adapter, index):
    """Zero the residual-stream writers of block ``index``: it then outputs exactly its input."""
    block = adapter.blocks(model)[index]
    for name in RESIDUAL_WRITERS[adapter.family]:
        linear = block.get_submodule(name)
        torch.nn.init.zeros_(linear.weight)
        if linear.bias is not None:
            torch.nn.init.zeros_(linear.bias)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def attention_layer_indices(model, adapter):
    return [
        [m.layer_idx for m in block.modules() if isinstance(getattr(m, "layer_idx", None), int)]
        for block in adapter.blocks(model)
    ]


# --- scores -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, NUM_BLOCKS])
def test_angular_distances_lie_in_0_1_with_one_value_per_window(deep, windows, n):
    model, adapter = deep
    distances = angular_distances(model, adapter, windows, n=n, batch_size=3)
    assert distances.shape == (NUM_BLOCKS - n + 1,)
    assert ((distances >= 0) & (distances <= 1)).all()
    last = angular_distances(model, adapter, windows, n=n, last_token_only=True)
    assert last.shape == distances.shape and ((last >= 0) & (last <= 1)).all()


def test_angular_distances_match_hidden_states_of_a_full_forward(deep, windows):
    model, adapter = deep
    with torch.no_grad():
        hidden = model(input_ids=windows, use_cache=False, output_hidden_states=True).hidden_states
    distances = angular_distances(model, adapter, windows, n=2, batch_size=5)
    influence = block_influence(model, adapter, windows, batch_size=5)
    # hidden[k] enters block k; the last entry may already be normalised, so stop before it.
    for start in range(NUM_BLOCKS - 2):
        cos = F.cosine_similarity(hidden[start].double(), hidden[start + 2].double(), dim=-1).clamp(-1, 1)
        assert distances[start].item() == pytest.approx((torch.arccos(cos) / math.pi).mean().item(), abs=1e-5)
    for block in range(NUM_BLOCKS - 1):
        cos = F.cosine_similarity(hidden[block].double(), hidden[block + 1].double(), dim=-1)
        assert influence[block].item() == pytest.approx(1 - cos.mean().item(), abs=1e-5)
    last_token = angular_distances(model, adapter, windows, n=1, last_token_only=True)  # the paper's Eq. 7
    for block in range(NUM_BLOCKS - 1):
        cos = F.cosine_similarity(hidden[block][:, -1].double(), hidden[block + 1][:, -1].double(), dim=-1).clamp(-1, 1)
        assert last_token[block].item() == pytest.approx((torch.arccos(cos) / math.pi).mean().item(), abs=1e-5)


def test_scoring_leaves_the_model_unchanged(deep, windows):
    model, adapter = deep
    before = logits(model, windows)
    angular_distances(model, adapter, windows, n=2)
    block_influence(model, adapter, windows)
    torch.testing.assert_close(logits(model, windows), before, rtol=0, atol=0)


def test_an_identity_block_scores_zero_and_is_chosen(deep, windows):
    model, adapter = deep
    make_identity(model, adapter, 2)
    distances = angular_distances(model, adapter, windows, n=1)
    influence = block_influence(model, adapter, windows)
    assert distances[2].item() < 1e-3 and influence[2].item() < 1e-6
    assert distances[2] < distances[[0, 1, 3]].min() and influence[2] < influence[[0, 1, 3]].min()
    assert choose_blocks_to_remove(distances, 1, method="angular") == [2]
    assert choose_blocks_to_remove(influence, 1, method="block_influence") == [2]


def test_two_consecutive_identity_blocks_are_the_closest_window(deep, windows):
    model, adapter = deep
    make_identity(model, adapter, 1)
    make_identity(model, adapter, 2)
    distances = angular_distances(model, adapter, windows, n=2)
    assert distances[1].item() < 1e-3
    assert choose_consecutive_blocks(distances, 2) == [1, 2]


def test_bad_window_length_is_rejected(deep, windows):
    model, adapter = deep
    for n in (0, NUM_BLOCKS + 1):
        with pytest.raises(ValueError, match="n must be"):
            angular_distances(model, adapter, windows, n=n)


# --- choosing blocks --------------------------------------------------------------------------


def test_choice_helpers():
    assert choose_consecutive_blocks([0.3, 0.1, 0.2], 2) == [1, 2]
    assert choose_consecutive_blocks(torch.tensor([0.1, 0.1]), 3) == [0, 1, 2]  # ties go to the earliest window
    assert choose_lowest_blocks([0.5, 0.1, 0.4, 0.05, 0.3], 2) == [1, 3]
    assert choose_lowest_blocks([0.2, 0.1, 0.1], 1) == [1]
    assert first_blocks(8, 2) == [0, 1]
    assert last_blocks(8, 2) == [6, 7]
    assert middle_blocks(8, 2) == [3, 4]
    assert middle_blocks(32, 8) == [12, 13, 14, 15, 16, 17, 18, 19]
    assert middle_blocks(5, 2) == [1, 2]
    assert middle_blocks(4, 0) == []
    with pytest.raises(ValueError):
        middle_blocks(4, 5)
    with pytest.raises(ValueError):
        choose_lowest_blocks([0.1, 0.2], 3)
    with pytest.raises(ValueError, match="unknown method"):
        choose_blocks_to_remove([0.1], 1, method="random")


# --- removing blocks --------------------------------------------------------------------------


def test_removed_model_equals_the_model_with_those_blocks_made_identity(deep, windows):
    model, adapter = deep
    reference = copy.deepcopy(model)
    for index in (1, 2):
        make_identity(reference, adapter, index)
    kept = [adapter.blocks(model)[i] for i in (0, 3)]

    remove_blocks(model, adapter, [2, 1])
    assert list(adapter.blocks(model)) == kept
    assert model.config.num_hidden_layers == 2
    layer_indices = attention_layer_indices(model, adapter)
    assert all(indices and set(indices) == {position} for position, indices in enumerate(layer_indices))
    torch.testing.assert_close(logits(model, windows), logits(reference, windows), rtol=1e-5, atol=1e-5)


def test_generation_with_a_kv_cache_works_after_removal(deep, tokenizer):
    model, adapter = deep
    reference = copy.deepcopy(model)
    make_identity(reference, adapter, 1)
    remove_blocks(model, adapter, [1])
    prompt = torch.randint(0, len(tokenizer), (2, 6), generator=torch.Generator().manual_seed(1))
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **settings)
        uncached = model.generate(prompt, use_cache=False, **settings)
        expected = reference.generate(prompt, use_cache=True, **settings)
    assert cached.shape == (2, 14)
    assert torch.equal(cached, uncached) and torch.equal(cached, expected)


def test_save_and_reload_round_trip(deep, windows, tmp_path):
    model, adapter = deep
    remove_blocks(model, adapter, middle_blocks(NUM_BLOCKS, 2))
    expected = logits(model, windows)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 2 and len(adapter.blocks(reloaded)) == 2
    torch.testing.assert_close(logits(reloaded, windows), expected, rtol=0, atol=0)


def test_per_layer_config_lists_follow_the_removal(tokenizer):
    config = tiny_config("llama", vocab_size=len(tokenizer))
    config.num_hidden_layers = NUM_BLOCKS
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    adapter = adapter_for(model)
    model.config.layer_types = ["a", "b", "c", "d"]
    remove_blocks(model, adapter, [0, 2])
    assert model.config.layer_types == ["b", "d"]


@pytest.mark.parametrize(
    "indices, message",
    [
        ([0, 1, 2, 3], "cannot remove all"),
        ([4], "out of range"),
        ([-1], "out of range"),
        ([1, 1], "more than once"),
        ([1.0], "must be integers"),
    ],
)
def test_bad_indices_are_rejected_and_leave_the_model_untouched(deep, windows, indices, message):
    model, adapter = deep
    before = logits(model, windows)
    with pytest.raises(ValueError, match=message):
        remove_blocks(model, adapter, indices)
    assert len(adapter.blocks(model)) == NUM_BLOCKS and model.config.num_hidden_layers == NUM_BLOCKS
    torch.testing.assert_close(logits(model, windows), before, rtol=0, atol=0)


def test_removing_nothing_is_a_no_op(deep, windows):
    model, adapter = deep
    before = logits(model, windows)
    assert remove_blocks(model, adapter, []) is model
    torch.testing.assert_close(logits(model, windows), before, rtol=0, atol=0)


def test_gpt2_with_position_dependent_attention_scale_is_rejected(tokenizer):
    config = tiny_config("gpt2", vocab_size=len(tokenizer))
    config.num_hidden_layers = NUM_BLOCKS
    config.scale_attn_by_inverse_layer_idx = True
    model = AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        remove_blocks(model, adapter_for(model), [1])
    assert len(adapter_for(model).blocks(model)) == NUM_BLOCKS


def test_removal_perplexities_equal_evaluating_each_block_removed_and_leave_the_model_unchanged(deep):
    model, adapter = deep
    ids = torch.randint(0, model.config.vocab_size, (3 * 16,), generator=torch.Generator().manual_seed(0))
    before = logits(model, ids[:16].unsqueeze(0))
    scores = removal_perplexities(model, adapter, ids, seqlen=16, progress=False)
    assert scores.shape == (NUM_BLOCKS,)
    for index in range(NUM_BLOCKS):
        pruned = remove_blocks(copy.deepcopy(model), adapter, [index])
        assert scores[index].item() == pytest.approx(perplexity(pruned, ids, 16, progress=False).ppl, rel=1e-5)
    assert torch.equal(logits(model, ids[:16].unsqueeze(0)), before)
    assert len(adapter.blocks(model)) == NUM_BLOCKS
