"""One entry point for the one-shot methods, so the CLI, benchmarks and notebooks prune alike."""

from __future__ import annotations

import torch
from torch import nn

from .architectures import ArchitectureAdapter, weight_matrix
from .masks import resolve_target
from .schedules import BlockSparsity
from .unstructured import prune_magnitude, prune_sparsegpt, prune_wanda

METHODS = ("magnitude", "wanda", "sparsegpt")
CALIBRATED_METHODS = ("wanda", "sparsegpt")
CALIBRATION_OPTIONS = ("batch_size", "device", "progress")


def needs_calibration(method: str) -> bool:
    return check_method(method) in CALIBRATED_METHODS


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of: {', '.join(METHODS)}")
    return method


def check_pattern_fits(model: nn.Module, adapter: ArchitectureAdapter, pattern) -> None:
    """Fail before any weight changes if an N:M pattern does not divide some layer's input width."""
    _, nm = resolve_target(None if pattern else 0.5, pattern)
    if nm is None:
        return
    misfits = {name: weight_matrix(m).shape[1] for name, m in adapter.named_linears(model).items()
               if weight_matrix(m).shape[1] % nm[1]}
    if misfits:
        name, width = next(iter(misfits.items()))
        raise ValueError(
            f"the {nm[0]}:{nm[1]} pattern needs every input width to be a multiple of {nm[1]}, but {len(misfits)} "
            f"layer(s) do not (e.g. {name} has {width} inputs); choose an M that divides the widths"
        )


def prune_model(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    method: str,
    sparsity: BlockSparsity = 0.5,
    pattern=None,
    windows: torch.Tensor | None = None,
    **options,
) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place with ``method``; return the keep-masks by full linear name.

    Calibrated methods need ``windows``, an ``(n, seqlen)`` tensor of calibration token ids
    (see :func:`pruning_course.data.calibration_windows`). ``options`` go to the method's driver
    (e.g. ``scope`` for magnitude, ``blocksize``/``percdamp`` for SparseGPT, ``device``).
    ``sparsity`` may also be one value per decoder block (a sequence or a callable of the block
    index, see :mod:`pruning_course.schedules`), e.g. from :func:`pruning_course.unstructured.owl.owl_sparsities`.
    """
    check_method(method)
    check_pattern_fits(model, adapter, pattern)
    if method == "magnitude":  # needs no data: calibration options do not apply
        options = {k: v for k, v in options.items() if k not in CALIBRATION_OPTIONS}
        return prune_magnitude(model, adapter, sparsity, pattern, **options)
    if windows is None:
        raise ValueError(f"{method} is calibrated: pass calibration windows (data.calibration_windows)")
    driver = prune_wanda if method == "wanda" else prune_sparsegpt
    return driver(model, adapter, windows, sparsity, pattern, **options)
