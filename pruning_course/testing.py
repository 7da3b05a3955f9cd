"""Tiny randomly initialised models of each supported family, for tests, quick mode and the checks.

``tiny_model(family)`` builds a 2-block model of width 64 (Llama with grouped-query attention like
SmolLM2, GPT-2 with its transposed linears, OPT) and a byte-level BPE tokenizer trained in
milliseconds, so anything in the course runs on it in seconds.
"""

from __future__ import annotations

import torch

from .errors import InputError


TINY_TEXT = (
    "Pruning removes weights from a neural network. Magnitude pruning keeps the largest weights; "
    "Wanda multiplies each weight by the norm of its input activation; SparseGPT solves a layer-wise "
    "reconstruction problem with the inverse Hessian. The quick brown fox jumps over the lazy dog. "
    "0123456789 ,.;:!?()[]{}'\"-+=*/\\ \n\n"
)


def tiny_tokenizer(texts: list[str] | None = None, vocab_size: int = 384):
    """A byte-level BPE tokenizer trained in milliseconds; any text can be encoded with it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts or [TINY_TEXT] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def tiny_config(family: str, vocab_size: int = 384, **overrides):
    """A small config of each family: 2 blocks, width 64, seconds to run anything on.

    ``overrides`` are passed to the config class along with these defaults (e.g. ``hidden_size``,
    ``head_dim``, ``tie_word_embeddings`` for Llama)."""
    from transformers import GPT2Config, LlamaConfig, OPTConfig

    if family == "llama":  # grouped-query attention like SmolLM2 (4 query heads over 2 kv heads)
        defaults = dict(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
        )
        return LlamaConfig(**{**defaults, **overrides})
    if family == "gpt2":
        defaults = dict(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=1024, bos_token_id=0, eos_token_id=0)
        return GPT2Config(**{**defaults, **overrides})
    if family == "opt":
        defaults = dict(
            vocab_size=vocab_size, hidden_size=64, ffn_dim=160, num_hidden_layers=2, num_attention_heads=4,
            word_embed_proj_dim=64, max_position_embeddings=1024, bos_token_id=0, eos_token_id=0, pad_token_id=1,
        )
        return OPTConfig(**{**defaults, **overrides})
    raise InputError(f"unknown tiny family {family!r}; choose llama, gpt2 or opt")


def tiny_random_model(family: str = "llama", *, seed: int = 0, num_blocks: int | None = None, vocab_size: int = 384,
                      **overrides):
    """A randomly initialised tiny model of ``family`` (:func:`tiny_config` with ``overrides``), in
    eval mode, with ``num_blocks`` decoder blocks if given; no tokenizer. The checks' one builder:
    the caller's global RNG is left as it was."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, vocab_size=vocab_size, **overrides)
    if num_blocks is not None:
        config.num_hidden_layers = num_blocks
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config).eval()


TINY_FAMILIES = ("llama", "gpt2", "opt")


def tiny_model(family: str = "llama", seed: int = 0, tokenizer=None):
    """A randomly initialised tiny model of ``family`` and a tokenizer that fits its vocabulary."""
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer or tiny_tokenizer()
    config = tiny_config(family, vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return model, tokenizer
