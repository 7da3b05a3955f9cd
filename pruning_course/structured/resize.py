"""Shrinking attention and MLP layers in place, block by block.

Head pruning (:mod:`.heads`) and width pruning (:mod:`.width`) both end by *slicing* linear layers:
rows of the layers that write a head's or a neuron's values, columns of the layer that reads them.
This module holds that slicing once, for every family the course supports:

* :func:`~pruning_course.architectures.slice_linear` (the adapter's module surgery) keeps chosen
  output rows or input columns of a linear layer, whatever its storage;
* :func:`shrink_attention` keeps chosen query heads and key/value heads of one decoder block and
  updates the attention module's per-layer attributes (``num_key_value_groups`` for Llama-family
  grouped-query attention, ``num_heads`` for OPT and GPT-2, ``split_size`` for GPT-2's fused
  ``c_attn``) so its forward pass works with the new shapes;
* :func:`shrink_mlp` keeps chosen intermediate neurons of one block's MLP.

Saving and reloading models whose blocks now differ in shape: :mod:`.saving`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from ..architectures import ArchitectureAdapter, features, layout_for, slice_linear

__all__ = [
    "AttentionShape",
    "head_rows",
    "attention_shape",
    "attention_shapes",
    "mlp_width",
    "shrink_attention",
    "shrink_mlp",
]

# ---------------------------------------------------------------------------------------------
# Slicing layers
# ---------------------------------------------------------------------------------------------


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The feature positions of ``heads`` in a projection laid out head by head: ``h * head_dim + [0, head_dim)``."""
    heads = torch.as_tensor(heads, dtype=torch.long).reshape(-1)
    return (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionShape:
    """One block's attention: query heads, key/value heads (equal without GQA) and the head width."""

    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        """Query heads that share one key/value head (1 without grouped-query attention)."""
        return self.num_heads // self.num_kv_heads


def attention_shape(block: nn.Module, adapter: ArchitectureAdapter) -> AttentionShape:
    """The :class:`AttentionShape` of one decoder block, read from its weights."""
    layout = layout_for(adapter)
    attention = block.get_submodule(layout.attention)
    head_dim = int(attention.head_dim)
    num_heads = features(attention.get_submodule(layout.o), "in") // head_dim
    if layout.qkv is not None:
        num_kv_heads = num_heads
    else:
        num_kv_heads = features(attention.get_submodule(layout.k), "out") // head_dim
    return AttentionShape(num_heads, num_kv_heads, head_dim)


def attention_shapes(model: nn.Module, adapter: ArchitectureAdapter) -> list[AttentionShape]:
    """:func:`attention_shape` of every decoder block, in order."""
    return [attention_shape(block, adapter) for block in adapter.blocks(model)]


def mlp_width(block: nn.Module, adapter: ArchitectureAdapter) -> int:
    """Number of intermediate neurons of one block's MLP."""
    return features(block.get_submodule(layout_for(adapter).mlp_out), "in")


# ---------------------------------------------------------------------------------------------
# Shrinking one block
# ---------------------------------------------------------------------------------------------


def shrink_attention(
    block: nn.Module,
    adapter: ArchitectureAdapter,
    keep_heads: torch.Tensor,
    keep_kv_heads: torch.Tensor | None = None,
) -> None:
    """Keep the query heads ``keep_heads`` and key/value heads ``keep_kv_heads`` of one block, in place.

    Without grouped-query attention ``keep_kv_heads`` must be omitted (it equals ``keep_heads``). With
    it, the kept query heads, in order, must fall into the kept kv heads' groups with the same number
    per group (``repeat_kv`` pairs query head ``i`` with kv head ``i // group_size``); the
    user-facing checks with explanations live in :func:`pruning_course.structured.heads.remove_heads`.
    """
    layout = layout_for(adapter)
    attention = block.get_submodule(layout.attention)
    shape = attention_shape(block, adapter)
    keep_heads = torch.as_tensor(keep_heads, dtype=torch.long).reshape(-1)
    if keep_kv_heads is None:
        if shape.group_size != 1:
            raise InputError("this block uses grouped-query attention: pass keep_kv_heads as well")
        keep_kv_heads = keep_heads
    keep_kv_heads = torch.as_tensor(keep_kv_heads, dtype=torch.long).reshape(-1)
    if keep_heads.numel() == 0 or keep_kv_heads.numel() == 0 or keep_heads.numel() % keep_kv_heads.numel():
        raise InputError(f"cannot keep {keep_heads.numel()} query heads over {keep_kv_heads.numel()} kv heads")
    new_group = keep_heads.numel() // keep_kv_heads.numel()
    expected_groups = keep_kv_heads.repeat_interleave(new_group)
    if not torch.equal(keep_heads // shape.group_size, expected_groups):
        raise InputError("kept query heads do not line up with the kept kv heads (same count per group, in order)")

    q_rows, kv_rows = head_rows(keep_heads, shape.head_dim), head_rows(keep_kv_heads, shape.head_dim)
    if layout.qkv is not None:  # GPT-2: [q | k | v], each num_heads * head_dim wide
        inner = shape.num_heads * shape.head_dim
        slice_linear(attention.get_submodule(layout.qkv), torch.cat([q_rows, q_rows + inner, q_rows + 2 * inner]), "out")
    else:
        slice_linear(attention.get_submodule(layout.q), q_rows, "out")
        slice_linear(attention.get_submodule(layout.k), kv_rows, "out")
        slice_linear(attention.get_submodule(layout.v), kv_rows, "out")
    slice_linear(attention.get_submodule(layout.o), q_rows, "in")

    updates = {
        "num_heads": keep_heads.numel(),
        "num_attention_heads": keep_heads.numel(),
        "num_key_value_heads": keep_kv_heads.numel(),
        "num_key_value_groups": new_group,
        "split_size": keep_heads.numel() * shape.head_dim,  # GPT-2 splits c_attn's output with it
    }
    for name, value in updates.items():
        if isinstance(getattr(attention, name, None), int):
            setattr(attention, name, value)


def shrink_mlp(block: nn.Module, adapter: ArchitectureAdapter, keep: torch.Tensor) -> None:
    """Keep the intermediate neurons ``keep`` of one block's MLP, in place."""
    layout = layout_for(adapter)
    keep = torch.as_tensor(keep, dtype=torch.long).reshape(-1)
    for name in layout.mlp_in:
        slice_linear(block.get_submodule(name), keep, "out")
    slice_linear(block.get_submodule(layout.mlp_out), keep, "in")
    if layout.mlp is not None and isinstance(getattr(block.get_submodule(layout.mlp), "intermediate_size", None), int):
        block.get_submodule(layout.mlp).intermediate_size = keep.numel()
