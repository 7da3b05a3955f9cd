"""nbgrader configuration of the pruning course.

This file holds the course-wide grading policy.  It has no paths in it:
``pruning_course.grading`` (``pruning-course generate|validate|grade``) builds a
throwaway nbgrader course directory for every run, loads this file from there
with ``load_subconfig`` and then sets the course root, the gradebook location
and the per-cell timeout of that run.

To use plain ``nbgrader`` commands instead, create a course directory outside
the repository whose ``nbgrader_config.py`` reads::

    c = get_config()
    load_subconfig("/path/to/repo/autograder/nbgrader_config.py")
    c.CourseDirectory.root = "/path/to/that/course"

Policy decided here:

* Cells run with a generous timeout (``PRUNING_COURSE_CELL_TIMEOUT`` seconds;
  default 300 in quick mode, 1800 otherwise); a cell over it is interrupted,
  scored as an error, and the notebook carries on.
* A dead kernel, or one that ignores the interrupt, costs only the cells from
  there on (``CourseExecute``).
* Test cells deleted by a student are put back (``add_missing_cells``).
  ``pruning_course.grading`` restores them itself before nbgrader sees the
  submission; this setting is the fallback for plain ``nbgrader autograde``.
* Outputs kept in graded notebooks and feedback are capped: 1000 lines
  (``LimitOutput``) and 100 kB per cell (``LimitOutputBytes``).
* Nothing on stderr costs points (``IgnorePattern`` drops every stderr
  stream before scoring): nbgrader would otherwise score any test cell that
  prints to stderr -- a torch/transformers warning, a tqdm bar, a logging
  line -- as failed.  Checks signal failure by raising, never by printing.
"""

import os
import sys

c = get_config()  # noqa: F821  (injected by traitlets)

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)  # for course_preprocessors

_QUICK = os.environ.get("PRUNING_COURSE_QUICK", "").strip().lower() in {"1", "true", "yes", "on"}
CELL_TIMEOUT = int(os.environ.get("PRUNING_COURSE_CELL_TIMEOUT") or (300 if _QUICK else 1800))

c.CourseDirectory.course_id = "pruning-course"
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".DS_Store"]

# --- executing submissions ------------------------------------------------
# nbgrader's Execute subclasses nbconvert's ExecutePreprocessor; set both so
# that every code path (autograde, validate) sees the same limits.
for _cls in (c.Execute, c.ExecutePreprocessor):
    _cls.timeout = CELL_TIMEOUT
    _cls.startup_timeout = 180
    _cls.interrupt_on_timeout = True
    # after a cell finished, wait this long for its output; a late output raises,
    # and CourseExecute turns that into a failed cell instead of a lost notebook
    _cls.iopub_timeout = 30
    _cls.raise_on_iopub_timeout = True
    # the course notebooks use the default Python kernel of the grading venv
    _cls.kernel_name = "python3"
# a kernel that ignores the interrupt of a timed-out cell is shut down after this
# many seconds (CourseExecute) instead of every later cell waiting for its timeout
c.CourseExecute.interrupt_grace = min(60, max(5, CELL_TIMEOUT // 10))
c.Execute.error_on_timeout = {
    "ename": "CellTimeoutError",
    "evalue": f"the cell did not finish within {CELL_TIMEOUT} s and was interrupted",
    "traceback": [f"\x1b[0;31mCellTimeoutError\x1b[0m: the cell did not finish within "
                  f"{CELL_TIMEOUT} s and was interrupted (an infinite loop, or far too slow)"],
}

c.Autograde.autograde_preprocessors = [
    "course_preprocessors.CourseExecute",          # instead of nbgrader's Execute
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "course_preprocessors.LimitOutputBytes",     # LimitOutput counts lines, not bytes
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]

# --- scoring --------------------------------------------------------------
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"[\s\S]*"   # every stderr stream (see the docstring)

c.OverwriteCells.add_missing_cells = True
c.OverwriteCells.missing_cell_notification = (
    "This cell (id:{cell_id}) was missing from the submission and was put back by the autograder.\n\n")

c.LimitOutput.max_lines = 1000
c.LimitOutput.max_traceback = 100
# and bytes: one line of 200 MiB would otherwise be kept whole in the graded
# notebook and in the feedback page (the start is kept, then "[... N bytes cut]")
c.LimitOutputBytes.max_bytes = 100_000

# Feedback shows the autograded notebook with the hidden tests' source (nbgrader's default, set
# here on purpose). Every hidden test is the same public check as the visible line above it, called
# on another set of seeded inputs (`check_x(fn, seed=1)`): its source gives no answer away, the
# released notebooks say that it exists and what it checks, and a student whose hidden test failed
# needs to see which call it was to read the check's message. ClearHiddenTests would keep that
# message but drop the call that produced it.
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
