"""Sensitivity analysis: how much does pruning one decoder block (or one linear) alone hurt?

The classic experiment behind every non-uniform sparsity schedule: prune a single unit to a fixed
sparsity (e.g. 50% magnitude), leave the rest of the model dense, measure the perplexity against
the dense model, restore the unit, and move on to the next. Plotting the increase over depth shows
which blocks a model can spare; in LLMs the first blocks (and often the last) are the most
sensitive and the middle ones the least. :func:`layer_sensitivity` runs the scan with magnitude,
Wanda or SparseGPT (the calibrated methods see the dense model's activations in every block,
because each unit is pruned alone).

:func:`schedule_from_sensitivity` turns the scan into a per-block sparsity schedule at the *same*
model-wide sparsity: less sensitive blocks are pruned more. The mapping (see
:func:`pruning_course.schedules.linear_schedule`): each block's sensitivity (its increase in mean
NLL, ``log(ppl / dense_ppl)``) becomes a score ``u_l`` in [0, 1], by rank (default: evenly spaced,
robust to one block dominating, e.g. block 0) or by min-max normalised value (``mapping="linear"``,
OWL's choice for outlier ratios); then ``s_l = target - spread * (u_l - mean_w(u))``, with
``mean_w`` weighted by each block's prunable weights. So the most sensitive block gets the lowest
sparsity, ``max s - min s = spread``, and the parameter-weighted mean, the model-wide sparsity, is
exactly ``target`` (:func:`schedule_sparsity`; the realised sparsity is lower by at most the
rounding of ``floor(in_features * s)`` per row). ``min_sparsity``/``max_sparsity`` shrink the
spread until every block lies within them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError
from ..architectures import ArchitectureAdapter, set_weight_matrix, weight_matrix
from ..calibration import recording_block_inputs, replaying_lower_blocks, run_blockwise
from ..evaluate import PerplexityResult, eval_windows, summed_nll
from ..masks import validate_sparsity
from ..schedules import block_parameter_counts, linear_schedule, schedule_sparsity

__all__ = [
    "LayerSensitivity",
    "block_parameter_counts",
    "layer_sensitivity",
    "pruned_weights",
    "schedule_from_sensitivity",
    "schedule_sparsity",
]

UNITS = ("block", "linear")


@dataclass(frozen=True)
class LayerSensitivity:
    """Perplexity with one unit (a decoder block or one linear) pruned, everything else dense."""

    index: int  # decoder block index (of the linear, for unit="linear")
    name: str  # "model.layers.3" or "model.layers.3.mlp.up_proj"
    parameters: int  # prunable weights in the unit
    sparsity: float  # realised sparsity of the unit
    ppl: float
    dense_ppl: float
    nll: float  # mean next-token NLL, pruned
    dense_nll: float

    @property
    def delta_ppl(self) -> float:
        return self.ppl - self.dense_ppl

    @property
    def delta_nll(self) -> float:
        """``log(ppl / dense_ppl)``: the increase in mean NLL (nats per token)."""
        return self.nll - self.dense_nll

    def as_dict(self) -> dict:
        return {**asdict(self), "delta_ppl": self.delta_ppl, "delta_nll": self.delta_nll}


@torch.no_grad()
def pruned_weights(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    sparsity: float = 0.5,
    method: str = "magnitude",
    windows: torch.Tensor | None = None,
    *,
    scope: str = "matrix",
    batch_size: int = 8,
    device=None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """What ``method`` would make of every prunable linear, without changing the model.

    Returns ``{full linear name: pruned (out, in) weight on the CPU}``. For Wanda and SparseGPT the
    statistics of block ``l`` come from the *dense* blocks before it (each unit is pruned alone).
    ``scope`` is magnitude's comparison group ("matrix", the papers' baseline, or "row").
    """
    from ..methods import get_method  # the registry imports this package's methods: import it when called

    spec = get_method(method, purpose="sensitivity analysis")
    sparsity = validate_sparsity(sparsity)
    options = {"scope": scope} if "scope" in spec.options else {}

    def pruned(linear: nn.Module, statistic) -> torch.Tensor:
        return spec.pruned_layer(weight_matrix(linear), statistic, sparsity, None, **options)[0].cpu()

    if not spec.needs_data:
        return {name: pruned(m, None) for name, m in adapter.named_linears(model).items()}
    if windows is None:
        raise InputError(f"{method} is calibrated: pass calibration windows (data.calibration_windows)")
    result: dict[str, torch.Tensor] = {}

    def on_block(index: int, block: nn.Module, stats) -> None:  # computes, changes nothing: the next block sees dense outputs
        for name, linear in adapter.linears(block).items():
            result[f"{adapter.blocks_path}.{index}.{name}"] = pruned(linear, stats[name])

    run_blockwise(
        model, adapter, windows, on_block, statistic=spec.statistic,
        batch_size=batch_size, device=device, progress=progress, description=f"{method} (sensitivity)",
    )
    return result


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    ids: torch.Tensor,
    sparsity: float = 0.5,
    method: str = "magnitude",
    unit: str = "block",
    *,
    seqlen: int = 512,
    max_windows: int | None = None,
    windows: torch.Tensor | None = None,
    scope: str = "matrix",
    batch_size: int = 4,
    device=None,
    progress: bool = True,
    max_cache_mb: float = 2048,
) -> list[LayerSensitivity]:
    """Prune one unit at a time at ``sparsity``; return its perplexity on ``ids`` vs the dense model.

    ``unit="block"`` prunes every linear of one decoder block together, ``"linear"`` one linear.
    ``ids`` is the 1-D evaluation token sequence (:func:`pruning_course.evaluate.perplexity`, with
    ``seqlen`` and ``max_windows``); ``windows`` are calibration windows for Wanda / SparseGPT.
    The model's weights are restored after every unit (also on error).

    With one unit pruned, the blocks before it are dense, so their outputs are the dense model's:
    the dense evaluation records the hidden states entering every block, and each unit's
    evaluation replays them and runs only its own block onwards -- the same batches through the
    same blocks, so the same numbers as full forwards, in about half the time. The record takes
    ``blocks x eval tokens x hidden x 4`` bytes; above ``max_cache_mb`` (or with 0) every unit
    gets a full forward instead.
    """
    if unit not in UNITS:
        raise InputError(f"unknown unit {unit!r}; choose 'block' (one decoder block at a time) or 'linear'")
    candidates = pruned_weights(
        model, adapter, sparsity, method, windows, scope=scope, batch_size=batch_size, device=device, progress=progress
    )

    scan = _PrefixReplay(model, adapter, eval_windows(ids, seqlen, max_windows), batch_size, device, max_cache_mb)
    dense = scan.dense()
    linears = adapter.named_linears(model)
    if unit == "block":
        units = [
            (index, f"{adapter.blocks_path}.{index}", [f"{adapter.blocks_path}.{index}.{n}" for n in adapter.linears(block)])
            for index, block in enumerate(adapter.blocks(model))
        ]
    else:
        prefix = len(adapter.blocks_path) + 1
        units = [(int(name[prefix:].split(".", 1)[0]), name, [name]) for name in linears]

    results = []
    for index, name, members in tqdm(units, desc=f"sensitivity ({unit})", unit=unit, disable=not progress):
        saved = {m: weight_matrix(linears[m]).detach().clone() for m in members}
        try:
            for m in members:
                set_weight_matrix(linears[m], candidates[m])
            pruned = scan.with_block_changed(index)
        finally:
            for m in members:
                set_weight_matrix(linears[m], saved[m])
        zeros = sum(int((candidates[m] == 0).sum()) for m in members)
        count = sum(candidates[m].numel() for m in members)
        results.append(LayerSensitivity(
            index=index, name=name, parameters=count, sparsity=zeros / count,
            ppl=pruned.ppl, dense_ppl=dense.ppl, nll=pruned.mean_nll, dense_nll=dense.mean_nll,
        ))
    return results


class _PrefixReplay:
    """Perplexity on fixed windows when only blocks ``index`` onwards differ from the dense model
    (see :func:`layer_sensitivity`); the protocol and numbers of :func:`~pruning_course.evaluate.perplexity`."""

    def __init__(self, model, adapter, windows, batch_size, device, max_cache_mb):
        self.model, self.adapter, self.windows, self.batch_size = model, adapter, windows, batch_size
        self.device = device or next(model.parameters()).device
        hidden = adapter.embeddings(model)[0].weight.shape[1]
        self.may_cache = len(adapter.blocks(model)) * windows.numel() * hidden * 4 / 2**20 <= max_cache_mb
        self.cached: list[list[torch.Tensor]] | None = None  # per batch: the hidden states entering each block

    def dense(self) -> PerplexityResult:
        if not self.may_cache:
            return self._evaluate(0)
        with recording_block_inputs(self.model, self.adapter) as recorded:
            result = self._evaluate(0)
        self.cached = recorded
        return result

    def with_block_changed(self, index: int) -> PerplexityResult:
        return self._evaluate(index if self.cached is not None else 0)

    @torch.no_grad()
    def _evaluate(self, first_block: int) -> PerplexityResult:
        was_training = self.model.training
        self.model.eval()
        total = 0.0
        try:
            with replaying_lower_blocks(self.model, self.adapter, first_block) as source:
                for number, batch in enumerate(self.windows.split(self.batch_size)):
                    batch = batch.to(self.device)
                    if first_block:
                        source["hidden"] = self.cached[number][first_block]
                    total += summed_nll(self.model(input_ids=batch, use_cache=False).logits, batch)
        finally:
            self.model.train(was_training)
        return PerplexityResult.of_windows(total, self.windows)


def _average_ranks(scores: torch.Tensor) -> torch.Tensor:
    """0-based ranks, ties sharing their average rank."""
    below = (scores.unsqueeze(0) < scores.unsqueeze(1)).sum(dim=1)
    equal = (scores.unsqueeze(0) == scores.unsqueeze(1)).sum(dim=1)
    return below.double() + (equal.double() - 1) / 2


def schedule_from_sensitivity(
    sensitivities: Sequence[LayerSensitivity] | Sequence[float] | torch.Tensor,
    target_sparsity: float,
    spread: float = 0.2,
    *,
    counts: Sequence[int] | None = None,
    min_sparsity: float | None = None,
    max_sparsity: float | None = None,
    mapping: str = "rank",
) -> torch.Tensor:
    """Per-block sparsities with model-wide sparsity ``target_sparsity``: less sensitive, pruned more.

    ``sensitivities`` is the result of :func:`layer_sensitivity` with ``unit="block"`` (its
    ``delta_nll`` and ``parameters`` are used) or one number per block, larger = more sensitive,
    with ``counts`` the prunable weights per block (:func:`block_parameter_counts`; equal when
    ``None``). ``mapping`` is ``"rank"`` or ``"linear"`` (see the module doc). Returns a float64
    tensor; :func:`schedule_sparsity` of it with the counts equals ``target_sparsity``.
    """
    if mapping not in ("rank", "linear"):
        raise InputError(f"unknown mapping {mapping!r}; choose 'rank' or 'linear'")
    items = list(sensitivities) if not isinstance(sensitivities, torch.Tensor) else sensitivities.tolist()
    if not items:
        raise InputError("need one sensitivity per decoder block, got none")
    if isinstance(items[0], LayerSensitivity):
        indices = [s.index for s in items]
        if sorted(indices) != list(range(len(items))):
            raise InputError(
                "schedule_from_sensitivity needs one sensitivity per decoder block: run layer_sensitivity with unit='block'"
            )
        items = sorted(items, key=lambda s: s.index)
        if counts is None:
            counts = [s.parameters for s in items]
        scores = torch.tensor([s.delta_nll for s in items], dtype=torch.float64)
    else:
        scores = torch.tensor([float(s) for s in items], dtype=torch.float64)
    if counts is not None and len(counts) != scores.numel():
        raise InputError(f"got {len(counts)} parameter counts for {scores.numel()} blocks; give one per block")
    if not all(math.isfinite(float(s)) for s in scores):
        raise InputError("sensitivities must be finite (a NaN/inf perplexity? evaluate on more tokens)")
    if mapping == "rank":
        scores = _average_ranks(scores)
    bounds = None
    if min_sparsity is not None or max_sparsity is not None:
        bounds = (0.0 if min_sparsity is None else float(min_sparsity), 1.0 if max_sparsity is None else float(max_sparsity))
    return linear_schedule(scores, target_sparsity, spread, weights=counts, bounds=bounds)
