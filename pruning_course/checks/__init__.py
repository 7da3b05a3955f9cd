"""Graded checks called by the notebooks' test cells, one module per notebook.

Each check calls the learner's function on seeded random inputs, compares it with the reference
implementation in this package, and on failure raises :class:`CheckFailed` (an ``AssertionError``,
which is what nbgrader scores as a failed test) whose message names the likely mistake, e.g.
"row 3 keeps 62% of its weights: Wanda ranks within each output row". On success a check prints
one line (to stdout: nbgrader zeroes a test cell that writes to stderr) and returns ``None``.

What the student sees: every check is wrapped by :func:`graded_check`, so its frames are hidden
from IPython's traceback (``__tracebackhide__``), it leaves the global torch RNG as it found it,
and an error the check could not foresee still ends as a :class:`CheckFailed`. The first line of
every message is a complete sentence of at most :data:`HEADLINE_CHARS` characters (``nbgrader
validate`` shows only about 90); the detail follows on the next lines.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
import traceback
from collections.abc import Callable
from typing import Any

import torch

#: the longest first line of a failure message: nbgrader validate cuts at about 90 characters,
#: after its own "CheckFailed: " prefix
HEADLINE_CHARS = 80
_WHERE = re.compile(r"^(?:on|with|for|case|in|at|after|when|from|model\.|the tiny|a tiny|round|block|layer)\b[^;]*?: ",
                    re.IGNORECASE)
_NUMBERS_FIRST = re.compile(r"^(?:(?:you return|your (?:value|ratio|distance|result)(?: is)?)[^:;]*?expected [^:;]*?"
                            r"|your value \S+): ",
                            re.IGNORECASE)
#: words that make a leading "...: " clause a diagnosis rather than the context of one
_DIAGNOSIS = re.compile(r"\b(you|your|should|must|not|no|missing|wrong|instead|only|included|raised|returned)\b",
                        re.IGNORECASE)
_CLAUSE_END = re.compile(r"(?:(?<!e\.g)(?<!i\.e)[.;:!?](?=\s)| \(|, (?=but|so|not|then|which|because|while|expected|got|and))")


def headline(message: str) -> str:
    """``message`` with a first line short enough for ``nbgrader validate``, complete on its own.

    A first line longer than :data:`HEADLINE_CHARS` becomes: the diagnosis's leading clause
    (without the "on a 6x10 weight:" where-prefix), then on the next lines the whole original
    text, so that no detail is lost."""
    __tracebackhide__ = True
    first, newline, rest = message.partition("\n")
    if len(first) <= HEADLINE_CHARS:
        return message
    where = _WHERE.match(first)
    if where and _DIAGNOSIS.search(where.group()):
        where = None  # "on tiny-llama, embeddings are included: ...": the prefix is the diagnosis
    prefix, colon, after = first.partition(": ")
    if not where and colon and not _DIAGNOSIS.search(prefix) and len(after) > 20:
        where = re.match(re.escape(prefix + colon), first)  # "scores of shape (7, 13): you ...": the context
    diagnosis = first[where.end():] if where and len(first) - where.end() > 20 else first
    numbers = _NUMBERS_FIRST.match(diagnosis)
    if numbers and len(diagnosis) - numbers.end() > 20:
        diagnosis = diagnosis[numbers.end():]  # "you return 0.3, expected 0.5: <the mistake>": the mistake first
    head = diagnosis[:HEADLINE_CHARS + 1]
    cuts = [m.start() for m in _CLAUSE_END.finditer(head) if 15 <= m.start() <= HEADLINE_CHARS]
    if cuts:
        head = diagnosis[:cuts[-1]]
    else:
        head = diagnosis[:HEADLINE_CHARS - 4].rsplit(" ", 1)[0] + " ..."
    head = head.rstrip(" ,;:")
    return f"{head}\n{first}{newline}{rest}"


class CheckFailed(AssertionError):
    """A graded check did not pass; the message says why and what to look at.

    The first line is a short, complete headline (see :func:`headline`); the detail follows."""

    def __init__(self, message: str = "") -> None:
        __tracebackhide__ = True
        super().__init__(headline(str(message)))


def fail(message: str) -> None:
    __tracebackhide__ = True
    raise CheckFailed(message) from None  # the verdict alone: no "during handling of ..." above it


def diagnose(variants, matches, where: str | None = None, describe=None) -> None:
    """Fail with the message of the first known mistake that the learner's answer matches.

    ``variants``: ``(wrong answer, message)`` pairs, the classic mistakes of an exercise, each
    computed the wrong way on purpose; ``matches(wrong_answer)``: whether the learner's answer is
    that one. The failure reads ``"{where}: {message}."`` (or ``describe(message)``). Returns
    when no known mistake matches, so the caller can report the first difference instead."""
    __tracebackhide__ = True
    for variant, message in variants:
        if matches(variant):
            fail(describe(message) if describe else (f"{where}: {message}." if where else f"{message}."))


def largest_difference(value: torch.Tensor, reference: torch.Tensor) -> tuple[tuple[int, ...], float, float]:
    """Where the learner's tensor differs most from the reference: ``(index, learner's value, reference value)``."""
    __tracebackhide__ = True
    diff = (value.detach().double() - reference.detach().double()).abs()
    index = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)) if diff.dim() else ()
    return index, float(value[index]), float(reference[index])


def describe_largest_difference(value: torch.Tensor, reference: torch.Tensor) -> str:
    """``"at [2, 5]: you have 0.31, expected 0.29"``: the learner's worst entry, for a failure message."""
    __tracebackhide__ = True
    index, got, want = largest_difference(value, reference)
    where = f"at {list(index)}" if index else "as a scalar"
    return f"{where}: you have {got:.6g}, expected {want:.6g}"


def passed(message: str) -> None:
    __tracebackhide__ = True
    print(f"\u2713 {message}")


def generator(seed: int) -> torch.Generator:
    __tracebackhide__ = True
    return torch.Generator().manual_seed(seed)


def describe_value(value: Any) -> str:
    """A short description of an argument or a result, for messages: ``"a float32 tensor of shape (8, 16)"``."""
    __tracebackhide__ = True
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    if isinstance(value, torch.nn.Module):
        return f"a {type(value).__name__} module"
    if isinstance(value, (list, tuple)):
        kinds = sorted({describe_value(v) for v in value[:8]})
        inner = f" of {kinds[0]}" if len(kinds) == 1 else ""
        return f"a {type(value).__name__} of {len(value)}{inner or ' items'}".replace(" of 1 a ", " of 1: a ")
    if isinstance(value, dict):
        return f"a dict with keys {list(value)[:6]}"
    if isinstance(value, (bool, numbers.Number)):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, str):
        return f"str {value[:40]!r}" + ("..." if len(value) > 40 else "")
    return f"a {type(value).__name__}"


def _learner_line(error: BaseException) -> str:
    """``"line 4 of your code: return x @ w"``: the innermost frame of the learner's code in the error's traceback."""
    __tracebackhide__ = True
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not re.search(r"[/\\](site-packages|torch|pruning_course)[/\\]|^<frozen", f.filename)]
    if not frames:
        return ""
    frame = frames[-1]
    return f"\nIt happened at line {frame.lineno} of your code: {(frame.line or '').strip()}"


def crash_message(name: str, error: BaseException, args: tuple = (), kwargs: dict | None = None,
                  returns: str | None = None) -> str:
    """The failure for a learner's function that raised: its error, where, what it was given and must return."""
    __tracebackhide__ = True
    kind = type(error).__name__
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    head = f"{name} raised {kind}: {text}"
    if len(head) > HEADLINE_CHARS:
        head = f"{name} raised {kind} on the check's input (details below)"
    given = [describe_value(a) for a in args] + [f"{k}={describe_value(v)}" for k, v in (kwargs or {}).items()]
    lines = [head, f"{name} raised {kind}: {error}"]
    lines.append(_learner_line(error).lstrip("\n")) if _learner_line(error) else None
    if given:
        lines.append(f"The check called {name} with: {'; '.join(given)}.")
    if returns:
        lines.append(f"{name} must return {returns}.")
    return "\n".join(line for line in lines if line)


def call(fn: Callable, *args: Any, name: str | None = None, returns: str | None = None, **kwargs: Any) -> Any:
    """Call the learner's ``fn``; turn "not implemented yet" and crashes into clear failures.

    A crash says what the check passed (types and shapes) and, with ``returns``, what ``fn`` must
    return; the learner's own error follows, with the line of their code where it happened."""
    __tracebackhide__ = True
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
        raise CheckFailed(crash_message(name, error, args, kwargs, returns)) from None


def in_another_order(fn: Callable, args: tuple, order: tuple[int, ...], matches: Callable[[Any], bool]) -> bool:
    """Whether ``fn`` gives the right answer when its arguments come in ``order`` (indices into
    ``args``): the learner wrote the signature of another notebook's exercise. Never raises."""
    __tracebackhide__ = True
    import warnings

    try:
        with warnings.catch_warnings():  # nothing on stderr: nbgrader zeroes a test cell that writes there
            warnings.simplefilter("ignore")
            return bool(matches(fn(*(args[i] for i in order))))
    except Exception:  # noqa: BLE001 - in that order too it is wrong
        return False


def call_expecting_value_error(fn: Callable, *args: Any, name: str, what: str, hint: str, **kwargs: Any) -> tuple[bool, Any]:
    """Call the learner's ``fn`` on input it must reject: ``(True, None)`` if it raised ValueError,
    ``(False, result)`` if it returned. "Not implemented yet" fails as in :func:`call`; any other
    exception fails with ``f"{what} raised <type>: <error>{hint}"``."""
    __tracebackhide__ = True
    try:
        return False, fn(*args, **kwargs)
    except ValueError:
        return True, None
    except NotImplementedError:
        fail(f"{name} is not implemented yet: replace `raise NotImplementedError()` with your code")
    except Exception as error:  # noqa: BLE001 - the learner's code crashed
        raise CheckFailed(f"{what} raised {type(error).__name__}, not ValueError\n"
                          f"{what} raised {type(error).__name__}: {error}{hint}") from None


def expect_tensor(value: Any, shape: tuple[int, ...], what: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Check type, shape (and dtype) of a returned tensor with a message naming ``what``."""
    __tracebackhide__ = True
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
    __tracebackhide__ = True
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
    __tracebackhide__ = True
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
    __tracebackhide__ = True
    values = values.detach().flatten()
    return "[" + ", ".join(f"{float(v):.4g}" for v in values[:n]) + (", ...]" if values.numel() > n else "]")


def close_to(value: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-4) -> bool:
    """``value`` equals ``reference`` up to ``rtol`` of the reference's largest entry (and is finite)."""
    __tracebackhide__ = True
    value = value.detach()
    if tuple(value.shape) != tuple(reference.shape) or not bool(torch.isfinite(value).all()):
        return False
    scale = float(reference.detach().abs().max()) or 1.0
    return bool(((value.double() - reference.double()).abs() <= rtol * scale).all())


def scale_factor(value: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-4) -> float | None:
    """The non-zero ``c`` with ``value == c * reference`` (to ``rtol``), or ``None``.

    Recognises answers that are right up to a constant: a missing ``2/n``, a mean instead of a sum.
    """
    __tracebackhide__ = True
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
    __tracebackhide__ = True

    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        __tracebackhide__ = True
        with torch.random.fork_rng(devices=[]):
            return check(*args, **kwargs)

    return wrapper


def graded_check(check):
    """Decorator of every ``check_*``: what :func:`keeps_rng` does, and no raw error reaches the student.

    An exception that is not a :class:`CheckFailed` -- the check's own code choking on an answer of
    a shape or type it did not foresee -- becomes one that says so; the learner's timeouts and a
    dead kernel (``BaseException`` s of :mod:`pruning_course.grading.remote`) pass through."""
    __tracebackhide__ = True
    rng_kept = keeps_rng(check)

    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        __tracebackhide__ = True
        try:
            return rng_kept(*args, **kwargs)
        except CheckFailed as failure:
            if re.search(r"\bNoneType\b|\bgot None\b|returned None instead", str(failure)):
                raise CheckFailed(f"{failure}\nYour function returned None: did you forget `return`?") from None
            raise
        except Exception as error:  # noqa: BLE001 - an answer the check did not foresee
            learner = getattr(args[0], "__name__", "your function") if args else "your function"
            raise CheckFailed(f"{check.__name__} could not use what {learner} returned\n"
                              f"{type(error).__name__}: {error}\nCompare the type, shape and dtype of your result "
                              f"with what the exercise asks for (the check's docstring: help({check.__name__})).") \
                from None

    return wrapper
