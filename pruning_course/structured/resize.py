"""Shrinking attention and MLP layers in place, and saving / reloading structurally pruned models.

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

Saving and reloading
--------------------
After structured pruning every decoder block may have its own head count and MLP width, while a
transformers config has one ``num_attention_heads`` and one ``intermediate_size`` for all blocks.
``from_pretrained`` builds every block from those global values and refuses weights of another shape
(``ignore_mismatched_sizes=True`` would silently re-initialise the pruned tensors instead). It has no
hook that runs between building the model and loading its weights short of custom modelling code
(``trust_remote_code``), which a course package should not ask students to trust. So the choice here
is an explicit pair:

* :func:`save_pruned` writes the per-block shapes into a custom config field before
  ``save_pretrained``::

      config.structured_pruning = {"layers": {"0": {"num_heads": 9, "num_kv_heads": 3,
                                                    "intermediate_size": 1152}, ...}}

  (every block is listed; GPT-2 and OPT blocks have no ``num_kv_heads``). The field is recomputed
  from the modules' real shapes at save time, so head, width and layer pruning
  (:func:`~pruning_course.structured.layers.remove_blocks` renumbers blocks) can be combined in any
  order. The rest of the checkpoint is an ordinary ``save_pretrained`` directory.
* :func:`load_pruned` builds the model from the config, shrinks every block to the recorded shapes
  and loads the saved tensors with a strict key and shape check (only weights tied to a loaded one,
  such as a tied LM head, may be absent from the file).

A directory without the field loads like any ``save_pretrained`` checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..architectures import ArchitectureAdapter, adapter_for, features, layout_for, slice_linear

__all__ = [
    "AttentionShape",
    "head_rows",
    "attention_shape",
    "attention_shapes",
    "mlp_width",
    "shrink_attention",
    "shrink_mlp",
    "pruned_structure",
    "save_pruned",
    "load_pruned",
    "CONFIG_FIELD",
]

CONFIG_FIELD = "structured_pruning"


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
            raise ValueError("this block uses grouped-query attention: pass keep_kv_heads as well")
        keep_kv_heads = keep_heads
    keep_kv_heads = torch.as_tensor(keep_kv_heads, dtype=torch.long).reshape(-1)
    if keep_heads.numel() == 0 or keep_kv_heads.numel() == 0 or keep_heads.numel() % keep_kv_heads.numel():
        raise ValueError(f"cannot keep {keep_heads.numel()} query heads over {keep_kv_heads.numel()} kv heads")
    new_group = keep_heads.numel() // keep_kv_heads.numel()
    expected_groups = keep_kv_heads.repeat_interleave(new_group)
    if not torch.equal(keep_heads // shape.group_size, expected_groups):
        raise ValueError("kept query heads do not line up with the kept kv heads (same count per group, in order)")

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


# ---------------------------------------------------------------------------------------------
# Save and reload
# ---------------------------------------------------------------------------------------------


def pruned_structure(model: nn.Module, adapter: ArchitectureAdapter | None = None) -> dict:
    """The per-block shapes of ``model``, as stored in ``config.structured_pruning`` by :func:`save_pruned`."""
    adapter = adapter or adapter_for(model)
    layers = {}
    for index, block in enumerate(adapter.blocks(model)):
        shape = attention_shape(block, adapter)
        entry = {"num_heads": shape.num_heads}
        if layout_for(adapter).qkv is None:
            entry["num_kv_heads"] = shape.num_kv_heads
        entry["intermediate_size"] = mlp_width(block, adapter)
        layers[str(index)] = entry
    return {"layers": layers}


def save_pruned(model: nn.Module, path: str | Path, tokenizer=None, *, progress: bool = False) -> Path:
    """``save_pretrained`` plus the per-block shapes in ``config.structured_pruning``; see the module docstring.

    Sets ``model.config.structured_pruning`` (recomputed from the modules) and writes the tokenizer
    too when one is given. transformers' progress bar is shown only if ``progress``. Returns the
    directory.
    """
    from transformers.utils import logging as hf_logging

    path = Path(path)
    setattr(model.config, CONFIG_FIELD, pruned_structure(model))
    silence = not progress and hf_logging.is_progress_bar_enabled()
    if silence:
        hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
    finally:
        if silence:
            hf_logging.enable_progress_bar()
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def _saved_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        shards = ["model.safetensors"]
    else:
        raise ValueError(f"{path} holds no model.safetensors (or sharded index); save it with save_pruned")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(str(path / shard)))
    return state


def load_pruned(path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> nn.Module:
    """Load a directory written by :func:`save_pruned` (or any ``save_pretrained`` one); returns the model in eval mode.

    Builds the model from its config, shrinks each block to the shapes recorded in
    ``config.structured_pruning`` (keeping the first heads/neurons; the saved weights then replace
    them) and loads the saved tensors. Raises ``ValueError`` if a tensor is missing (other than one
    tied to a loaded tensor), unexpected or of the wrong shape.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    adapter = adapter_for(model)
    structure = getattr(config, CONFIG_FIELD, None) or {"layers": {}}
    blocks = adapter.blocks(model)
    recorded = structure.get("layers", {})
    unknown = sorted(set(recorded) - {str(i) for i in range(len(blocks))})
    if unknown:
        raise ValueError(f"{path}: config.{CONFIG_FIELD} describes blocks {unknown} the model does not have ({len(blocks)} blocks)")
    for key, entry in recorded.items():
        block = blocks[int(key)]
        shape = attention_shape(block, adapter)
        heads = int(entry.get("num_heads", shape.num_heads))
        kv_heads = int(entry.get("num_kv_heads", heads if shape.group_size == 1 else shape.num_kv_heads))
        width = int(entry.get("intermediate_size", mlp_width(block, adapter)))
        if heads > shape.num_heads or kv_heads > shape.num_kv_heads or width > mlp_width(block, adapter) or heads % kv_heads:
            raise ValueError(f"{path}: block {key} is recorded as {entry}, which the config's full-size block cannot be shrunk to")
        if (heads, kv_heads) != (shape.num_heads, shape.num_kv_heads):
            group = heads // kv_heads  # any heads of the right count: the saved weights overwrite them
            keep = (torch.arange(kv_heads)[:, None] * shape.group_size + torch.arange(group)).reshape(-1)
            shrink_attention(block, adapter, keep, torch.arange(kv_heads) if shape.group_size != 1 else None)
        if width != mlp_width(block, adapter):
            shrink_mlp(block, adapter, torch.arange(width))

    state = _saved_state_dict(path)
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [k for k in state if k in own and own[k].shape != state[k].shape]
    if unexpected or wrong_shape:
        raise ValueError(f"{path}: saved tensors do not fit the rebuilt model (unexpected: {unexpected[:5]}, wrong shape: {wrong_shape[:5]})")
    missing = model.load_state_dict(state, strict=False).missing_keys
    loaded_storage = {own[k].data_ptr() for k in state}
    untied = [k for k in missing if own[k].data_ptr() not in loaded_storage]
    if untied:
        raise ValueError(f"{path}: the checkpoint lacks {untied[:5]}")
    if (path / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model.to(device).eval()
