"""What a model is made of: parameter counts by role, bytes per dtype, and the prunable weights.

Notebook 01 ("Why prune") asks what pruning can save before pruning anything. Pruning in this
course touches only the weight matrices of the linear layers inside the decoder blocks
(:meth:`ArchitectureAdapter.named_linears`); embeddings, the LM head, norms and biases stay dense.

Tied weights are counted once. SmolLM2 (like GPT-2, OPT and the tiny test models) sets
``tie_word_embeddings=True``: ``lm_head.weight`` *is* the token embedding matrix, one
``nn.Parameter`` reachable from two modules. ``model.parameters()`` yields it once;
``model.state_dict()`` and a walk over the modules list it twice.
"""

from __future__ import annotations

from torch import nn

from .architectures import ArchitectureAdapter, weight_matrix

PARAMETER_ROLES = ("embeddings", "lm_head", "prunable_linears", "other", "total")

BYTES_PER_PARAMETER = {"fp32": 4, "bf16": 2, "int8": 1}


def _unique_numel(modules) -> tuple[int, set[int]]:
    """Total size of the distinct parameters of ``modules`` and the ids of those parameters."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for parameter in module.parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                total += parameter.numel()
    return total, seen


def parameter_counts(model: nn.Module, adapter: ArchitectureAdapter) -> dict[str, int]:
    """Parameters of ``model`` by role, each shared parameter counted once.

    * ``embeddings``: the embedding tables (tokens, and learned positions where the family has them);
    * ``lm_head``: the LM head's parameters that are not already counted as embeddings
      (0 when the head is tied to the token embeddings);
    * ``prunable_linears``: the weight matrices of the linears inside the decoder blocks, the only
      weights the course prunes (their biases are not pruned and count as ``other``);
    * ``other``: everything else (norms, biases, ...);
    * ``total``: every distinct parameter, ``sum(p.numel() for p in model.parameters())``.
    """
    embeddings, embedding_ids = _unique_numel(adapter.embeddings(model))
    head = adapter.head(model)
    head_params = [p for p in head.parameters() if id(p) not in embedding_ids] if head is not None else []
    lm_head = sum(p.numel() for p in head_params)
    prunable = sum(weight_matrix(m).numel() for m in adapter.named_linears(model).values())
    total = sum(p.numel() for p in model.parameters())
    return {
        "embeddings": embeddings,
        "lm_head": lm_head,
        "prunable_linears": prunable,
        "other": total - embeddings - lm_head - prunable,
        "total": total,
    }


def _component(name: str) -> str:
    """attention / mlp / other for a non-norm parameter, by the names along its path."""
    parts = set(name.split("."))
    if parts & {"self_attn", "attn", "attention"}:
        return "attention"
    if parts & {"mlp", "fc1", "fc2", "feed_forward"}:
        return "mlp"
    return "other"


def parameter_breakdown(model: nn.Module, adapter: ArchitectureAdapter) -> dict[str, int]:
    """Parameters by component: embeddings, attention, mlp, norms, lm_head (untied only), other.

    Attention and MLP include their linears' biases; ``norms`` are the LayerNorm/RMSNorm scales
    (and shifts) inside and after the blocks. Shared parameters are counted once.
    """
    counts = dict.fromkeys(("embeddings", "attention", "mlp", "norms", "lm_head", "other"), 0)
    _, embedding_ids = _unique_numel(adapter.embeddings(model))
    head = adapter.head(model)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    modules = dict(model.named_modules())
    seen: set[int] = set()
    for name, parameter in model.named_parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        if id(parameter) in embedding_ids:
            role = "embeddings"
        elif id(parameter) in head_ids:
            role = "lm_head"
        else:
            owner = modules.get(name.rsplit(".", 1)[0]) if "." in name else model
            if owner is not None and "norm" in type(owner).__name__.lower():
                role = "norms"
            else:
                role = _component(name)
        counts[role] += parameter.numel()
    return counts


def megabytes(num_parameters: int, dtype: str = "fp32") -> float:
    """Storage of ``num_parameters`` dense values in MiB at ``dtype`` (``fp32``, ``bf16`` or ``int8``)."""
    return num_parameters * BYTES_PER_PARAMETER[dtype] / 2**20


def prune_parameters(model: nn.Module, adapter: ArchitectureAdapter) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` pairs of every prunable linear, as ``torch.nn.utils.prune`` takes them.

    Feed them to ``prune.global_unstructured(pairs, ...)`` or loop with ``prune.l1_unstructured``.
    Only the linears inside the decoder blocks (``nn.Linear`` and GPT-2's transposed linears); never the
    embeddings or the LM head.
    """
    return [(module, "weight") for module in adapter.named_linears(model).values()]


def macs_per_token(model: nn.Module, adapter: ArchitectureAdapter) -> int:
    """Multiply-adds per token of the decoder blocks' linear layers and the LM head: what structured
    pruning removes from a forward pass (attention over the context is not counted)."""
    head = model.get_output_embeddings()
    return sum(m.weight.numel() for m in adapter.named_linears(model).values()) + (head.weight.numel() if head is not None else 0)

