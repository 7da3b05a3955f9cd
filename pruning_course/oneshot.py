"""What a one-shot pruning method is, and the one driver that applies any of them to a model.

A method supplies only two things (as in llm-compressor's modifiers, and the Wanda/SparseGPT
reference code's ``prune_*`` loops, which differ only there):

* ``statistic``: what the calibration engine accumulates over the calibration tokens for each
  linear layer (:class:`~pruning_course.calibration.SquaredInputNorm` for Wanda,
  :class:`~pruning_course.calibration.InputHessian` for SparseGPT), or ``None`` for a method
  that needs no data (magnitude);
* ``prune_layer(weight, statistic, sparsity, nm, **options) -> (pruned_weight, keep_mask)``: the
  paper's per-layer step on one ``(out, in)`` matrix, a pure tensor function.

:meth:`OneShotMethod.prune` is the driver: block by block (:func:`~pruning_course.calibration.run_blockwise`,
so each block is calibrated on the outputs of the already pruned blocks before it, as in both
papers), every prunable linear gets its block's sparsity and its pruned weight. Adding a method
is one :class:`OneShotMethod` and one entry in :data:`pruning_course.methods.REGISTRY`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import InputError
from .architectures import ArchitectureAdapter, set_weight_matrix, weight_matrix
from .calibration import InputStatistic, run_blockwise
from .schedules import BlockSparsity, block_sparsities

# (weight (out, in), statistic value or None, sparsity or None, (n, m) or None, **options) -> (pruned weight, keep-mask)
LayerStep = Callable[..., "tuple[torch.Tensor, torch.Tensor]"]


def for_each_linear(model: nn.Module, adapter: ArchitectureAdapter, step, *, statistic: type[InputStatistic] | None = None,
                    windows: torch.Tensor | None = None, batch_size: int = 8, device=None, progress: bool = True,
                    description: str = "calibrating", calib_dtype: torch.dtype | None = None) -> None:
    """Call ``step(block_index, full_name, linear, statistic)`` for every prunable linear, in block order.

    The skeleton every one-shot method and GPTQ share: with a ``statistic`` class, block by block on
    the calibration engine (:func:`~pruning_course.calibration.run_blockwise`; the statistic passed
    is the accumulated one, and block ``i`` sees the outputs of the already changed blocks before
    it); without one, directly (``statistic`` is then None)."""
    def on_block(index: int, block: nn.Module, stats: dict[str, InputStatistic]) -> None:
        for name, linear in adapter.linears(block).items():
            step(index, f"{adapter.blocks_path}.{index}.{name}", linear, stats.get(name))

    if statistic is None:
        for index, block in enumerate(adapter.blocks(model)):
            on_block(index, block, {})
        return
    run_blockwise(model, adapter, windows, on_block, statistic=statistic, batch_size=batch_size, device=device,
                  progress=progress, description=description, dtype=calib_dtype)


@dataclass(frozen=True)
class OneShotMethod:
    """A one-shot pruning method: its calibration statistic and its per-layer step.

    ``options`` names the keyword options ``prune_layer`` accepts (SparseGPT's ``blocksize`` and
    ``percdamp``); ``citation`` names the paper, for readers of the registry."""

    name: str
    statistic: type[InputStatistic] | None
    prune_layer: LayerStep
    options: tuple[str, ...] = ()
    citation: str = ""

    @property
    def needs_data(self) -> bool:
        return self.statistic is not None

    def check_options(self, options: dict) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            accepted = ", ".join(self.options) or "none"
            raise InputError(f"{self.name} takes no option {', '.join(map(repr, unknown))} (its options: {accepted})")

    def pruned_layer(self, weight: torch.Tensor, statistic: InputStatistic | None, sparsity, nm, **options):
        """``prune_layer`` on one matrix, given the accumulated statistic object (or None)."""
        return self.prune_layer(weight, None if statistic is None else statistic.value, sparsity, nm, **options)

    @torch.no_grad()
    def prune(
        self,
        model: nn.Module,
        adapter: ArchitectureAdapter,
        sparsity: BlockSparsity = 0.5,
        pattern=None,
        windows: torch.Tensor | None = None,
        *,
        batch_size: int = 8,
        device=None,
        progress: bool = True,
        calib_dtype: torch.dtype | None = None,
        **options,
    ) -> dict[str, torch.Tensor]:
        """Prune every prunable linear of ``model`` in place; return the keep-masks by full linear name.

        ``sparsity`` is one float, or one per decoder block (a sequence or a callable of the block
        index, see :mod:`pruning_course.schedules`), e.g. OWL's non-uniform schedule; ``pattern``
        an N:M pattern such as ``"2:4"``. A calibrated method needs ``windows``, an ``(n, seqlen)``
        tensor of token ids (:func:`pruning_course.data.calibration_windows`); a data-free one
        ignores ``windows``, ``batch_size``, ``device`` and ``calib_dtype`` (the dtype the calibration
        forwards run in, e.g. ``torch.bfloat16``; statistics and pruning stay float32: see
        :func:`~pruning_course.calibration.run_blockwise`)."""
        self.check_options(options)
        targets, nm = block_sparsities(sparsity, len(adapter.blocks(model)), pattern)
        masks: dict[str, torch.Tensor] = {}

        def prune_layer(index: int, name: str, linear: nn.Module, statistic: InputStatistic | None) -> None:
            pruned, mask = self.pruned_layer(weight_matrix(linear), statistic, targets[index], nm, **options)
            set_weight_matrix(linear, pruned)
            masks[name] = mask.cpu()

        if self.needs_data and windows is None:
            raise InputError(f"{self.name} is calibrated: pass calibration windows (data.calibration_windows)")
        for_each_linear(model, adapter, prune_layer, statistic=self.statistic, windows=windows, batch_size=batch_size,
                        device=device, progress=progress, description=self.name, calib_dtype=calib_dtype)
        return masks
