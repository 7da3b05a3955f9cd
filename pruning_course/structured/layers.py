"""Layer pruning: score whole decoder blocks by how little they change the residual stream, then delete them.

Two closely related scores, both computed from the hidden states *between* decoder blocks:

* **Angular distance** (Gromov et al., 2024, "The Unreasonable Ineffectiveness of the Deeper
  Layers", Eq. 7). For a window of ``n`` consecutive blocks starting at block ``l``, compare the
  hidden state ``x^(l)`` entering block ``l`` with ``x^(l+n)`` leaving block ``l+n-1``::

      d(x^(l), x^(l+n)) = arccos(cos_sim(x^(l), x^(l+n))) / pi      in [0, 1]

  The ``n`` consecutive blocks with the smallest distance change the representation least, and are
  the ones to remove (followed, in the paper, by a short QLoRA "healing" fine-tune).
* **Block Influence** (Men et al., 2024, "ShortGPT: Layers in Large Language Models are More
  Redundant Than You Expect", Eq. 1). For every single block ``i``::

      BI_i = 1 - E[cos_sim(x_in_i, x_out_i)]

  The ``n`` blocks with the lowest BI are removed, whether consecutive or not.

Both are averages over tokens of a function of the same cosine similarity; for ``n = 1`` they rank
blocks identically (``arccos`` is decreasing), up to how the per-token values are averaged.

Scores are computed with the calibration engine's approach (see :mod:`pruning_course.calibration`):
the block-0 inputs of every calibration batch are captured, then the blocks are run one after the
other, so only the activations at ``n + 1`` consecutive block boundaries are held at a time (one
block's inputs and outputs for ``n = 1``), never the whole model's hidden states.

:func:`remove_blocks` then deletes the chosen blocks for real: the model gets smaller and faster,
and still generates with a KV cache and round-trips through ``save_pretrained``/``from_pretrained``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError
from ..architectures import ArchitectureAdapter
from ..calibration import run_blockwise

__all__ = [
    "angular_distance",
    "angular_distances",
    "block_influence",
    "choose_blocks_to_remove",
    "choose_consecutive_blocks",
    "choose_lowest_blocks",
    "first_blocks",
    "last_blocks",
    "middle_blocks",
    "remove_blocks",
    "removal_perplexities",
]


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------


def angular_distance(x_in: torch.Tensor, x_out: torch.Tensor, last_token_only: bool = False) -> float:
    """Tensor-level angular distance, Gromov et al. (2024), Eq. 7, averaged over tokens: ``mean(arccos(cos_sim(x_in, x_out)) / pi)``.

    ``x_in`` and ``x_out`` are hidden states of shape ``(batch, seq, hidden)``; the cosine is taken
    over the hidden dimension of every token, in float64 and clamped to ``[-1, 1]``.
    ``last_token_only`` keeps only the last position of each sequence (the paper's choice).
    """
    return float((torch.arccos(token_cosines(x_in, x_out, last_token_only)) / math.pi).mean())


def token_cosines(x_in: torch.Tensor, x_out: torch.Tensor, last_token_only: bool = False) -> torch.Tensor:
    """Cosine similarity of ``x_in`` and ``x_out`` (``(batch, seq, hidden)``) for every token, over the
    hidden dimension, in float64 and clamped to ``[-1, 1]``: the quantity both the angular distance
    (Gromov et al., Eq. 7) and Block Influence (Men et al., Eq. 1) average."""
    if last_token_only:
        x_in, x_out = x_in[:, -1], x_out[:, -1]
    return F.cosine_similarity(x_in.detach().double(), x_out.detach().double(), dim=-1).clamp(-1.0, 1.0)


@torch.no_grad()
def _boundary_scores(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    n: int,
    per_token: Callable[[torch.Tensor], torch.Tensor],
    *,
    last_token_only: bool,
    batch_size: int,
    device: torch.device | str | None,
) -> torch.Tensor:
    """For every start block ``l``, the token-average of ``per_token(cos(x^(l), x^(l+n)))``.

    ``x^(k)`` is the hidden state entering block ``k`` (``x^(L)`` leaves the last block, before the
    final norm). Returns a float64 tensor of length ``num_blocks - n + 1``.
    """
    num_blocks = len(adapter.blocks(model))
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= num_blocks:
        raise InputError(f"n must be an integer between 1 and the number of blocks ({num_blocks}), got {n!r}")

    # boundaries[k][b]: batch b's hidden state at one block boundary; the deque keeps the last n + 1.
    boundaries: deque[list[torch.Tensor]] = deque(maxlen=n + 1)
    totals = torch.zeros(num_blocks - n + 1, dtype=torch.float64)

    def after_block(index: int, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        if not boundaries:
            boundaries.append(inputs)
        boundaries.append(outputs)
        if len(boundaries) == n + 1:  # boundaries[0] enters block index + 1 - n, boundaries[-1] leaves block index
            for x_in, x_out in zip(boundaries[0], boundaries[-1]):
                totals[index + 1 - n] += per_token(token_cosines(x_in, x_out, last_token_only)).sum().cpu()

    run_blockwise(
        model, adapter, windows, lambda *_: None, statistic=None, batch_size=batch_size, device=device,
        progress=False, after_block=after_block,
    )
    tokens = windows.shape[0] * (1 if last_token_only else windows.shape[1])
    return totals / tokens


def angular_distances(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    n: int = 1,
    batch_size: int = 8,
    *,
    last_token_only: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Gromov et al. (2024), Eq. 7: angular distance across every window of ``n`` consecutive blocks.

    Returns a tensor ``d`` of length ``num_blocks - n + 1`` where ``d[l]`` is the mean over tokens of
    ``arccos(cos_sim(x^(l), x^(l+n))) / pi``, with ``x^(l)`` the hidden state entering block ``l`` and
    ``x^(l+n)`` the one leaving block ``l + n - 1``. Values lie in ``[0, 1]``: 0 means the window leaves
    every token's direction unchanged (it could be removed at no cost to the residual stream's
    direction), 0.5 means orthogonal.

    Token averaging: the paper uses only the *last* token of each sequence (the one whose
    representation predicts the next token), averaged over samples. By default all tokens of all
    ``windows`` are averaged instead, which gives a much less noisy estimate from a few calibration
    windows; ``last_token_only=True`` reproduces the paper's choice.

    ``windows`` is an ``(num_windows, seqlen)`` tensor of token ids; blocks run one at a time on
    ``device`` (default: where the model is).
    """
    return _boundary_scores(
        model, adapter, windows, n, lambda cos: torch.arccos(cos) / math.pi,
        last_token_only=last_token_only, batch_size=batch_size, device=device,
    ).float()


def block_influence(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    batch_size: int = 8,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """ShortGPT's Block Influence (Men et al., 2024, Eq. 1): ``BI_i = 1 - E[cos_sim(x_in_i, x_out_i)]``.

    One value per decoder block, the expectation taken over every token of every calibration window
    (as in the paper). A block whose output is (nearly) its input has BI close to 0 and is the first to
    remove; BI lies in ``[0, 2]``, and in practice well below 1.
    """
    return _boundary_scores(
        model, adapter, windows, 1, lambda cos: 1.0 - cos,
        last_token_only=False, batch_size=batch_size, device=device,
    ).float()


class _SkippedBlock(nn.Module):
    """Stands in for a decoder block and passes the residual stream through unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@torch.no_grad()
def removal_perplexities(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    ids: torch.Tensor,
    seqlen: int = 512,
    *,
    max_windows: int | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> torch.Tensor:
    """Direct sensitivity: the perplexity of the model with block ``i`` skipped, for every ``i``.

    The most expensive but most direct layer score (one perplexity evaluation per block, on the
    token sequence ``ids`` with :func:`pruning_course.evaluate.perplexity`'s protocol): the block whose
    removal raises perplexity least is the most redundant. Angular distance and Block Influence are
    cheap proxies for this. Each block is replaced in turn by a pass-through module and put back, so
    the model is unchanged afterwards. Evaluation runs without a KV cache.
    """
    from ..evaluate import perplexity

    blocks = adapter.blocks(model)
    results = []
    for index in tqdm(range(len(blocks)), desc="removal perplexity", unit="block", disable=not progress):
        block = blocks[index]
        blocks[index] = _SkippedBlock()
        try:
            results.append(perplexity(model, ids, seqlen, batch_size=batch_size, max_windows=max_windows,
                                      progress=False).ppl)
        finally:
            blocks[index] = block
    return torch.tensor(results)


# ---------------------------------------------------------------------------------------------
# Choosing blocks
# ---------------------------------------------------------------------------------------------


def _check_count(n: int, num_blocks: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= num_blocks:
        raise InputError(f"n must be an integer between 0 and the number of blocks ({num_blocks}), got {n!r}")


def choose_consecutive_blocks(distances: Sequence[float] | torch.Tensor, n: int) -> list[int]:
    """Gromov et al.'s rule: the ``n`` consecutive blocks whose window has the smallest angular distance.

    ``distances`` must come from :func:`angular_distances` with the same ``n`` (so it has
    ``num_blocks - n + 1`` entries); ties go to the earliest window.
    """
    distances = torch.as_tensor(distances, dtype=torch.float64).reshape(-1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or distances.numel() == 0:
        raise InputError(f"need n >= 1 and at least one distance, got n={n!r} and {distances.numel()} distances")
    start = int(torch.argmin(distances))
    return list(range(start, start + n))


def choose_lowest_blocks(scores: Sequence[float] | torch.Tensor, n: int) -> list[int]:
    """ShortGPT's rule: the ``n`` blocks with the lowest score (Block Influence), in increasing index order."""
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    _check_count(n, scores.numel())
    order = sorted(range(scores.numel()), key=lambda i: (float(scores[i]), i))  # stable: ties to earlier blocks
    return sorted(order[:n])


def choose_blocks_to_remove(scores: Sequence[float] | torch.Tensor, n: int, method: str = "angular") -> list[int]:
    """The blocks to delete, by Gromov et al.'s (``method="angular"``) or ShortGPT's (``"block_influence"``) rule.

    ``"angular"``: ``scores`` are :func:`angular_distances` computed with this same ``n``; returns the
    ``n`` consecutive blocks of the closest window. ``"block_influence"``: ``scores`` are
    :func:`block_influence` values; returns the ``n`` lowest-BI blocks.
    """
    if method == "angular":
        return choose_consecutive_blocks(scores, n)
    if method == "block_influence":
        return choose_lowest_blocks(scores, n)
    raise InputError(f"unknown method {method!r}; choose 'angular' or 'block_influence'")


def first_blocks(num_blocks: int, n: int) -> list[int]:
    """The first ``n`` blocks: a baseline that removes the layers building the early features."""
    _check_count(n, num_blocks)
    return list(range(n))


def last_blocks(num_blocks: int, n: int) -> list[int]:
    """The last ``n`` blocks: a baseline that removes the layers closest to the output."""
    _check_count(n, num_blocks)
    return list(range(num_blocks - n, num_blocks))


def middle_blocks(num_blocks: int, n: int) -> list[int]:
    """``n`` consecutive blocks centred in the stack (rounded towards the input when not exactly centred).

    The textbook comparison: removing e.g. 25% of the blocks from the middle of a pretrained LLM
    hurts far less than removing the first or the last quarter.
    """
    _check_count(n, num_blocks)
    start = (num_blocks - n) // 2
    return list(range(start, start + n))


# ---------------------------------------------------------------------------------------------
# Removing blocks
# ---------------------------------------------------------------------------------------------


def _configs(model: nn.Module) -> list:
    """Every distinct config object reachable from the model's modules (usually just one)."""
    seen: dict[int, object] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            seen.setdefault(id(config), config)
    return list(seen.values())


def _per_layer_config_lists(config, num_blocks: int) -> list[str]:
    """Config attributes that hold one entry per decoder block (``layer_types`` and the like)."""
    names = []
    for name, value in vars(config).items():
        if "layer" in name and isinstance(value, (list, tuple)) and len(value) == num_blocks:
            names.append(name)
    return names


def remove_blocks(model: nn.Module, adapter: ArchitectureAdapter, indices: Sequence[int]) -> nn.Module:
    """Delete the decoder blocks at ``indices`` from ``model`` in place, and return it.

    Besides dropping the blocks from the ``nn.ModuleList``, this keeps the model self-consistent:

    * ``config.num_hidden_layers`` becomes the new block count (GPT-2's ``n_layer`` through its
      attribute map), so ``save_pretrained`` / ``from_pretrained`` rebuild the smaller model;
    * per-block config lists (``config.layer_types`` in transformers 5, any list attribute with
      "layer" in its name and one entry per block) keep only the surviving entries;
    * every ``layer_idx`` inside the surviving blocks (``self_attn.layer_idx`` for Llama and OPT,
      ``attn.layer_idx`` for GPT-2) is renumbered 0, 1, ...: attention layers use it to find their
      slot in the KV cache, which is sized from ``num_hidden_layers``.

    Raises ``ValueError`` (leaving the model untouched) for duplicated or out-of-range indices, for
    removing every block, and for GPT-2 models with ``scale_attn_by_inverse_layer_idx`` (their
    attention scale depends on the block's position, so the smaller model could not be saved and
    reloaded faithfully).
    """
    blocks = adapter.blocks(model)
    num_blocks = len(blocks)
    indices = list(indices)
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise InputError(f"block indices must be integers, got {index!r}")
    out_of_range = [i for i in indices if not 0 <= i < num_blocks]
    if out_of_range:
        raise InputError(f"block indices {out_of_range} are out of range for a model with {num_blocks} blocks (0..{num_blocks - 1})")
    if len(set(indices)) != len(indices):
        duplicated = sorted({i for i in indices if indices.count(i) > 1})
        raise InputError(f"block indices {duplicated} are given more than once")
    if len(indices) == num_blocks:
        raise InputError(f"cannot remove all {num_blocks} blocks: at least one must remain")
    if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
        raise InputError("cannot remove blocks from a model with scale_attn_by_inverse_layer_idx: its attention scale depends on the block index")
    if not indices:
        return model

    removed = set(indices)
    keep = [i for i in range(num_blocks) if i not in removed]

    parent_path, _, attribute = adapter.blocks_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attribute, nn.ModuleList([blocks[i] for i in keep]))

    for new_index, block in enumerate(adapter.blocks(model)):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index

    for config in _configs(model):
        for name in _per_layer_config_lists(config, num_blocks):
            value = getattr(config, name)
            setattr(config, name, type(value)(value[i] for i in keep))
        config.num_hidden_layers = len(keep)
    return model
