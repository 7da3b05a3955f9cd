"""Graded checks called by the notebooks' test cells, one module per notebook.

Each check calls the learner's function on seeded random inputs, compares it with the reference
implementation in this package, and on failure raises :class:`CheckFailed` (an ``AssertionError``,
which is what nbgrader scores as a failed test) whose message names the likely mistake, e.g.
"row 3 keeps 62% of its weights: Wanda ranks within each output row". On success a check prints
one line (to stdout: nbgrader zeroes a test cell that writes to stderr) and returns ``None``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch


class CheckFailed(AssertionError):
    """A graded check did not pass; the message says why and what to look at."""


def fail(message: str) -> None:
    raise CheckFailed(message)


def diagnose(variants, matches, where: str | None = None, describe=None) -> None:
    """Fail with the message of the first known mistake that the learner's answer matches.

    ``variants``: ``(wrong answer, message)`` pairs, the classic mistakes of an exercise, each
    computed the wrong way on purpose; ``matches(wrong_answer)``: whether the learner's answer is
    that one. The failure reads ``"{where}: {message}."`` (or ``describe(message)``). Returns
    when no known mistake matches, so the caller can report the first difference instead."""
    for variant, message in variants:
        if matches(variant):
            fail(describe(message) if describe else (f"{where}: {message}." if where else f"{message}."))


def largest_difference(value: torch.Tensor, reference: torch.Tensor) -> tuple[tuple[int, ...], float, float]:
    """Where the learner's tensor differs most from the reference: ``(index, learner's value, reference value)``."""
    diff = (value.detach().double() - reference.detach().double()).abs()
    index = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)) if diff.dim() else ()
    return index, float(value[index]), float(reference[index])


def describe_largest_difference(value: torch.Tensor, reference: torch.Tensor) -> str:
    """``"at [2, 5]: you have 0.31, expected 0.29"``: the learner's worst entry, for a failure message."""
    index, got, want = largest_difference(value, reference)
    where = f"at {list(index)}" if index else "as a scalar"
    return f"{where}: you have {got:.6g}, expected {want:.6g}"


def passed(message: str) -> None:
    print(f"\u2713 {message}")


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def call(fn: Callable, *args: Any, name: str | None = None, **kwargs: Any) -> Any:
    """Call the learner's ``fn``; turn "not implemented yet" and crashes into clear failures."""
    name = name or getattr(fn, "__name__", "your function")
    if not callable(fn):
        fail(f"expected a function for {name}, got {type(fn).__name__}: pass the function itself, not its result")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        fail(f"{name} is not implemented yet: replace `raise NotImplementedError()` with your code")
    except CheckFailed:
        raise
    except Exception as error:  # the learner's code crashed: say where, do not crash the grader
        fail(f"{name} raised {type(error).__name__}: {error}")


def call_expecting_value_error(fn: Callable, *args: Any, name: str, what: str, hint: str, **kwargs: Any) -> tuple[bool, Any]:
    """Call the learner's ``fn`` on input it must reject: ``(True, None)`` if it raised ValueError,
    ``(False, result)`` if it returned. "Not implemented yet" fails as in :func:`call`; any other
    exception fails with ``f"{what} raised <type>: <error>{hint}"``."""
    try:
        return False, fn(*args, **kwargs)
    except ValueError:
        return True, None
    except NotImplementedError:
        fail(f"{name} is not implemented yet: replace `raise NotImplementedError()` with your code")
    except Exception as error:  # noqa: BLE001 - the learner's code crashed
        fail(f"{what} raised {type(error).__name__}: {error}{hint}")


def expect_tensor(value: Any, shape: tuple[int, ...], what: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Check type, shape (and dtype) of a returned tensor with a message naming ``what``."""
    if not isinstance(value, torch.Tensor):
        fail(f"{what} should be a torch.Tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape):
        fail(f"{what} should have shape {tuple(shape)}, got {tuple(value.shape)}")
    if dtype is not None and value.dtype != dtype:
        hint = " (compare scores with a threshold, or build it with torch.zeros(..., dtype=torch.bool))" if dtype == torch.bool else ""
        fail(f"{what} should have dtype {dtype}, got {value.dtype}{hint}")
    return value


def expect_keep_mask(mask: Any, shape: tuple[int, ...], what: str = "the mask") -> torch.Tensor:
    """A keep-mask: True (or 1) where the weight stays, as in ``torch.nn.utils.prune``; returned as bool."""
    expect_tensor(mask, shape, what)
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            fail(f"{what} should hold only True/False (or 0/1), got values such as {mask.flatten()[:4].tolist()}")
        mask = mask.bool()
    return mask


def expect_number(value: Any, what: str, meaning: str | None = None, finite: bool = True, kind: str = "a float") -> float:
    """The learner's returned number as a float: an int, a float or a one-element tensor.

    ``what`` names the call in the message (``"case 2: csr_nbytes"``), ``meaning`` says what the
    number is (``"the bytes of the CSR tensor"``), ``kind`` what type is asked for; ``finite=False``
    lets NaN and inf through for the caller to diagnose."""
    meaning = f" ({meaning})" if meaning else ""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            fail(f"{what} should return one number{meaning} (a float or a 0-d tensor), got a tensor of shape "
                 f"{tuple(value.shape)}")
        value = value.detach().item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(f"{what} should return {kind}{meaning}, got {type(value).__name__} {value!r}")
    value = float(value)
    if finite and not math.isfinite(value):
        fail(f"{what} returned {value}; expected a finite number{meaning}")
    return value


def fmt_values(values: torch.Tensor, n: int = 4) -> str:
    """The first ``n`` entries of a tensor, for messages: ``[0.1, 2, ...]``."""
    values = values.detach().flatten()
    return "[" + ", ".join(f"{float(v):.4g}" for v in values[:n]) + (", ...]" if values.numel() > n else "]")


def close_to(value: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-4) -> bool:
    """``value`` equals ``reference`` up to ``rtol`` of the reference's largest entry (and is finite)."""
    value = value.detach()
    if tuple(value.shape) != tuple(reference.shape) or not bool(torch.isfinite(value).all()):
        return False
    scale = float(reference.detach().abs().max()) or 1.0
    return bool(((value.double() - reference.double()).abs() <= rtol * scale).all())


def scale_factor(value: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-4) -> float | None:
    """The non-zero ``c`` with ``value == c * reference`` (to ``rtol``), or ``None``.

    Recognises answers that are right up to a constant: a missing ``2/n``, a mean instead of a sum.
    """
    value, reference = value.detach().double().flatten(), reference.detach().double().flatten()
    if value.shape != reference.shape or not bool(torch.isfinite(value).all()):
        return None
    denom = float((reference * reference).sum())
    if denom == 0.0:
        return None
    c = float((value * reference).sum()) / denom
    return c if c != 0.0 and close_to(value, c * reference, rtol) else None


def keeps_rng(check):
    """Decorator: run a check without disturbing the learner's global RNG (checks build seeded models inside)."""
    import functools

    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return check(*args, **kwargs)

    return wrapper
