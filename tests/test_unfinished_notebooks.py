"""Every student notebook, as released (every exercise unfinished), runs top to bottom in quick mode
with no failing cell except the graded test cells: the cells after an exercise fall back to the
course's reference (``pruning_course.notebook_helpers``) instead of failing with NameError.

Each notebook takes from about ten seconds to a minute on a 2-core CPU (tiny random model), so
the test is marked slow as a whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from pruning_course.grading.notebooks import is_test_cell  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STUDENT_NOTEBOOKS = sorted((ROOT / "notebooks").glob("*/*.ipynb"))


def failing_cells(path: Path) -> list[tuple[int, str, str]]:
    """(position, grade id, error) of every code cell that raised when the notebook ran in quick mode."""
    nb = nbformat.read(path, as_version=4)
    env_before = os.environ.get("PRUNING_COURSE_QUICK")
    os.environ["PRUNING_COURSE_QUICK"] = "1"  # the kernel inherits the environment
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                                resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if env_before is None:
            os.environ.pop("PRUNING_COURSE_QUICK")
        else:
            os.environ["PRUNING_COURSE_QUICK"] = env_before
    failures = []
    for position, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "error":
                grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
                failures.append((position, grade_id, f"{output['ename']}: {output['evalue'][:200]}", is_test_cell(cell)))
    return failures


def test_there_are_student_notebooks():
    assert len(STUDENT_NOTEBOOKS) == 12


@pytest.mark.slow
@pytest.mark.parametrize("path", STUDENT_NOTEBOOKS, ids=lambda p: p.stem)
def test_an_unfinished_notebook_fails_only_in_its_graded_test_cells(path):
    failures = failing_cells(path)
    not_tests = [(pos, gid, err) for pos, gid, err, test in failures if not test]
    assert not_tests == [], f"cells other than graded tests failed: {not_tests}"
    assert any(test for *_, test in failures), "the unfinished exercises should fail their graded test cells"
