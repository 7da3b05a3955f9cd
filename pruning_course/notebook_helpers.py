"""What a course notebook does after an exercise the learner has not finished yet.

The experiments after an exercise call the learner's function (the hook of notebook 03 feeds every
later layer error). With the exercise still the released stub (``raise NotImplementedError()``),
every one of those cells would fail, sections that use only package code included. A locked cell
after the exercise's graded test therefore rebinds the name::

    collect_act_sq_norms = use_reference_if_unfinished(collect_act_sq_norms, reference, "collect_act_sq_norms")

and the rest of the notebook runs on the course's reference until the learner's function works;
from then on (re-run the exercise's cell, then this one) their own function is what runs.

The graded test cell comes *before* the rebinding, so grading always scores the learner's own
function; the rebinding lives in a locked cell, which the grader's reading of the code for
reference answers (``grading.tampering.reference_answers``) does not count as the learner's answer.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
import time
from collections.abc import Callable

__all__ = ["NotebookRuntime", "is_unfinished", "learner_finished", "use_reference_if_unfinished", "value_scale"]


def is_unfinished(fn: Callable) -> bool:
    """True when ``fn`` is still the released stub: its body (docstring aside) only raises
    ``NotImplementedError``, or a ``# YOUR CODE HERE`` placeholder is all it holds."""
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return False  # no source (a builtin, a lambda in an odd place): only a call can tell
    definition = next((node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if definition is None:
        return False
    body = [s for s in definition.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return not body or (len(body) == 1 and isinstance(body[0], ast.Raise) and _raises_not_implemented(body[0]))


def use_reference_if_unfinished(learner: Callable | None, reference: Callable, name: str) -> Callable:
    """A function that calls the learner's ``learner`` and, while it is unfinished, ``reference``.

    * ``learner`` is still the stub (:func:`is_unfinished`), or ``None``: one line says so now and
      every call goes to ``reference``;
    * otherwise each call runs the learner's function. If it raises ``NotImplementedError``, or
      another exception on arguments the reference handles, one line says so and this call and
      every later one go to ``reference`` (one implementation for the whole notebook, not a mix).
      An exception the reference raises as well (arguments that are bad for any implementation)
      is the learner's own and reaches the caller unchanged.

    Re-running the cell that calls this wraps the learner's function again, never a wrapper."""
    learner = getattr(learner, "learner_function", learner)
    state = {"reference": learner is None or is_unfinished(learner)}
    if state["reference"]:
        print(f"your `{name}` is not finished: the rest of this notebook uses the course's reference")

    @functools.wraps(learner if learner is not None else reference)
    def dispatch(*args, **kwargs):
        if not state["reference"]:
            try:
                return learner(*args, **kwargs)
            except NotImplementedError:
                print(f"your `{name}` is not finished: the rest of this notebook uses the course's reference")
            except Exception as error:
                try:
                    result = reference(*args, **kwargs)
                except Exception:
                    raise error from None
                first_line = (str(error).splitlines() or [""])[0][:120]
                print(f"your `{name}` raised {type(error).__name__}: {first_line}\n  the rest of this notebook uses the "
                      f"course's reference; fix `{name}`, re-run its cell and the cells after it")
                state["reference"] = True
                return result
            state["reference"] = True
        return reference(*args, **kwargs)

    dispatch.learner_function = learner
    dispatch.uses_reference = lambda: state["reference"]
    return dispatch


def _raises_not_implemented(node: ast.Raise) -> bool:
    exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


def learner_finished(learner: Callable, name: str, skipped: str = "the comparison with the package") -> bool:
    """For a cell that only compares the learner's function with the package: False, with one line
    saying what is skipped, while ``learner`` is still the released stub; True otherwise."""
    if is_unfinished(getattr(learner, "learner_function", learner)):
        print(f"your `{name}` is not finished: {skipped} is skipped")
        return False
    return True


def value_scale(values, spread: float = 10.0) -> str:
    """``"log"`` when the positive ``values`` span at least a factor ``spread`` (perplexities from 20 to
    1,600), ``"linear"`` otherwise: on a log axis near-equal values (376, 377, 378 from quick mode's
    random model) look identical, and their differences are what the plot is for."""
    values = [float(v) for v in values]
    if not values or min(values) <= 0:
        return "linear"
    return "log" if max(values) / min(values) >= spread else "linear"


class NotebookRuntime:
    """Wall time since the setup cell: every notebook's last cell prints it (the README's table of
    runtimes is measured by ``benchmarks/notebook_runtimes.py``, which runs the notebooks the same way)."""

    def __init__(self):
        import torch

        from .settings import quick_mode

        self.start = time.perf_counter()
        self.mode = "quick mode, tiny model" if quick_mode() else "full mode, SmolLM2-135M"
        self.threads = torch.get_num_threads()

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def __str__(self) -> str:
        minutes, seconds = divmod(round(self.seconds()), 60)
        return (f"notebook runtime: {minutes} min {seconds:02d} s from the setup cell to here "
                f"({self.mode}, {self.threads} torch threads)")
