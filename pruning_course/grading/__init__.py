"""The course's nbgrader machinery: generate student notebooks, validate them, grade submissions.

Course layout
    ``solutions/<assignment>/<notebook>.ipynb``  instructor sources in nbgrader source format
    (``### BEGIN SOLUTION``, ``### BEGIN HIDDEN TESTS``, points on test cells, locked cells).
    ``notebooks/<assignment>/<notebook>.ipynb``  student versions, written by :func:`generate`.
    Notebook names must be unique across assignments: that is how a submitted file is matched
    to its assignment.  The grading policy (timeouts, stderr, deleted cells, crashed kernels)
    is ``autograder/nbgrader_config.py``.

Every nbgrader run happens in a throwaway course directory under the system temp directory
(sources copied in, student files written there), so a submission never runs in the
repository; each student's job gets a course folder and gradebook of its own, whose grades
the grading process checks and merges into ``out_dir``'s gradebook when the job is done.
nbgrader runs in worker processes watched from outside (``jobs`` of them side by side, each
with its lane of students): a worker that runs over a student's wall-clock limit or dies is
killed together with its kernels, that student is graded as the unmodified student version
(zero) with the reason, and a fresh worker carries on with the next student.  ``shard=(k, n)``
grades one of ``n`` deterministic shards of the class, and :func:`merge_outputs` combines the
shards' folders.  Kernels run the grading Python (``sys.executable``, which needs
``ipykernel``: the ``course`` extra) inside a bubblewrap sandbox (:mod:`.sandbox`: no network,
their own process namespace, read-only packages, nothing else of the machine), import this
package from where it is now, and get ``PRUNING_COURSE_QUICK=1``; nbgrader sets
``NBGRADER_EXECUTION=autograde`` while it grades.  Graded test cells do not run in the kernel:
the grader runs them in its own process and the checks call the student's functions across the
process boundary (:mod:`.remote`), so nothing a submission does in its kernel can change a
verdict.  Code that reaches for the grading machinery, and exercises answered with the
package's own reference implementation, are found by reading the code (:mod:`.tampering`).

Submission layouts accepted by :func:`grade` (a folder, or a ``.zip`` of one; nested folders
above these are fine, files other than ``.ipynb`` are ignored):

    <student>/<assignment>/<notebook>.ipynb    nbgrader's own (e.g. its ``submitted/`` folder)
    <student>/<notebook>.ipynb                 one folder per student (Moodle-style exports)
    <student>_<notebook>.ipynb                 flat; ``-`` or ``.`` also separate, and a
                                               trailing ``-2`` / `` (2)`` is ignored (Canvas,
                                               browser re-downloads)

Student ids are the folder name or file-name prefix, NFC-normalised, with characters other
than letters and digits of any script and ``._@+-`` replaced by ``_`` (``张伟``, ``José`` and
``Josè`` are three students); when that still makes two different names one id, each name that
was changed gets ``-`` and a short hash of the name, and the reason says so.  If one student
has several files for one notebook, the newest is graded and the others are named in the reason.
Symbolic links are never followed, and notebooks in hidden or system folders (``.*``,
``feedback``, ``.ipynb_checkpoints``, ``__MACOSX``) are not graded: both are listed in
``skipped.csv``, as is a zip member that is damaged (fails its CRC); the rest is graded.

A submitted notebook is cleaned before nbgrader sees it: outputs cleared, each grade id left on
one cell (a duplicated or pasted-in nbgrader cell, or one with a grade id the notebook does not
have, loses its nbgrader metadata and runs as a plain cell; the reason names it), deleted test
cells put back.  Outputs kept in the graded notebook and feedback are capped at 1000 lines and
100 kB per cell (the rest is replaced by ``[... N bytes cut]``).

:func:`grade` writes into ``out_dir`` (safe to re-run; earlier students are kept):

    grades.csv                 student, assignment, notebook, score, max_score, status, reason
    gradebook.db               the nbgrader gradebook (every grade ever recorded here)
    backups/gradebook-YYYYmmdd-HHMMSS.db   the gradebook as it was before each run: the newest
                               20 are kept, and an older one is deleted only when every grade
                               in it is also in the gradebook or a kept backup
    feedback/<student>/<assignment>/<notebook>.html   nbgrader feedback + a grading-notes box
    autograded/<student>/<assignment>/<notebook>.ipynb  the executed notebooks
    logs/<student>/<assignment>.log                   nbgrader's log of the run
    grading_status.json        status and reason of every graded notebook
    skipped.csv                notebooks of the last run that were not graded, and why

Statuses (most severe first): ``error`` (grading itself failed; scored as the unmodified
student version, i.e. zero), ``invalid`` (not a readable notebook; zero), ``tampering`` (the
code tries to reach the grading machinery; graded as usual, the reason says what was tried),
``reference_answer`` (an exercise answered with the course's own implementation; its test
cells score zero), ``missing`` (a
notebook of the assignment was not submitted; zero), ``kernel_died`` (the cells from the
crash on score zero; an ``exit()`` is blamed on the cell that called it), ``timeout`` (a cell hit the per-cell timeout and scored zero),
``cells_restored`` (deleted test cells were put back and graded), ``graded``.

Modules: ``reports`` (constants, errors, result types), ``notebooks`` (course catalogue, notebook
helpers), ``course`` (the throwaway nbgrader course, its workers, the gradebook), ``release``
(generate, drift, validate), ``submissions`` (finding, extracting and preparing submissions),
``sandbox`` (the kernels' bubblewrap confinement), ``remote`` (checks across the process
boundary), ``tampering`` (reading a submission's code), ``batch`` (grade).  This package re-exports the public names.
"""

from .batch import grade, merge_outputs, shard_of
from .release import drift, generate, validate
from .reports import (
    COURSE_ID,
    CSV_FIELDS,
    DEFAULT_CONFIG,
    DEFAULT_TIMEOUT,
    RELEASE_STUDENT,
    SOLUTION_STUDENT,
    STATUSES,
    CellCheck,
    GradeReport,
    GradingError,
    NotebookGrade,
    NotebookValidation,
    ValidationReport,
)

__all__ = [
    "COURSE_ID", "CSV_FIELDS", "DEFAULT_CONFIG", "DEFAULT_TIMEOUT", "RELEASE_STUDENT", "SOLUTION_STUDENT",
    "STATUSES", "CellCheck", "GradeReport", "GradingError", "NotebookGrade", "NotebookValidation",
    "ValidationReport", "drift", "generate", "grade", "merge_outputs", "shard_of", "validate",
]
