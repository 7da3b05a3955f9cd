"""Architecture adapters: where the decoder blocks and the prunable linears of a model live.

Every method in the course works on "the prunable linear layers of decoder block i". Transformer
families put those in different places and even store them differently: GPT-2 uses
``transformers.Conv1D``, whose weight is stored transposed as ``(in_features, out_features)``.
An :class:`ArchitectureAdapter` hides those differences so the methods see one picture:

* ``adapter.blocks(model)``: the decoder blocks, in order;
* ``adapter.linears(block)``: ``{name: module}`` of the block's prunable linears;
* ``weight_matrix(module)``: the weight as ``(out_features, in_features)`` whatever the storage.

Embeddings and the LM head are never in ``linears``: pruning them hurts far more than it saves
(Wanda and SparseGPT both leave them dense).

Tiny randomly initialised models of each family, for tests and quick mode, are in
:mod:`pruning_course.testing`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn
from transformers.pytorch_utils import Conv1D

from .errors import InputError

PRUNABLE_TYPES = (nn.Linear, Conv1D)
PRUNABLE_KINDS = "nn.Linear or GPT-2's Conv1D"  # how messages name PRUNABLE_TYPES


def is_prunable_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and GPT-2's ``Conv1D``."""
    return isinstance(module, PRUNABLE_TYPES)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as an ``(out_features, in_features)`` view sharing storage.

    ``nn.Linear`` stores ``W`` as ``(out, in)`` and computes ``x @ W.T``; GPT-2's ``Conv1D`` stores it
    as ``(in, out)`` and computes ``x @ W``. In-place edits of the returned view (``mul_``,
    ``copy_``, indexing) change the layer itself.
    """
    if isinstance(module, Conv1D):
        return module.weight.data.t()
    if isinstance(module, nn.Linear):
        return module.weight.data
    raise TypeError(f"{type(module).__name__} is not a prunable linear layer (nn.Linear or Conv1D)")


# How checks and error messages name GPT-2's transposed linear layer to a learner.
TRANSPOSED_LINEAR = "transformers.pytorch_utils.Conv1D"


def stores_transposed(module: nn.Module) -> bool:
    """True when the layer stores its weight as ``(in, out)`` (GPT-2's ``Conv1D``), not ``(out, in)``."""
    return isinstance(module, Conv1D)


def as_stored(module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """An ``(out, in)`` matrix (a mask, a new weight) in the layout ``module`` stores its weight, and
    back: the same transpose both ways."""
    return matrix.t() if stores_transposed(module) else matrix


def weight_with_grad(module: nn.Module) -> torch.Tensor:
    """The weight as ``(out, in)`` *with* autograd (:func:`weight_matrix` is a detached view)."""
    return as_stored(module, module.weight)


def grad_matrix(module: nn.Module) -> torch.Tensor | None:
    """The gradient of the weight as ``(out, in)``, or None before a backward pass."""
    grad = module.weight.grad
    return None if grad is None else as_stored(module, grad)


def features(module: nn.Module, side: str) -> int:
    """``out_features`` (``side="out"``) or ``in_features`` (``side="in"``) of a prunable linear."""
    out_features, in_features = weight_matrix(module).shape
    return out_features if side == "out" else in_features


def slice_linear(module: nn.Module, index: torch.Tensor, side: str) -> None:
    """Keep only the output rows (``side="out"``) or input columns (``side="in"``) listed in ``index``.

    Works in place on ``nn.Linear`` and on GPT-2's ``Conv1D`` (weight stored as ``(in, out)``); the
    bias follows the output rows. Parameters are replaced by new, smaller ones with the same dtype,
    device and ``requires_grad``.
    """
    if side not in ("out", "in"):
        raise InputError(f"side must be 'out' or 'in', got {side!r}")
    if not is_prunable_linear(module):
        raise TypeError(f"{type(module).__name__} is not an nn.Linear or Conv1D")
    index = torch.as_tensor(index, dtype=torch.long, device=module.weight.device)
    weight = module.weight
    rows_are_outputs = not stores_transposed(module)
    if (side == "out") == rows_are_outputs:
        new_weight = weight.data[index, :]
    else:
        new_weight = weight.data[:, index]
    module.weight = nn.Parameter(new_weight.clone(), requires_grad=weight.requires_grad)
    if side == "out" and module.bias is not None:
        module.bias = nn.Parameter(module.bias.data[index].clone(), requires_grad=module.bias.requires_grad)

    size = index.numel()
    if stores_transposed(module):
        if side == "out":
            module.nf = size
        else:
            module.nx = size
    elif side == "out":
        module.out_features = size
    else:
        module.in_features = size


def set_weight_matrix(module: nn.Module, new_weight: torch.Tensor) -> None:
    """Write an ``(out_features, in_features)`` matrix into the layer, whatever its storage."""
    target = weight_matrix(module)
    if target.shape != new_weight.shape:
        raise InputError(f"expected a weight of shape {tuple(target.shape)}, got {tuple(new_weight.shape)}")
    target.copy_(new_weight.to(target.dtype))


def apply_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Zero the weights of a linear layer where ``mask`` is ``False`` (mask is ``(out, in)``)."""
    weight = weight_matrix(module)
    if mask.shape != weight.shape:
        raise InputError(f"mask shape {tuple(mask.shape)} does not match the weight {tuple(weight.shape)}")
    weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))


def attach_torch_prune_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Attach ``mask`` with ``torch.nn.utils.prune.custom_from_mask`` (``weight_orig`` + ``weight_mask``).

    This is the textbook API: the mask is re-applied on every forward pass until
    ``torch.nn.utils.prune.remove(module, "weight")`` makes the zeros permanent. ``Conv1D`` stores
    its weight transposed, so its mask is transposed too.
    """
    storage_mask = as_stored(module, mask)
    torch_prune.custom_from_mask(module, "weight", storage_mask.to(module.weight.device))


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in place of the submodule at the dotted path ``name`` (e.g. a masked, packed
    or CSR version of a linear layer)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _get(root: nn.Module, dotted: str) -> nn.Module | None:
    module = root
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


@dataclass(frozen=True)
class BlockLayout:
    """Where one family keeps its attention projections and MLP layers inside a decoder block.

    ``attention``: the attention module, relative to the block. ``q``, ``k``, ``v``: separate
    projections (relative to the attention module), or ``qkv``: one fused projection whose outputs are
    ``[queries | keys | values]`` (GPT-2's ``c_attn``). ``o``: the output projection. ``mlp_in``: the
    layers whose output rows are the intermediate neurons; ``mlp_out``: the layer whose input columns
    read them (relative to the block). ``mlp``: the module holding an ``intermediate_size`` attribute,
    if any.
    """

    attention: str
    o: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    mlp: str | None = None

    @property
    def mlp_linears(self) -> tuple[str, ...]:
        """Every MLP linear of the block (block-relative names), inputs first."""
        return (*self.mlp_in, self.mlp_out)


LLAMA_LAYOUT = BlockLayout(
    attention="self_attn", q="q_proj", k="k_proj", v="v_proj", o="o_proj",
    mlp_in=("mlp.gate_proj", "mlp.up_proj"), mlp_out="mlp.down_proj", mlp="mlp",
)
GPT2_LAYOUT = BlockLayout(attention="attn", qkv="c_attn", o="c_proj", mlp_in=("mlp.c_fc",), mlp_out="mlp.c_proj")
OPT_LAYOUT = BlockLayout(
    attention="self_attn", q="q_proj", k="k_proj", v="v_proj", o="out_proj", mlp_in=("fc1",), mlp_out="fc2",
)


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Where one family keeps its decoder blocks and the modules that run before them.

    ``blocks_path``: dotted path of the ``nn.ModuleList`` of decoder blocks.
    ``pre_block_paths``: modules that run before block 0 (embeddings, positions, rotary tables);
    the calibration engine moves them to the calibration device to capture block-0 inputs.
    ``embedding_paths`` / ``head_path``: never pruned. ``layout``: where attention and MLP live
    inside a block (structured pruning and the MLP-only fine-tuning need it).
    """

    family: str
    blocks_path: str
    pre_block_paths: tuple[str, ...]
    embedding_paths: tuple[str, ...]
    head_path: str
    layout: BlockLayout | None = None

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        blocks = _get(model, self.blocks_path)
        if not isinstance(blocks, nn.ModuleList):
            raise InputError(f"{type(model).__name__} has no decoder blocks at '{self.blocks_path}'")
        return blocks

    def pre_block_modules(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in (_get(model, p) for p in self.pre_block_paths) if m is not None]

    def embeddings(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in (_get(model, p) for p in self.embedding_paths) if m is not None]

    def head(self, model: nn.Module) -> nn.Module:
        return _get(model, self.head_path)

    @staticmethod
    def linears(block: nn.Module) -> dict[str, nn.Module]:
        """The prunable linears of one decoder block, by name relative to the block."""
        return {name: m for name, m in block.named_modules() if is_prunable_linear(m)}

    def named_linears(self, model: nn.Module) -> dict[str, nn.Module]:
        """Every prunable linear of the model by its full name (``model.layers.3.mlp.up_proj``)."""
        return {
            f"{self.blocks_path}.{i}.{name}": module
            for i, block in enumerate(self.blocks(model))
            for name, module in self.linears(block).items()
        }


LLAMA_LIKE = ArchitectureAdapter(
    family="llama",
    blocks_path="model.layers",
    pre_block_paths=("model.embed_tokens", "model.rotary_emb"),
    embedding_paths=("model.embed_tokens",),
    head_path="lm_head",
    layout=LLAMA_LAYOUT,
)
GPT2 = ArchitectureAdapter(
    family="gpt2",
    blocks_path="transformer.h",
    pre_block_paths=("transformer.wte", "transformer.wpe", "transformer.drop"),
    embedding_paths=("transformer.wte", "transformer.wpe"),
    head_path="lm_head",
    layout=GPT2_LAYOUT,
)
OPT = ArchitectureAdapter(
    family="opt",
    blocks_path="model.decoder.layers",
    pre_block_paths=("model.decoder.embed_tokens", "model.decoder.embed_positions", "model.decoder.project_in"),
    embedding_paths=("model.decoder.embed_tokens", "model.decoder.embed_positions"),
    head_path="lm_head",
    layout=OPT_LAYOUT,
)

def layout_for(adapter: ArchitectureAdapter) -> BlockLayout:
    """The :class:`BlockLayout` of ``adapter``'s family."""
    if adapter.layout is None:
        raise InputError(
            f"the block layout of family {adapter.family!r} is not known; give its ArchitectureAdapter a "
            "BlockLayout in pruning_course.architectures"
        )
    return adapter.layout


ADAPTERS_BY_MODEL_TYPE = {
    "llama": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
    "qwen3": LLAMA_LIKE,
    "gpt2": GPT2,
    "opt": OPT,
}


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for a transformers causal LM, chosen by ``config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = ADAPTERS_BY_MODEL_TYPE.get(model_type)
    if adapter is None:
        supported = ", ".join(sorted(ADAPTERS_BY_MODEL_TYPE))
        raise InputError(
            f"no architecture adapter for model_type={model_type!r}; supported: {supported}. "
            "Add an ArchitectureAdapter to pruning_course.architectures.ADAPTERS_BY_MODEL_TYPE."
        )
    adapter.blocks(model)  # fail early if the layout is not what the adapter expects
    return adapter


# ---------------------------------------------------------------------------------------------
# Tiny models for tests and quick mode
# ---------------------------------------------------------------------------------------------
