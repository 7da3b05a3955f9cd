"""Saving and reloading structurally pruned models, whose blocks differ in shape.

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
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..architectures import ArchitectureAdapter, adapter_for, layout_for
from ..model_files import save_model_dir
from .resize import attention_shape, mlp_width, shrink_attention, shrink_mlp

__all__ = ["pruned_structure", "save_pruned", "load_pruned", "CONFIG_FIELD"]

CONFIG_FIELD = "structured_pruning"


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
    too when one is given, as one step (:func:`~pruning_course.model_files.save_model_dir`: an
    interrupted save leaves no half-written directory). transformers' progress bar is shown only
    if ``progress``. Returns the directory.
    """
    setattr(model.config, CONFIG_FIELD, pruned_structure(model))
    return save_model_dir(model, tokenizer, path, progress=progress)


def _saved_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        shards = ["model.safetensors"]
    else:
        raise InputError(f"{path} holds no model.safetensors (or sharded index); save it with save_pruned")
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
        raise InputError(f"{path}: config.{CONFIG_FIELD} describes blocks {unknown} the model does not have ({len(blocks)} blocks)")
    for key, entry in recorded.items():
        block = blocks[int(key)]
        shape = attention_shape(block, adapter)
        heads = int(entry.get("num_heads", shape.num_heads))
        kv_heads = int(entry.get("num_kv_heads", heads if shape.group_size == 1 else shape.num_kv_heads))
        width = int(entry.get("intermediate_size", mlp_width(block, adapter)))
        if heads > shape.num_heads or kv_heads > shape.num_kv_heads or width > mlp_width(block, adapter) or heads % kv_heads:
            raise InputError(f"{path}: block {key} is recorded as {entry}, which the config's full-size block cannot be shrunk to")
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
        raise InputError(f"{path}: saved tensors do not fit the rebuilt model (unexpected: {unexpected[:5]}, wrong shape: {wrong_shape[:5]})")
    missing = model.load_state_dict(state, strict=False).missing_keys
    loaded_storage = {own[k].data_ptr() for k in state}
    untied = [k for k in missing if own[k].data_ptr() not in loaded_storage]
    if untied:
        raise InputError(f"{path}: the checkpoint lacks {untied[:5]}")
    if (path / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model.to(device).eval()
