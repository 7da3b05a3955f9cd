"""What grading reports: the course-wide constants, :class:`GradingError`, the result types of
:func:`~pruning_course.grading.grade` and :func:`~pruning_course.grading.validate`, and the two
text helpers they format with (``as_number``, ``shorten``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

#: Default per-cell timeout (seconds) when grading; notebooks run in quick mode then.
DEFAULT_TIMEOUT = 300
COURSE_ID = "pruning-course"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "autograder" / "nbgrader_config.py"

#: Student ids used by :func:`validate` for the two reference submissions.
SOLUTION_STUDENT = "reference-solution"
RELEASE_STUDENT = "unmodified-student-version"

STATUSES = ("error", "invalid", "tampering", "reference_answer", "missing", "kernel_died", "timeout",
            "cells_restored", "graded")
CSV_FIELDS = ("student", "assignment", "notebook", "score", "max_score", "status", "reason")


class GradingError(RuntimeError):
    """The grading machinery cannot run at all (bad course layout, nbgrader failure on the sources)."""


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class NotebookGrade:
    """Grade of one submitted notebook (one row of ``grades.csv``)."""

    student: str
    assignment: str
    notebook: str
    score: float
    max_score: float
    status: str
    reason: str
    feedback: Path | None = None
    submitted: str = ""  # the file it came from, relative to the submissions root

    def row(self) -> dict:
        return {"student": self.student, "assignment": self.assignment, "notebook": self.notebook,
                "score": as_number(self.score), "max_score": as_number(self.max_score),
                "status": self.status, "reason": self.reason}


@dataclass
class GradeReport:
    """What :func:`grade` did: this run's grades, plus where the cumulative outputs are."""

    out_dir: Path
    csv_path: Path
    grades: list[NotebookGrade] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    seconds: float = 0.0

    def find(self, student: str, notebook: str) -> NotebookGrade:
        for g in self.grades:
            if g.student == student and g.notebook == notebook:
                return g
        raise KeyError((student, notebook))

    def __str__(self) -> str:
        lines = [f"graded {len(self.grades)} notebook(s) in {self.seconds:.0f} s -> {self.csv_path}"]
        for g in self.grades:
            lines.append(f"  {g.student:<24} {g.notebook:<28} {as_number(g.score):>6} / {as_number(g.max_score):<6} "
                         f"{g.status:<14} {g.reason}")
        for name, why in self.skipped:
            lines.append(f"  skipped {name}: {why}")
        return "\n".join(lines)


@dataclass
class CellCheck:
    grade_id: str
    points: float
    solution_score: float | None
    release_score: float | None
    message: str = ""


@dataclass
class NotebookValidation:
    assignment: str
    notebook: str
    max_score: float = 0.0
    solution_score: float = 0.0
    release_score: float = 0.0
    manual_points: float = 0.0  # points of cells an instructor grades by hand (nbgrader's formgrader); not in the scores
    cells: list[CellCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class ValidationReport:
    """Result of :func:`validate`: per notebook, and the student versions that are out of date."""

    notebooks: list[NotebookValidation] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def problems(self) -> list[str]:
        out = [f"{v.assignment}/{v.notebook}: {p}" for v in self.notebooks for p in v.problems]
        out += [f"{name}: student version differs from what `generate` produces now" for name in self.drift]
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        lines = []
        for v in self.notebooks:
            mark = "ok  " if v.ok else "FAIL"
            manual = f" (+{as_number(v.manual_points)} graded by hand)" if v.manual_points else ""
            lines.append(f"{mark} {v.assignment}/{v.notebook}: solution {as_number(v.solution_score)}/{as_number(v.max_score)}, "
                         f"unmodified student version {as_number(v.release_score)}/{as_number(v.max_score)}{manual}")
            lines += [f"     problem: {p}" for p in v.problems]
            lines += [f"     warning: {w}" for w in v.warnings]
        for name in self.drift:
            lines.append(f"FAIL {name}: out of date, run `pruning-course generate`")
        lines.append(("all notebooks valid" if self.ok else f"{len(self.problems)} problem(s)")
                     + f" ({self.seconds:.0f} s)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def as_number(x) -> str:
    if x is None or x == "":
        return ""
    x = float(x)
    return str(int(x)) if x.is_integer() else f"{x:.4g}"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def shorten(text: str, limit: int = 240) -> str:
    text = " ".join(_ANSI.sub("", str(text)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
