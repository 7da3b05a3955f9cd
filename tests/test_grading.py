"""The nbgrader machinery (pruning_course.grading) on a tiny plain-Python fixture assignment.

``tests/fixtures/grading/solutions/fixture_basics/fixture_basics.ipynb`` has three solution
cells and three graded test cells (1 + 2 + 1 points; the 2-point one has hidden tests; one
test prints a progress bar to stderr, which must not cost the point).

The expensive parts run once per module: one ``generate``, two ``drift``, one ``validate``,
one batch of eight students (every failure mode side by side) and a second batch (zip input,
a re-submission, the wall-clock limit) into the same output folder.
"""

from __future__ import annotations

import copy
import csv
import json
import time
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")
nbformat = pytest.importorskip("nbformat")

from pruning_course import grading  # noqa: E402
from pruning_course.grading import drift, generate, grade, validate  # noqa: E402
from pruning_course.grading.notebooks import Catalog  # noqa: E402
from pruning_course.grading.submissions import discover_submissions, _restore_tests  # noqa: E402

SOLUTIONS = Path(__file__).parent / "fixtures" / "grading" / "solutions"
A = NB = "fixture_basics"
ADD = "def add(a, b):\n    return a + b"
MEAN = "def mean(xs):\n    return sum(xs) / len(xs)"
CLIP = "def clip(x, lo, hi):\n    return max(lo, min(hi, x))"


# ---------------------------------------------------------------------------------------------
# helpers and shared fixtures
# ---------------------------------------------------------------------------------------------


def grade_id_of(cell):
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def _variant(release, **code):
    """The student version with the given solution cells (by grade id) filled in."""
    nb = copy.deepcopy(release)
    for cell in nb.cells:
        if grade_id_of(cell) in code:
            cell.source = code[grade_id_of(cell)]
    return nb


def _put(root: Path, rel: str, nb) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(nb, str):
        path.write_text(nb)
    else:
        nbformat.write(nb, path)
    return path


def _csv(out: Path) -> dict[str, dict]:
    with open(out / "grades.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, "grades.csv is empty"
    assert list(rows[0]) == list(grading.CSV_FIELDS)
    return {r["student"]: r for r in rows}


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """The fixture solutions and freshly generated student notebooks.

    ``notebooks/`` starts out stale (a tampered student notebook, a notebook no source
    produces any more) to show that ``generate`` repairs it."""
    root = tmp_path_factory.mktemp("course")
    notebooks = root / "notebooks"
    _put(notebooks, f"{A}/{NB}.ipynb", "stale")
    _put(notebooks, f"{A}/old_name.ipynb", "stale")
    _put(notebooks, f"{A}/data.txt", "an instructor's file that generate must leave alone")
    written = generate(SOLUTIONS, notebooks)
    release = nbformat.read(notebooks / A / f"{NB}.ipynb", as_version=4)
    source = nbformat.read(SOLUTIONS / A / f"{NB}.ipynb", as_version=4)
    return {"root": root, "notebooks": notebooks, "written": written, "release": release, "source": source}


@pytest.fixture(scope="module")
def batch(course, tmp_path_factory):
    """Eight students in three layouts, graded together with a 5 s cell timeout."""
    release, source = course["release"], course["source"]
    subs = tmp_path_factory.mktemp("submissions")
    _put(subs, f"alice/{A}/{NB}.ipynb", source)                        # nbgrader layout; the solution
    _put(subs, f"bob/{NB}.ipynb", release)                              # folder per student; untouched
    _put(subs, f"carol_{NB}.ipynb", _variant(                          # flat; partly right
        release, add=ADD, mean="def mean(xs):\n    return 0", clip=CLIP.replace("max(lo,", "max(lo - 1,")))
    _put(subs, f"dave_{NB}.ipynb", "{ this is not JSON")                # unreadable
    _put(subs, f"erin/{NB}.ipynb", _variant(                            # infinite loop in add
        release, add="def add(a, b):\n    while True:\n        pass", mean=MEAN, clip=CLIP))
    frank = _variant(release, add=ADD, mean=MEAN, clip=CLIP)            # deleted every test cell
    frank.cells = [c for c in frank.cells if not c.metadata["nbgrader"].get("grade")]
    _put(subs, f"frank/{NB}.ipynb", frank)
    _put(subs, f"grace/{NB}.ipynb", _variant(                           # kills its kernel
        release, add=ADD, mean="import os\nos._exit(1)", clip=CLIP))
    _put(subs, f"hank/{NB}.ipynb", _variant(                            # loop that swallows the interrupt
        release, add="import time\n\ndef add(a, b):\n    while True:\n        try:\n            time.sleep(0.2)\n"
                     "        except:\n            pass", mean=MEAN, clip=CLIP))
    _put(subs, "misc/Untitled.ipynb", release)                          # not a course notebook
    out = tmp_path_factory.mktemp("graded")
    start = time.time()
    report = grade(subs, out, SOLUTIONS, timeout=5)
    print(f"\nfirst batch graded in {time.time() - start:.1f} s\n{report}")
    return {"report": report, "out": out, "subs": subs}


# ---------------------------------------------------------------------------------------------
# generate / drift / validate
# ---------------------------------------------------------------------------------------------


def test_generate_writes_student_version_without_solutions(course):
    path = course["notebooks"] / A / f"{NB}.ipynb"
    assert course["written"] == [path]
    text = path.read_text()
    for leaked in ("BEGIN SOLUTION", "return a + b", "BEGIN HIDDEN TESTS", "hidden: mean"):
        assert leaked not in text
    assert "raise NotImplementedError()" in text
    assert "assert add(2, 3) == 5" in text  # visible tests stay
    # the student version keeps the source's cell ids (no random ids that churn)
    assert [c.id for c in course["release"].cells] == [c.id for c in course["source"].cells]
    # the stale student notebook was replaced, the orphan removed, other files left alone
    assert not (course["notebooks"] / A / "old_name.ipynb").exists()
    assert (course["notebooks"] / A / "data.txt").exists()


def test_drift_is_empty_after_generate_and_names_changed_notebooks(course, tmp_path):
    # a fresh generation in a new temp course reproduces the written files byte for byte
    assert drift(SOLUTIONS, course["notebooks"]) == []
    tampered = tmp_path / "notebooks"
    _put(tampered, f"{A}/{NB}.ipynb", _variant(course["release"], add=ADD))
    _put(tampered, f"{A}/old_name.ipynb", course["release"])
    assert drift(SOLUTIONS, tampered) == [f"{A}/{NB}.ipynb", f"{A}/old_name.ipynb"]


def test_validate_accepts_good_and_reports_broken_assignments(course, tmp_path):
    solutions = tmp_path / "solutions"
    (solutions / A).mkdir(parents=True)
    (solutions / A / f"{NB}.ipynb").write_bytes((SOLUTIONS / A / f"{NB}.ipynb").read_bytes())
    broken = copy.deepcopy(course["source"])
    for cell in broken.cells:
        if grade_id_of(cell) == "mean":  # the "solution" is wrong
            cell.source = "def mean(xs):\n    ### BEGIN SOLUTION\n    return 0\n    ### END SOLUTION"
        if grade_id_of(cell) == "clip":  # a test that passes without any student work
            cell.source = "def clip(x, lo, hi):\n    return max(lo, min(hi, x))"
            cell.metadata["nbgrader"]["solution"] = False
            cell.metadata["nbgrader"]["locked"] = True
    _put(solutions, "broken/broken.ipynb", broken)
    notebooks = tmp_path / "notebooks"
    _put(notebooks, f"{A}/{NB}.ipynb", course["release"])

    report = validate(solutions, notebooks, timeout=60)
    print(report)
    by_name = {v.notebook: v for v in report.notebooks}
    good, bad = by_name[NB], by_name["broken"]
    assert good.ok, good.problems
    assert (good.solution_score, good.release_score, good.max_score) == (4, 0, 4)
    assert not bad.ok
    assert any("does not get full marks on test_mean" in p and "mean([1, 2, 3]) should be 2" in p for p in bad.problems)
    assert any("unmodified student version scores 1 on test_clip" in p for p in bad.problems)
    assert report.drift == ["broken/broken.ipynb"]  # never generated into notebooks/
    assert not report.ok


# ---------------------------------------------------------------------------------------------
# grade: one batch, every failure mode
# ---------------------------------------------------------------------------------------------


def test_solution_gets_full_marks(batch):
    g = batch["report"].find("alice", NB)
    assert (g.score, g.max_score, g.status) == (4, 4, "graded")
    assert g.reason == "all tests passed"
    assert g.submitted == f"alice/{A}/{NB}.ipynb"


def test_unmodified_student_version_scores_zero(batch):
    g = batch["report"].find("bob", NB)
    assert (g.score, g.max_score, g.status) == (0, 4, "graded")
    assert "test_add (0/1): NotImplementedError" in g.reason


def test_partial_credit_and_failing_assertion_in_feedback(batch):
    g = batch["report"].find("carol", NB)
    assert (g.score, g.max_score, g.status) == (1, 4, "graded")
    assert "test_mean (0/2): AssertionError: mean([1, 2, 3]) should be 2" in g.reason
    assert "test_clip (0/1): AssertionError: clip(-1, 0, 3) should be 0" in g.reason
    html = (batch["out"] / "feedback" / "carol" / A / f"{NB}.html").read_text()
    assert g.feedback == batch["out"] / "feedback" / "carol" / A / f"{NB}.html"
    assert "mean([1, 2, 3]) should be 2" in html
    assert 'id="autograder-notes"' in html and "score 1 / 4" in html


def test_unreadable_notebook_scores_zero_with_reason(batch):
    g = batch["report"].find("dave", NB)
    assert (g.score, g.max_score, g.status) == (0, 4, "invalid")
    assert "not valid JSON" in g.reason
    html = (batch["out"] / "feedback" / "dave" / A / f"{NB}.html").read_text()
    assert "not valid JSON" in html


def test_infinite_loop_times_out_and_the_rest_is_graded(batch):
    g = batch["report"].find("erin", NB)
    assert (g.score, g.max_score, g.status) == (3, 4, "timeout")
    assert "(test_add) did not finish within the time limit and was interrupted" in g.reason
    assert "test_add (0/1): timed out" in g.reason
    assert "CellTimeoutError" in (batch["out"] / "feedback" / "erin" / A / f"{NB}.html").read_text()


def test_kernel_that_ignores_the_interrupt_is_shut_down(batch):
    # without that, every later cell would wait for its own timeout
    g = batch["report"].find("hank", NB)
    assert (g.score, g.max_score, g.status) == (0, 4, "timeout")
    assert "(test_add) did not finish within the time limit and its kernel ignored the interrupt" in g.reason
    assert "test_mean (0/2): not executed" in g.reason
    assert "KernelUnresponsiveError" in (batch["out"] / "feedback" / "hank" / A / f"{NB}.html").read_text()


def test_deleted_test_cells_are_restored_and_scored(batch):
    g = batch["report"].find("frank", NB)
    assert (g.score, g.max_score, g.status) == (4, 4, "cells_restored")
    assert "test_add, test_mean, test_clip were put back" in g.reason
    graded = nbformat.read(batch["out"] / "autograded" / "frank" / A / f"{NB}.ipynb", as_version=4)
    order = [grade_id_of(c) for c in graded.cells]
    # back in their places, hidden tests included
    assert order == ["intro", "setup", "add_md", "add", "test_add", "mean_md", "mean", "test_mean",
                     "clip_md", "clip", "test_clip"]
    assert "hidden: mean([4.0])" in graded.cells[order.index("test_mean")].source


def test_kernel_crash_keeps_credit_for_cells_before_it(batch):
    g = batch["report"].find("grace", NB)
    assert (g.score, g.max_score, g.status) == (1, 4, "kernel_died")
    assert "the kernel died in cell 7 (mean)" in g.reason
    assert "KernelDiedError" in (batch["out"] / "feedback" / "grace" / A / f"{NB}.html").read_text()


def test_stderr_noise_in_a_test_cell_costs_nothing(batch):
    # test_add prints a progress bar to stderr; alice still has full marks (checked above) and
    # the stderr output is gone from the graded notebook
    graded = nbformat.read(batch["out"] / "autograded" / "alice" / A / f"{NB}.ipynb", as_version=4)
    cell = next(c for c in graded.cells if grade_id_of(c) == "test_add")
    assert not [o for o in cell.outputs if o.get("name") == "stderr"]


def test_grades_csv_and_skipped_files(batch):
    out = batch["out"]
    rows = _csv(out)
    assert sorted(rows) == ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "hank"]
    assert {s: (r["score"], r["max_score"], r["status"]) for s, r in rows.items()} == {
        "alice": ("4", "4", "graded"), "bob": ("0", "4", "graded"), "carol": ("1", "4", "graded"),
        "dave": ("0", "4", "invalid"), "erin": ("3", "4", "timeout"), "frank": ("4", "4", "cells_restored"),
        "grace": ("1", "4", "kernel_died"), "hank": ("0", "4", "timeout")}
    assert all(r["assignment"] == A and r["notebook"] == NB and r["reason"] for r in rows.values())
    assert [name for name, _ in batch["report"].skipped] == ["misc/Untitled.ipynb"]
    assert "misc/Untitled.ipynb" in (out / "skipped.csv").read_text()
    assert (out / "gradebook.db").is_file()
    assert (out / "logs" / "erin" / f"{A}.log").is_file()
    # nothing ran in (or was written to) the submissions folder
    assert sorted(p.name for p in batch["subs"].rglob("*") if p.is_file()) == sorted(
        [f"{NB}.ipynb"] * 6 + [f"carol_{NB}.ipynb", f"dave_{NB}.ipynb", "Untitled.ipynb"])


# ---------------------------------------------------------------------------------------------
# grade again into the same folder: zip input, a re-submission, the wall-clock limit
# ---------------------------------------------------------------------------------------------


def _grading_processes() -> int:
    import psutil

    n = 0
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any("pruning-course-grading-" in part for part in (p.info["cmdline"] or [])):
                n += 1
        except psutil.Error:
            pass
    return n


def test_zip_regrade_and_wall_clock_limit(batch, course, tmp_path):
    release = course["release"]
    before = _grading_processes()
    archive = tmp_path / "resubmissions.zip"
    fixed_carol = _variant(release, add=ADD, mean=MEAN, clip=CLIP)
    slow = _variant(release, add="import time\ntime.sleep(600)", mean=MEAN, clip=CLIP)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"export/heidi_{NB}-1.ipynb", nbformat.writes(course["source"]))  # Canvas-style name
        zf.writestr(f"export/carol/{A}/{NB}.ipynb", nbformat.writes(fixed_carol))
        zf.writestr(f"export/ivan/{NB}.ipynb", nbformat.writes(slow))
        zf.writestr(f"../escape_{NB}.ipynb", nbformat.writes(release))  # never extracted
        zf.writestr("export/readme.txt", "ignored")

    out = batch["out"]
    report = grade(archive, out, SOLUTIONS, timeout=120, wall_timeout=20)
    print(report)
    assert sorted(g.student for g in report.grades) == ["carol", "heidi", "ivan"]
    assert report.find("heidi", NB).score == 4
    carol = report.find("carol", NB)
    assert (carol.score, carol.status) == (4, "graded")
    ivan = report.find("ivan", NB)
    # the cell timeout (120 s) is longer than the wall-clock limit (20 s) of a whole notebook:
    # the watchdog kills the worker and its kernel, grades ivan as the unmodified student
    # version, and a fresh worker carries on
    assert (ivan.score, ivan.status) == (0, "error")
    assert "wall-clock limit of 20 s" in ivan.reason
    assert "wall-clock limit" in (out / "feedback" / "ivan" / A / f"{NB}.html").read_text()

    rows = _csv(out)
    # earlier grades persist, the re-submission replaced carol's, the new students were added
    assert sorted(rows) == ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "hank", "heidi", "ivan"]
    assert (rows["carol"]["score"], rows["carol"]["status"]) == ("4", "graded")
    assert (rows["alice"]["score"], rows["erin"]["score"], rows["grace"]["status"]) == ("4", "3", "kernel_died")
    assert (rows["ivan"]["score"], rows["ivan"]["status"]) == ("0", "error")
    status = json.loads((out / "grading_status.json").read_text())
    assert status[f"heidi/{A}/{NB}"]["submitted"] == f"export/heidi_{NB}-1.ipynb"
    assert len(list((out / "backups").glob("gradebook-*.db"))) == 1  # the gradebook before this run
    assert [name for name, _ in report.skipped] == [f"../escape_{NB}.ipynb"]
    # the kernel was killed along with its worker
    deadline = time.time() + 10
    while _grading_processes() > before and time.time() < deadline:
        time.sleep(0.2)
    assert _grading_processes() <= before


# ---------------------------------------------------------------------------------------------
# fast unit tests: submission layouts, restoring deleted cells
# ---------------------------------------------------------------------------------------------


def test_discover_submission_layouts(tmp_path):
    catalog = Catalog(tmp_path, {"01_why_pruning": ["01_why_pruning"], "02_wanda": ["02_wanda"]})
    files = [
        "submitted/alice/01_why_pruning/01_why_pruning.ipynb",   # nbgrader
        "bob/02_wanda.ipynb",                                    # folder per student
        "Jane Doe_123_assignsubmission_file_/01_why_pruning.ipynb",  # Moodle
        "carol_02_wanda.ipynb",                                  # flat
        "dan_02_wanda-2.ipynb",                                  # Canvas re-submission suffix
        "erin-01_why_pruning (1).ipynb",                         # browser copy
        "01_why_pruning/01_why_pruning.ipynb",                   # whose?
        "frank/notes.ipynb",                                     # not a course notebook
        "frank/.ipynb_checkpoints/02_wanda-checkpoint.ipynb",    # ignored
        "gus/02_wanda.ipynb",
        "gus_02_wanda.ipynb",                                    # duplicate, newer
    ]
    for i, rel in enumerate(files):
        p = tmp_path / "in" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
        import os

        os.utime(p, (1000 + i, 1000 + i))
    subs, skipped = discover_submissions(tmp_path / "in", catalog)
    found = {(s.student, s.assignment, s.notebook): s for s in subs}
    assert sorted(found) == [
        ("Jane_Doe_123_assignsubmission_file", "01_why_pruning", "01_why_pruning"),
        ("alice", "01_why_pruning", "01_why_pruning"),
        ("bob", "02_wanda", "02_wanda"),
        ("carol", "02_wanda", "02_wanda"),
        ("dan", "02_wanda", "02_wanda"),
        ("erin", "01_why_pruning", "01_why_pruning"),
        ("gus", "02_wanda", "02_wanda"),
    ]
    assert found["gus", "02_wanda", "02_wanda"].origin == "gus_02_wanda.ipynb"
    assert "ignored gus/02_wanda.ipynb" in found["gus", "02_wanda", "02_wanda"].notes[0]
    assert "normalised" in found["Jane_Doe_123_assignsubmission_file", "01_why_pruning", "01_why_pruning"].notes[0]
    assert sorted(name for name, _ in skipped) == ["01_why_pruning/01_why_pruning.ipynb",
                                                   "frank/.ipynb_checkpoints/02_wanda-checkpoint.ipynb",
                                                   "frank/notes.ipynb"]
    assert "Jupyter's autosave copies" in dict(skipped)["frank/.ipynb_checkpoints/02_wanda-checkpoint.ipynb"]


def test_restore_tests_when_the_preceding_cell_is_gone_too(course):
    # nbgrader's own add_missing_cells raises KeyError here (it anchors on the previous
    # source cell, which the student also deleted); our restore anchors on what is left
    release = course["release"]
    nb = copy.deepcopy(release)
    nb.cells = [c for c in nb.cells if grade_id_of(c) not in {"mean", "test_mean", "test_clip"}]
    restored = _restore_tests(nb, release)
    assert restored == ["test_mean", "test_clip"]
    assert [grade_id_of(c) for c in nb.cells] == ["intro", "setup", "add_md", "add", "test_add", "mean_md",
                                                "test_mean", "clip_md", "clip", "test_clip"]
    # a notebook with no nbgrader cells at all gets the tests appended in order
    bare = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(ADD)])
    assert _restore_tests(bare, release) == ["test_add", "test_mean", "test_clip"]
    assert [grade_id_of(c) for c in bare.cells] == [None, "test_add", "test_mean", "test_clip"]
