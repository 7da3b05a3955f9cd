"""The block-by-block calibration engine shared by every calibrated method (Wanda, SparseGPT, ...).

One-shot pruning of an LLM follows the same loop in the SparseGPT (Frantar & Alistarh, 2023,
Sec. 3.5 / Algorithm 1's outer loop) and Wanda (Sun et al., 2024, Sec. 3) reference code:

1. run the calibration windows through the embeddings and capture what the first decoder block
   receives: its hidden states *and* every keyword argument (transformers 5 passes
   ``position_embeddings``, ``attention_mask``, ``position_ids``, ...);
2. for each decoder block in turn:
   a. forward the captured inputs through the block while hooks on its linear layers accumulate
      input statistics (``x x^T`` for SparseGPT, ``sum x_j^2`` for Wanda);
   b. hand the block and its statistics to the method, which prunes (or quantizes) the block;
   c. forward the inputs again so the *pruned* block's outputs become the next block's inputs:
      later blocks are calibrated on what they will really see.

Only one block's inputs and outputs are held at a time, and only the block being processed has to
sit on ``device``: the rest of the model can stay on the CPU (sequential onloading).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import InputError
from .architectures import ArchitectureAdapter, weight_matrix


class InputStatistic:
    """Accumulates a statistic of the inputs a linear layer sees, in float32."""

    def __init__(self, module: nn.Module):
        self.in_features = weight_matrix(module).shape[1]
        self.tokens = 0

    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.reshape(-1, inputs.shape[-1]).float()
        self.tokens += x.shape[0]
        self._accumulate(x)

    def _accumulate(self, x: torch.Tensor) -> None:
        raise NotImplementedError


class SquaredInputNorm(InputStatistic):
    """Wanda's statistic: for every input feature j, the mean over tokens of ``x_j^2``.

    ``sqrt`` of it is the ``||X_j||_2`` of Wanda's score (Eq. 1) up to a constant factor
    ``sqrt(tokens)``, which changes no ranking within a row.
    """

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self.sum_sq = torch.zeros(self.in_features, device=module.weight.device)

    def _accumulate(self, x: torch.Tensor) -> None:
        self.sum_sq += x.pow(2).sum(dim=0)

    @property
    def value(self) -> torch.Tensor:
        return self.sum_sq / max(self.tokens, 1)


class InputHessian(InputStatistic):
    """SparseGPT's / GPTQ's layer Hessian ``H = (2 / n) * sum_i x_i x_i^T`` over the n calibration tokens.

    It is the Hessian of the layer-wise reconstruction loss ``||X W^T - X W'^T||^2 / n`` (``X`` holds one
    token per row: the course's notation, notebook 01) with respect to each row of ``W'`` (SparseGPT,
    Sec. 3.1, writes the same loss as ``||W X - W' X||^2`` with one token per column). We divide by the
    number of tokens; the reference code divides by the number of calibration sequences, a constant
    factor that changes no mask or update because the damping is relative to the mean diagonal.
    """

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self.xtx = torch.zeros(self.in_features, self.in_features, device=module.weight.device)

    def _accumulate(self, x: torch.Tensor) -> None:
        self.xtx.addmm_(x.t(), x)

    @property
    def value(self) -> torch.Tensor:
        return self.xtx * (2.0 / max(self.tokens, 1))


def collect_input_statistic(linear: nn.Module, model: Callable, batches, statistic: type[InputStatistic] = SquaredInputNorm
                            ) -> torch.Tensor:
    """The ``statistic`` (Wanda's :class:`SquaredInputNorm` unless told) of what ``linear`` receives while
    ``model(batch)`` runs for every batch, observed with a forward hook that is removed even if a
    forward pass raises. ``model`` may be the whole model (batches of token ids) or ``linear`` itself
    (batches of its inputs): the signature of notebook 03's ``collect_act_sq_norms``."""
    stat = statistic(linear)
    handle = linear.register_forward_hook(lambda _module, args, _output: stat.add(args[0].detach()))
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        handle.remove()
    return stat.value


@dataclass(frozen=True)
class Moments:
    """First and second moments of a layer's inputs over ``tokens`` calibration tokens (float32):
    ``mean[j] = E[x_j]``, ``mean_sq[j] = E[x_j^2]`` and ``second_moment = E[x x^T]``."""

    tokens: int
    mean: torch.Tensor
    mean_sq: torch.Tensor
    second_moment: torch.Tensor

    @property
    def variance(self) -> torch.Tensor:
        """``Var[x_j] = E[x_j^2] - E[x_j]^2`` over all calibration tokens."""
        return (self.mean_sq - self.mean.pow(2)).clamp_min(0)


class InputMoments(InputStatistic):
    """DSnoT's statistic: the mean and mean square of every input feature, and ``E[x x^T]``.

    The mean and the variance drive DSnoT's expected reconstruction error and its growing
    criterion; ``mean_sq`` is :class:`SquaredInputNorm`'s value and ``2 E[x x^T]`` is
    :class:`InputHessian`'s, so the base method (Wanda, SparseGPT) runs on the same pass. The
    per-feature sums are kept in float64 so that ``E[x^2] - E[x]^2`` does not cancel badly."""

    def __init__(self, module: nn.Module):
        super().__init__(module)
        device = module.weight.device
        self.sum = torch.zeros(self.in_features, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros(self.in_features, dtype=torch.float64, device=device)
        self.xtx = torch.zeros(self.in_features, self.in_features, device=device)

    def _accumulate(self, x: torch.Tensor) -> None:
        self.sum += x.sum(dim=0, dtype=torch.float64)
        self.sum_sq += x.double().pow(2).sum(dim=0)
        self.xtx.addmm_(x.t(), x)

    @property
    def value(self) -> Moments:
        n = max(self.tokens, 1)
        return Moments(self.tokens, (self.sum / n).float(), (self.sum_sq / n).float(), self.xtx / n)


def layer_moments(x: torch.Tensor) -> Moments:
    """:class:`Moments` of one layer's inputs ``x`` (``(tokens, in)`` or ``(batch, seq, in)``), for inputs at hand."""
    stat = InputMoments(nn.Linear(x.shape[-1], 1, bias=False, device=x.device))
    stat.add(x.detach())
    return stat.value


def record_layer_inputs(model: nn.Module, names, windows: torch.Tensor, *, batch_size: int = 4,
                        run: Callable[[list[torch.Tensor]], None] | None = None) -> dict[str, torch.Tensor]:
    """The inputs ``(tokens, in_features)`` of the named layers while ``model`` runs over ``windows``.

    Forward hooks on the layers ``names`` (full module names) collect what each receives over the
    batches of ``batch_size`` windows; ``run(batches)``, if given, replaces the plain forward loop
    (a function under test that runs the model itself). The hooks are removed even if it raises.
    For whole-model calibration use :func:`run_blockwise`; this is for looking at a few layers."""
    store: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    handles = [model.get_submodule(name).register_forward_hook(
                   lambda _m, args, _out, name=name: store[name].append(args[0].detach().reshape(-1, args[0].shape[-1])))
               for name in names]
    try:
        batches = list(windows.split(batch_size))
        if run is None:
            with torch.no_grad():
                for batch in batches:
                    model(input_ids=batch, use_cache=False)
        else:
            run(batches)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in store.items()}


def layer_hessian(x: torch.Tensor) -> torch.Tensor:
    """``H = 2/n X^T X`` for one layer's inputs ``x`` of shape ``(tokens, in)`` or ``(batch, seq, in)``:
    what :class:`InputHessian` accumulates during calibration, for inputs already at hand (float32)."""
    stat = InputHessian(nn.Linear(x.shape[-1], 1, bias=False, device=x.device))
    stat.add(x.detach())
    return stat.value


class _BlockInputsCaptured(Exception):
    """Raised by the capture hook to stop the forward pass at the first decoder block."""


def _to(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with every floating-point tensor in it (nested in tuples, lists, dicts) cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _cast_floats(v, dtype) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_cast_floats(v, dtype) for v in value)
    return value


def _hidden_states(output: Any) -> torch.Tensor:
    """Decoder blocks return a tensor in transformers 5 and a tuple in older releases."""
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    *,
    block: int = 0,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """Run ``windows`` through the model up to decoder block ``block`` (for block 0: the embeddings
    only) on ``device``; return each batch's (hidden states, keyword arguments) entering that block.

    The forward pass is stopped at the block, so nothing above it runs; the modules below it are
    moved to ``device`` for the pass and back afterwards."""
    blocks = adapter.blocks(model)
    first_block = blocks[block]
    pre_modules = adapter.pre_block_modules(model) + list(blocks[:block])
    home = next(model.parameters()).device
    for module in pre_modules:
        module.to(device)

    captured: list[tuple[torch.Tensor, dict[str, Any]]] = []

    def hook(_module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        for key in ("cache", "past_key_values", "past_key_value", "layer_past"):
            kwargs.pop(key, None)
        kwargs["use_cache"] = False
        captured.append((hidden, kwargs))
        raise _BlockInputsCaptured

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        batches = windows.split(batch_size)
        for batch in tqdm(batches, desc=f"inputs of block {block}", unit="batch", disable=not progress):
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _BlockInputsCaptured:
                pass
    finally:
        handle.remove()
        for module in pre_modules:
            module.to(home)
    return captured


class _Replay(nn.Module):
    """Stands in for a lower block whose outputs are known: the first one returns the cached hidden
    states, the rest pass them on."""

    def __init__(self, source: dict, first: bool):
        super().__init__()
        self.source, self.first = source, first

    def forward(self, hidden_states, *args, **kwargs):
        return self.source["hidden"] if self.first else hidden_states


@contextmanager
def replaying_lower_blocks(model: nn.Module, adapter: ArchitectureAdapter, first_block: int):
    """Swap blocks ``0 .. first_block - 1`` for replays; yields a dict whose ``"hidden"`` the caller
    sets per batch to the hidden states entering block ``first_block``. The embeddings and the
    model's own position and mask computations still run, so the blocks from ``first_block`` on
    get exactly the arguments of a full forward."""
    blocks = adapter.blocks(model)
    source: dict = {"hidden": None}
    originals = [blocks[i] for i in range(first_block)]
    for i in range(first_block):
        blocks[i] = _Replay(source, first=(i == 0))
    try:
        yield source
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


@contextmanager
def recording_block_inputs(model: nn.Module, adapter: ArchitectureAdapter):
    """While active, every forward appends to the yielded list one entry per call: the hidden
    states entering each decoder block, ``[block 0, block 1, ...]`` (copies; the forward is not
    stopped, unlike :func:`capture_block_inputs`)."""
    recorded: list[list[torch.Tensor]] = []
    blocks = adapter.blocks(model)

    def hook(index):
        def record(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if index == 0:
                recorded.append([])
            recorded[-1].append(hidden.detach().clone())
        return record

    handles = [block.register_forward_pre_hook(hook(i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


def block_statistics(block: nn.Module, adapter: ArchitectureAdapter, inputs, statistic: type[InputStatistic],
                     share: bool = True) -> dict[str, InputStatistic]:
    """One pass of ``inputs`` (a list of (hidden states, keyword arguments)) through ``block`` while
    hooks accumulate ``statistic`` for each of its prunable linears; returns them by linear name.

    Linears that receive the very same input tensor in every batch (q, k and v after one norm;
    gate and up) share one statistic, accumulated once: the same numbers, bit for bit, for a
    third of SparseGPT's ``x x^T`` work. Sharing is decided from what the hooks see, not from any
    layout, and ``share=False`` accumulates every linear on its own."""
    linears = adapter.linears(block)
    stats = {name: statistic(linear) for name, linear in linears.items()}
    owner: dict[str, str] = {}  # linear -> the earlier linear whose input it got in the first batch
    seen: dict[str, torch.Tensor] = {}  # this batch's inputs, by linear
    state = {"first": True, "shared": share}

    def hook(name: str):
        def record(_module, args, _out):
            x = args[0]
            if state["shared"]:
                if state["first"]:
                    same = next((other for other, y in seen.items() if y is x), None)
                    if same is not None:
                        owner[name] = owner.get(same, same)
                elif name in owner and seen.get(owner[name]) is not x:
                    state["shared"] = False  # the inputs stopped being shared: count again, apart
                seen[name] = x
                if name in owner:
                    return
            stats[name].add(x)
        return record

    handles = [linear.register_forward_hook(hook(name)) for name, linear in linears.items()]
    try:
        for hidden, kwargs in inputs:
            seen.clear()
            block(hidden, **kwargs)
            state["first"] = False
    finally:
        for handle in handles:
            handle.remove()
        seen.clear()
    if share and not state["shared"]:
        return block_statistics(block, adapter, inputs, statistic, share=False)
    for name, source in owner.items():
        stats[name] = stats[source]
    return stats


OnBlock = Callable[[int, nn.Module, dict[str, InputStatistic]], None]
AfterBlock = Callable[[int, list[torch.Tensor], list[torch.Tensor]], None]


@torch.no_grad()
def run_blockwise(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    windows: torch.Tensor,
    on_block: OnBlock,
    *,
    statistic: type[InputStatistic] | None = SquaredInputNorm,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    progress: bool = True,
    description: str = "calibrating",
    after_block: AfterBlock | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Calibrate ``model`` block by block on ``windows`` (an ``(n, seqlen)`` tensor of token ids).

    For each decoder block ``i``, hooks accumulate a ``statistic`` (one instance per prunable linear,
    or none when ``statistic`` is ``None``) over all calibration tokens, then
    ``on_block(i, block, stats)`` is called, where ``stats`` maps the block's linear names
    (``"mlp.up_proj"``) to their statistic. The block is then re-run so its (now pruned) outputs
    feed block ``i + 1``. ``after_block(i, inputs, outputs)``, if given, then receives the block's
    per-batch input and output hidden states (methods that score blocks rather than prune them,
    e.g. :mod:`pruning_course.structured.layers`, pass ``statistic=None`` and a no-op ``on_block``,
    so each block runs once).

    ``dtype`` (e.g. ``torch.bfloat16``): the block forwards run in that dtype, on a copy of each
    block made when its turn comes; the statistics still accumulate in float32 and ``on_block``
    gets the model's own (float32) block, so the pruning math and the pruned weights stay float32.
    The copy then takes the pruned weights for the pass that feeds the next block. Faster on CPUs
    with bfloat16 matrix units, at the price of slightly different statistics (the masks agree
    with a float32 run on most but not all weights: ``benchmarks/engine_speed.py`` measures how many).
    Neither paper's reference code does this: both calibrate in the model's own dtype (float16 on GPU).
    """
    if windows.dim() != 2:
        raise InputError(f"calibration windows must be an (n, seqlen) tensor of token ids, got shape {tuple(windows.shape)}")
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    was_training = model.training
    model.eval()

    try:
        inputs = capture_block_inputs(model, adapter, windows, batch_size=batch_size, device=device)
        if dtype is not None:
            inputs = [(_cast_floats(hidden, dtype), _cast_floats(kwargs, dtype)) for hidden, kwargs in inputs]
        blocks = adapter.blocks(model)
        for index, block in enumerate(tqdm(blocks, desc=description, unit="block", disable=not progress)):
            block.to(device)
            try:
                runner = block if dtype is None else copy.deepcopy(block).to(dtype)
                stats = {} if statistic is None else block_statistics(runner, adapter, inputs, statistic)

                on_block(index, block, stats)
                del stats
                if runner is not block:
                    runner.load_state_dict(block.state_dict())  # the pruned weights, cast

                outputs = [(_hidden_states(runner(hidden, **kwargs)), kwargs) for hidden, kwargs in inputs]
                del runner
                if after_block is not None:
                    after_block(index, [hidden for hidden, _ in inputs], [hidden for hidden, _ in outputs])
                inputs = outputs
            finally:  # also when on_block raises: the block goes home, the model keeps its mode
                block.to(home)
    finally:
        model.train(was_training)
