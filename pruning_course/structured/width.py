"""MLP width pruning: score the intermediate neurons from calibration activations, then remove them.

A transformer MLP computes ``y = W_down a`` with the intermediate activation ``a`` (``act(gate) * up``
for Llama, ``act(fc1 x)`` for GPT-2 and OPT). Intermediate neuron ``j`` is column ``j`` of
``W_down`` together with row ``j`` of the layers that produce ``a_j`` (``gate``/``up``, ``fc1``);
removing it removes all of them at once and leaves the output exactly as if ``a_j`` were always 0.

Scores (larger = more important), computed from the inputs ``a`` that the down projection sees on
calibration data, with the calibration engine (:func:`pruning_course.calibration.run_blockwise`):

* ``"wanda_sp"``: ``S_j = mean_i |W_down[i, j]| * ||a_j||``, with ``||a_j||`` the root mean square over
  tokens: Wanda's per-weight score ``|W_ij| * ||X_j||`` (Sun et al., 2024, Eq. 1) summed over a
  whole column. This is the "Wanda-sp" structured baseline of An et al. (2024, "Fluctuation-based
  Adaptive Structured Pruning for Large Language Models", FLAP), ``WIFN`` in their code.
* ``"fluctuation"``: ``S_j = Var(a_j) * ||W_down[:, j]||_2^2``, FLAP's fluctuation metric (``WIFV`` in
  their code): a channel whose activation barely varies can be replaced by its mean. FLAP adds that
  mean back as a bias ("baseline bias compensation") and standardises scores to compare layers;
  here only the score is implemented and every layer loses the same share, so with this metric the
  removed channels' mean contribution is lost.
* ``"activation"``: ``S_j = ||a_j||`` (root mean square): the plain activation-norm baseline, which
  ignores the weights.

:func:`prune_mlp_width` then slices gate/up rows and down columns together (``fc1`` rows / ``fc2``
columns for OPT; ``c_fc`` / ``c_proj`` for GPT-2, whose linears store their weights transposed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import InputError
from ..architectures import ArchitectureAdapter, layout_for, weight_matrix
from ..calibration import InputStatistic, run_blockwise
from ..masks import num_to_prune
from .resize import mlp_width, shrink_mlp

__all__ = [
    "ActivationMoments",
    "METRICS",
    "neuron_scores",
    "mlp_neuron_importance",
    "choose_neurons_to_keep",
    "prune_mlp_width",
]

METRICS = ("wanda_sp", "fluctuation", "activation")


class ActivationMoments(InputStatistic):
    """Per input feature ``j``: the mean of ``x_j^2`` and the (unbiased) variance of ``x_j`` over tokens."""

    def __init__(self, module: nn.Module):
        super().__init__(module)
        device = module.weight.device
        self.sum = torch.zeros(self.in_features, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros(self.in_features, dtype=torch.float64, device=device)

    def _accumulate(self, x: torch.Tensor) -> None:
        x = x.double()
        self.sum += x.sum(dim=0)
        self.sum_sq += x.pow(2).sum(dim=0)

    @property
    def mean_sq(self) -> torch.Tensor:
        return (self.sum_sq / max(self.tokens, 1)).float()

    @property
    def variance(self) -> torch.Tensor:
        n = max(self.tokens, 2)
        return ((self.sum_sq - self.sum.pow(2) / n) / (n - 1)).clamp_min(0.0).float()


def neuron_scores(
    down_weight: torch.Tensor,
    mean_sq: torch.Tensor,
    variance: torch.Tensor | None = None,
    metric: str = "wanda_sp",
) -> torch.Tensor:
    """Importance of every intermediate neuron ``j`` (column ``j`` of the ``(out, in)`` ``down_weight``).

    ``mean_sq[j]``: mean over calibration tokens of ``a_j^2``; ``variance[j]``: variance of ``a_j``
    (needed by ``"fluctuation"`` only). See the module docstring for the three metrics.
    """
    if down_weight.dim() != 2 or mean_sq.shape != (down_weight.shape[1],):
        raise InputError(
            f"need an (out, in) down-projection weight and one mean square per input feature; got "
            f"{tuple(down_weight.shape)} and {tuple(mean_sq.shape)}"
        )
    weight = down_weight.float()
    if metric == "wanda_sp":
        return weight.abs().mean(dim=0) * mean_sq.float().sqrt()
    if metric == "activation":
        return mean_sq.float().sqrt()
    if metric == "fluctuation":
        if variance is None or variance.shape != mean_sq.shape:
            raise InputError("the fluctuation metric needs the variance of every input feature")
        return variance.float() * weight.pow(2).sum(dim=0)
    raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def mlp_neuron_importance(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    metric: str = "wanda_sp",
    *,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> list[torch.Tensor]:
    """:func:`neuron_scores` of every block's MLP neurons on the calibration ``windows`` (``(n, seqlen)`` ids).

    Returns one float32 CPU tensor per block (blocks may differ in width). The model is unchanged.
    """
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    down_name = layout_for(adapter).mlp_out
    scores: list[torch.Tensor] = []

    def on_block(_index: int, block: nn.Module, stats: dict[str, InputStatistic]) -> None:
        moments = stats[down_name]
        down = weight_matrix(block.get_submodule(down_name))
        scores.append(neuron_scores(down, moments.mean_sq, moments.variance, metric).cpu())

    run_blockwise(
        model, adapter, windows, on_block, statistic=ActivationMoments, batch_size=batch_size, device=device,
        progress=progress, description="scoring MLP neurons",
    )
    return scores


def choose_neurons_to_keep(scores: Sequence[torch.Tensor], keep_ratio: float) -> dict[int, torch.Tensor]:
    """In every layer, the highest-scoring neurons: ``{layer: sorted indices}``.

    Each layer of ``n`` neurons loses ``floor(n * (1 - keep_ratio))`` (the course's rounding, see
    :func:`pruning_course.masks.num_to_prune`). ``keep_ratio`` must be in ``(0, 1]`` and keep at least one
    neuron per layer.
    """
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0.0 < keep_ratio <= 1.0:
        raise InputError(f"keep ratio must be in (0, 1] (the fraction of MLP neurons kept), got {keep_ratio!r}")
    keep = {}
    for layer, layer_scores in enumerate(scores):
        n = layer_scores.numel()
        n_keep = n - num_to_prune(n, 1.0 - keep_ratio)
        if n_keep < 1:
            raise InputError(f"keep ratio {keep_ratio} keeps no neuron of layer {layer} ({n} neurons); keep at least one")
        top = torch.topk(layer_scores.float(), n_keep, sorted=False).indices
        keep[layer] = top.sort().values
    return keep


def _check_keep(layer: int, indices, width: int) -> torch.Tensor:
    indices = torch.as_tensor(indices)
    if indices.dim() != 1 or (indices.numel() and (indices.is_floating_point() or indices.dtype == torch.bool)):
        raise InputError(f"layer {layer}: kept neurons must be a 1-D tensor or list of integer indices")
    indices = indices.long()
    if indices.numel() == 0:
        raise InputError(f"layer {layer}: cannot remove all {width} MLP neurons; keep at least one")
    if indices.min() < 0 or indices.max() >= width:
        raise InputError(f"layer {layer} has {width} MLP neurons (0..{width - 1}); got indices outside that range")
    if indices.unique().numel() != indices.numel():
        raise InputError(f"layer {layer}: kept neuron indices contain duplicates")
    return indices.sort().values


def prune_mlp_width(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    keep: Mapping[int, torch.Tensor | Sequence[int]] | float,
    *,
    scores: Sequence[torch.Tensor] | None = None,
) -> nn.Module:
    """Remove MLP neurons in place and return the model.

    ``keep`` is either ``{layer: indices of the neurons to keep}`` (layers not listed stay as they are)
    or a keep ratio in ``(0, 1]`` applied to every layer, in which case ``scores`` (from
    :func:`mlp_neuron_importance`) choose the neurons (:func:`choose_neurons_to_keep`).

    Raises ``ValueError`` before changing anything for out-of-range layers or indices, duplicates,
    keeping no neuron, or a ratio outside ``(0, 1]``.
    """
    blocks = adapter.blocks(model)
    if not isinstance(keep, Mapping):
        if scores is None:
            raise InputError("a keep ratio needs scores to choose the neurons: pass scores=mlp_neuron_importance(...)")
        if len(scores) != len(blocks):
            raise InputError(f"scores has {len(scores)} layers, the model {len(blocks)} blocks")
        keep = choose_neurons_to_keep(scores, keep)
    plans = {}
    for layer, indices in keep.items():
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(blocks):
            raise InputError(f"layer {layer!r} is out of range for a model with {len(blocks)} blocks (0..{len(blocks) - 1})")
        plans[layer] = _check_keep(layer, indices, mlp_width(blocks[layer], adapter))
    for layer, indices in plans.items():
        if indices.numel() != mlp_width(blocks[layer], adapter):
            shrink_mlp(blocks[layer], adapter, indices)
    return model
