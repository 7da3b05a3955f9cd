"""The course's real notebooks, executed in quick mode as CI and grading run them.

* every solution notebook scores full marks and every unmodified student notebook scores zero;
* the committed student notebooks are exactly what `pruning-course generate` makes from solutions/;
* a batch of real submissions with a classic mistake, a broken file and a correct one is graded
  with partial credit and the diagnosis in the feedback, and nothing is lost.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")

from pruning_course.grading import drift, grade, validate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS, NOTEBOOKS = ROOT / "solutions", ROOT / "notebooks"
FIXTURES = Path(__file__).parent / "fixtures" / "submissions"


def test_student_notebooks_do_not_drift_from_the_solutions():
    assert drift(SOLUTIONS, NOTEBOOKS) == [], "run `pruning-course generate` and commit notebooks/"


def test_solutions_pass_and_unmodified_student_notebooks_score_zero():
    report = validate(SOLUTIONS, NOTEBOOKS)
    assert report.ok, str(report)
    manual = {v.assignment: v.manual_points for v in report.notebooks}
    assert manual["09_sparse_inference"] > 0, "the written 80%-vs-30% answer is graded by hand, apart from the autograded points"


def test_a_real_batch_is_graded_with_diagnoses(tmp_path):
    submissions = tmp_path / "submissions"
    (submissions / "alice").mkdir(parents=True)
    shutil.copy(SOLUTIONS / "03_wanda" / "03_wanda.ipynb", submissions / "alice" / "03_wanda.ipynb")
    (submissions / "bob").mkdir()
    shutil.copy(FIXTURES / "global_threshold_03_wanda.ipynb", submissions / "bob" / "03_wanda.ipynb")
    (submissions / "carol").mkdir()
    (submissions / "carol" / "03_wanda.ipynb").write_text("{ this is not json")
    out = tmp_path / "out"

    report = grade(submissions, out, solutions_dir=SOLUTIONS)

    rows = {row["student"]: row for row in csv.DictReader((out / "grades.csv").open())}
    assert set(rows) == {"alice", "bob", "carol"}
    alice, bob, carol = (float(rows[s]["score"]) for s in ("alice", "bob", "carol"))
    maximum = float(rows["alice"]["max_score"])
    assert alice == maximum
    assert 0 < bob < maximum, "a global threshold must cost the Wanda-mask points only"
    assert carol == 0 and rows["carol"]["reason"], "a broken notebook gets zero with a reason"
    feedback = (out / "feedback" / "bob" / "03_wanda" / "03_wanda.html").read_text()
    assert "within each output row" in feedback
    assert report.find("alice", "03_wanda").score == maximum
