"""The registry of one-shot pruning methods, and the one entry point that prunes with any of them.

The CLI (``prune``, ``quantize --prune``, ``compare``), OWL, sensitivity analysis, the benchmarks
and the notebooks all dispatch through :data:`REGISTRY`, so a new method is one
:class:`~pruning_course.oneshot.OneShotMethod` (its statistic and per-layer step) and one
:func:`register` call.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import InputError
from .architectures import ArchitectureAdapter, weight_matrix
from .masks import resolve_target
from .oneshot import OneShotMethod
from .schedules import BlockSparsity
from .unstructured.dsnot import DSNOT
from .unstructured.magnitude import MAGNITUDE
from .unstructured.ria import RIA
from .unstructured.sparsegpt import SPARSEGPT
from .unstructured.wanda import WANDA

REGISTRY: dict[str, OneShotMethod] = {method.name: method for method in (MAGNITUDE, WANDA, SPARSEGPT, RIA, DSNOT)}


def register(method: OneShotMethod) -> OneShotMethod:
    """Add a one-shot method; from then on the CLI, OWL, sensitivity analysis and compare accept its name."""
    if method.name in REGISTRY and REGISTRY[method.name] is not method:
        raise InputError(f"a one-shot method named {method.name!r} is already registered")
    REGISTRY[method.name] = method
    return method


def get_method(name: str, purpose: str | None = None) -> OneShotMethod:
    """The registered method ``name``; ``purpose`` ("OWL") goes into the error for an unknown name."""
    if name not in REGISTRY:
        what = f"method {name!r} for {purpose}" if purpose else f"pruning method {name!r}"
        raise InputError(f"unknown {what}; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def check_method(name: str) -> str:
    return get_method(name).name


def needs_calibration(name: str) -> bool:
    return get_method(name).needs_data


def check_pattern_fits(model: nn.Module, adapter: ArchitectureAdapter, pattern) -> None:
    """Fail before any weight changes if an N:M pattern does not divide some layer's input width."""
    _, nm = resolve_target(None if pattern else 0.5, pattern)
    if nm is None:
        return
    misfits = {name: weight_matrix(m).shape[1] for name, m in adapter.named_linears(model).items()
               if weight_matrix(m).shape[1] % nm[1]}
    if misfits:
        name, width = next(iter(misfits.items()))
        raise InputError(
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
    *,
    batch_size: int = 8,
    device=None,
    progress: bool = True,
    calib_dtype: torch.dtype | None = None,
    **options,
) -> dict[str, torch.Tensor]:
    """Prune ``model`` in place with the registered ``method``; return the keep-masks by full linear name.

    Calibrated methods need ``windows``, an ``(n, seqlen)`` tensor of calibration token ids
    (see :func:`pruning_course.data.calibration_windows`). ``options`` are the method's own
    (``scope`` for magnitude, ``blocksize``/``percdamp`` for SparseGPT); ``calib_dtype`` the dtype
    the calibration forwards run in (default: the model's; statistics and pruning stay float32). ``sparsity`` may also be
    one value per decoder block (a sequence or a callable of the block index, see
    :mod:`pruning_course.schedules`), e.g. from :func:`pruning_course.unstructured.owl.owl_sparsities`.
    Every input is checked before any weight changes (the options and windows by the method's own
    :meth:`~pruning_course.oneshot.OneShotMethod.prune`).
    """
    spec = get_method(method)
    check_pattern_fits(model, adapter, pattern)
    return spec.prune(model, adapter, sparsity, pattern, windows, batch_size=batch_size, device=device,
                      progress=progress, calib_dtype=calib_dtype, **options)
