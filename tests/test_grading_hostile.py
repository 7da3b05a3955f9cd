"""Hostile submissions, graded in one real batch next to a correct control (issue: grading that no
submission can cheat, sabotage or spy on).

Every attacker answers no exercise (its solution cells hold only the attack), so any point it
gets is unearned. The batch runs sandboxed (bubblewrap) with the checks judged outside the
kernel; the tests then look at the grades, the files around the run, and the processes left.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")
nbformat = pytest.importorskip("nbformat")

import pruning_course.checks  # noqa: E402
from pruning_course.grading import GradingError, generate, grade  # noqa: E402
from pruning_course.grading.sandbox import sandbox_problem  # noqa: E402

from test_grading import ADD, CLIP, MEAN, SOLUTIONS, A, NB, _csv, _put, _variant  # noqa: E402

pytestmark = pytest.mark.skipif(sandbox_problem() is not None, reason="bubblewrap is not usable here")

MARKER = "pc-hostile-marker-7f3a"  # in the control's code: must appear in nobody else's feedback
BACKGROUND = "pc-hostile-detached-91c2"  # in the command line of the detached process


def _attacks(out: Path, subs: Path) -> dict[str, str]:
    """Student id -> the code of its ``add`` cell (its other solution cells stay unanswered)."""
    control_file = subs / "control" / f"{NB}.ipynb"
    solutions_file = SOLUTIONS / A / f"{NB}.ipynb"
    checks_file = Path(pruning_course.checks.__file__)
    return {
        "gradebook": f"""
import glob, os, sqlite3
for path in glob.glob({str(out)!r} + "/**/gradebook.db", recursive=True) + glob.glob("/tmp/**/gradebook.db", recursive=True):
    db = sqlite3.connect(path)
    db.execute("UPDATE grade SET manual_score = max_score")
    db.execute("UPDATE grade SET extra_credit = 1000")
    db.commit()
""",
        "status": f"""
import json
rows = {{"fake/{A}/{NB}": {{"student": "fake", "assignment": "{A}", "notebook": "{NB}", "score": 10,
        "max_score": 10, "status": "graded", "reason": "", "submitted": "", "graded_at": "now"}}}}
open({str(out / "grading_status.json")!r}, "w").write(json.dumps(rows))
open({str(out / "grades.csv")!r}, "a").write("fake,{A},{NB},10,10,graded,\\n")
""",
        "overwrite": f"""
open({str(control_file)!r}, "w").write("{{}}")
import shutil
shutil.rmtree({str(out / "feedback")!r})
""",
        "detached": f"""
import subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(6); "
                  "open({str(out / 'grades.csv')!r}, 'a').write('detached,{A},{NB},4,4,graded,\\\\n')  # {BACKGROUND}"],
                 start_new_session=True)
""",
        "spy": f"""
import os
for path in ({str(solutions_file)!r}, {str(control_file)!r}, {str(out / 'grades.csv')!r}):
    try:
        print(open(path).read())
    except OSError as error:
        print("cannot read", path, type(error).__name__)
print(os.listdir("/"))
""",
        "package": f"""
with open({str(checks_file)!r}, "a") as f:
    f.write("\\nimport builtins; builtins.PWNED = True\\n")
""",
        "transformer": """
ip = get_ipython()
ip.input_transformers_cleanup.append(lambda lines: ["pass\\n"])   # every later cell, test cells too, does nothing
import builtins
builtins.AssertionError = type("Never", (Exception,), {})
def add(a, b):
    return 5
""",
        "network": """
import socket
socket.create_connection(("pypi.org", 443), timeout=5)
""",
        "memory": """
hog = bytearray(64 * 2**30)
""",
    }


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    notebooks = tmp_path_factory.mktemp("notebooks")
    generate(SOLUTIONS, notebooks)
    release = nbformat.read(notebooks / A / f"{NB}.ipynb", as_version=4)
    out = tmp_path_factory.mktemp("graded")
    # an earlier run graded `early`: nothing in the next run may change that grade
    early = tmp_path_factory.mktemp("early")
    _put(early, f"early/{NB}.ipynb", _variant(release, add=ADD, mean=MEAN, clip=CLIP))
    grade(early, out, SOLUTIONS, timeout=20)
    subs = tmp_path_factory.mktemp("submissions")
    _put(subs, f"control/{NB}.ipynb", _variant(release, add=ADD + f"  # {MARKER}", mean=MEAN, clip=CLIP))
    for student, attack in _attacks(out, subs).items():
        _put(subs, f"{student}/{NB}.ipynb", _variant(release, add=attack))
    protected = {p: _digest(p) for p in [subs / "control" / f"{NB}.ipynb", SOLUTIONS / A / f"{NB}.ipynb",
                                          Path(pruning_course.checks.__file__)]}
    start = time.time()
    report = grade(subs, out, SOLUTIONS, timeout=20)
    seconds = time.time() - start
    csv_after_grade = (out / "grades.csv").read_text()
    time.sleep(8)  # the detached process would write by now
    return {"out": out, "subs": subs, "report": report, "protected": protected, "seconds": seconds,
            "csv_after_grade": csv_after_grade}


def test_no_attacker_gains_a_point_and_the_control_and_earlier_grades_stand(hostile):
    rows = _csv(hostile["out"])
    assert set(rows) == {"early", "control", *_attacks(hostile["out"], hostile["subs"])}, "a row was added or lost"
    assert (rows["control"]["score"], rows["control"]["max_score"]) == ("4", "4")
    assert (rows["early"]["score"], rows["early"]["max_score"]) == ("4", "4")
    for student in _attacks(hostile["out"], hostile["subs"]):
        assert rows[student]["score"] == "0", (student, rows[student])


def test_no_file_outside_the_students_space_was_changed(hostile):
    for path, digest in hostile["protected"].items():
        assert _digest(path) == digest, f"{path} was changed by a submission"
    assert not hasattr(__import__("builtins"), "PWNED")
    out = hostile["out"]
    for student in ("control", "early"):
        assert (out / "feedback" / student / A / f"{NB}.html").is_file()
    status = json.loads((out / "grading_status.json").read_text())
    assert not any(rec["student"] == "fake" for rec in status.values())


def test_a_detached_process_dies_with_its_kernel(hostile):
    assert (hostile["out"] / "grades.csv").read_text() == hostile["csv_after_grade"]
    psutil = pytest.importorskip("psutil")
    alive = [p for p in psutil.process_iter(["cmdline"]) if f"{BACKGROUND}" in " ".join(p.info["cmdline"] or [])]
    assert not alive, f"a submission's process outlived its grading: {alive}"


def test_nothing_of_another_student_or_the_solutions_reaches_a_feedback_page(hostile):
    out = hostile["out"]
    spy = (out / "feedback" / "spy" / A / f"{NB}.html").read_text()
    assert "cannot read" in spy  # the attack ran, and found nothing
    for secret in (MARKER, "BEGIN SOLUTION", "return sum(xs) / len(xs)", "early,"):
        for page in (out / "feedback").rglob("*.html"):
            if page.parent.parent.name not in ("control", "early"):  # their own pages name them
                assert secret not in page.read_text(), f"{secret!r} leaked into {page}"


def test_tampering_is_reported_in_the_status_and_reason(hostile):
    rows = _csv(hostile["out"])
    for student, what in (("gradebook", "gradebook.db"), ("status", "grading_status.json"),
                          ("detached", "detached process"), ("transformer", "input_transformers_cleanup")):
        assert rows[student]["status"] == "tampering", (student, rows[student])
        assert what in rows[student]["reason"], (student, rows[student]["reason"])
    assert rows["control"]["status"] == "graded"


def test_the_sandbox_has_no_network_and_a_memory_limit(hostile):
    out = hostile["out"]
    network = json.dumps(nbformat.read(out / "autograded" / "network" / A / f"{NB}.ipynb", as_version=4).cells)
    assert "gaierror" in network or "OSError" in network or "Network is unreachable" in network
    memory = json.dumps(nbformat.read(out / "autograded" / "memory" / A / f"{NB}.ipynb", as_version=4).cells)
    assert "MemoryError" in memory


def test_grade_refuses_without_bubblewrap_and_says_how_to_install_it(tmp_path, monkeypatch):
    import pruning_course.grading.sandbox as sandbox

    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(GradingError, match="apt-get install bubblewrap.*--no-sandbox"):
        grade(tmp_path / "none", tmp_path / "out", SOLUTIONS)


def test_the_cli_refuses_in_one_line_without_bubblewrap(tmp_path, run, monkeypatch):
    import pruning_course.grading.sandbox as sandbox

    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    code, _, err = run("grade", str(tmp_path), "--out", str(tmp_path / "out"), "--solutions", str(SOLUTIONS))
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "bubblewrap" in lines[0] and "--no-sandbox" in lines[0], err


def test_no_sandbox_grades_as_before(tmp_path):
    notebooks = tmp_path / "notebooks"
    generate(SOLUTIONS, notebooks)
    release = nbformat.read(notebooks / A / f"{NB}.ipynb", as_version=4)
    subs = tmp_path / "subs"
    _put(subs, f"ann/{NB}.ipynb", _variant(release, add=ADD, mean=MEAN, clip=CLIP))
    report = grade(subs, tmp_path / "out", SOLUTIONS, timeout=20, sandbox=False)
    assert [g.score for g in report.grades] == [4.0]
    shutil.rmtree(tmp_path / "out")
