"""Wrong learner implementations for every graded check: the slips of someone who read the paper quickly.

One module per notebook (``nb01`` ... ``nb12``); each defines ``REFERENCES`` (check -> the notebook's
solution, which must pass) and ``WRONG`` (a list of :class:`Wrong`: the check, a label, the learner's
function and a regular expression the failure message must match to NAME that mistake).
:func:`verdict` runs one wrong answer; ``python tests/wrong_answers/table.py`` prints the per-check table.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from dataclasses import dataclass
from typing import Callable

from pruning_course.checks import CheckFailed

MODULES = ("nb01", "nb02", "nb03", "nb04", "nb05", "nb06", "nb07", "nb08", "nb09", "nb10", "nb11", "nb12")


@dataclass(frozen=True)
class Wrong:
    check: Callable
    label: str
    fn: Callable
    hint: str  # a case-insensitive regex on the failure message: the message names this mistake

    @property
    def id(self) -> str:
        return f"{self.check.__name__}: {self.label}"


@dataclass
class Verdict:
    rejected: bool
    named: bool
    misleading: bool
    message: str


def load():
    """``(references, wrong answers)`` of every notebook module."""
    references, wrong = {}, []
    for name in MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        references.update(module.REFERENCES)
        wrong.extend(module.WRONG)
    return references, wrong


def run_check(check: Callable, fn: Callable) -> str | None:
    """The check's failure message for ``fn``, or ``None`` if it passes (its printout swallowed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            check(fn)
        except CheckFailed as error:
            return str(error)
    return None


def verdict(case: Wrong, siblings: list[Wrong]) -> Verdict:
    """Rejected? Named (its own hint matches)? Misleading (not named, but another mistake's hint of
    the same check matches: the message blames a mistake the learner did not make)?"""
    message = run_check(case.check, case.fn)
    if message is None:
        return Verdict(False, False, False, "")
    named = bool(re.search(case.hint, message, re.IGNORECASE))
    others = {w.hint for w in siblings if w.check is case.check and w.hint != case.hint}
    misleading = not named and any(re.search(h, message, re.IGNORECASE) for h in others)
    return Verdict(True, named, misleading, message)


def not_implemented(*_args, **_kwargs):
    raise NotImplementedError()


def crashes(error: type[Exception] = RuntimeError, text: str = "mat1 and mat2 shapes cannot be multiplied (4x6 and 7x4)"):
    """A learner's function that crashes inside torch (a shape mismatch)."""
    def learner(*_args, **_kwargs):
        raise error(text)
    return learner


#: what the shared crash message must say: the error, the inputs the check passed
CRASH = r"raised RuntimeError(.|\n)*The check called \w+ with"


def forgot_return(reference: Callable) -> Callable:
    """The learner computed the answer and forgot ``return``."""
    def learner(*args, **kwargs):
        reference(*args, **kwargs)
    return learner
