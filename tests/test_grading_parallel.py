"""Grading a class in parallel (``grade --jobs N``), in shards (``--shard K/N``) and merging the
shards' outputs (``grade merge``), on the tiny fixture assignment of ``test_grading.py``.

One batch of six students is graded four ways: ``--jobs 1``, ``--jobs 2``, and as shards 1/2 and
2/2 merged into one folder. In the first two runs a watcher kills the grading worker while it
grades ``zed`` (a real worker crash, not a kernel's): the crash is blamed on zed alone, a fresh
worker carries on, and every run must produce the same ``grades.csv``.
"""

from __future__ import annotations

import copy
import csv
import sqlite3
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")
nbformat = pytest.importorskip("nbformat")
psutil = pytest.importorskip("psutil")

from pruning_course.cli import main as cli_main  # noqa: E402
from pruning_course.grading import GradingError, grade, merge_outputs, shard_of  # noqa: E402
from pruning_course.grading.course import _lanes, merge_submission  # noqa: E402
from pruning_course.grading.batch import _write_csv  # noqa: E402

SOLUTIONS = Path(__file__).parent / "fixtures" / "grading" / "solutions"
A = NB = "fixture_basics"
ADD = "def add(a, b):\n    return a + b"
MEAN = "def mean(xs):\n    return sum(xs) / len(xs)"
CLIP = "def clip(x, lo, hi):\n    return max(lo, min(hi, x))"
LOOKS_AROUND = ("import os\nprint('SEES', sorted(os.listdir('../..')), sorted(os.listdir('../../../submitted')))\n"
                + ADD)


def _student_version():
    source = nbformat.read(SOLUTIONS / A / f"{NB}.ipynb", as_version=4)
    release = copy.deepcopy(source)
    for cell in release.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            cell.source = cell.source.split("    ### BEGIN SOLUTION")[0] + "    raise NotImplementedError()"
    return source, release


def _with(nb, **code):
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in code:
            cell.source = code[gid]
    return nb


@pytest.fixture(scope="module")
def submissions(tmp_path_factory):
    source, release = _student_version()
    subs = tmp_path_factory.mktemp("class")
    students = {
        "alice": source,
        "bob": release,
        "carol": _with(release, add=ADD, mean="def mean(xs):\n    return 0", clip=CLIP),
        "grace": _with(release, add=ADD, mean="import os\nos._exit(1)", clip=CLIP),
        "mallory": _with(release, add=LOOKS_AROUND, mean=MEAN, clip=CLIP),
        "zed": _with(release, add="import time\ntime.sleep(6)\n" + ADD, mean=MEAN, clip=CLIP),
    }
    for name, nb in students.items():
        (subs / name).mkdir()
        nbformat.write(nb, subs / name / f"{NB}.ipynb")
    return subs


def _kill_the_worker_grading(student: str, out: Path, stop: threading.Event) -> list[int]:
    """Watch for the worker that writes ``student``'s log and SIGKILL it (once); return its pid."""
    killed: list[int] = []
    log = (out / "logs" / student / f"{A}.log").resolve()

    def watch():
        while not stop.is_set() and not killed:
            if log.exists() and "Autograding" in log.read_text(errors="replace"):
                for proc in psutil.process_iter(["cmdline"]):
                    try:
                        if "_worker_main" in " ".join(proc.info["cmdline"] or []) and \
                                any(Path(f.path) == log for f in proc.open_files()):
                            proc.kill()
                            killed.append(proc.pid)
                    except psutil.Error:
                        pass
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return killed


def _rows(out: Path) -> list[dict]:
    with open(out / "grades.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(submissions, tmp_path_factory):
    result = {}
    for jobs in (1, 2):
        out = tmp_path_factory.mktemp(f"jobs{jobs}")
        stop = threading.Event()
        killed = _kill_the_worker_grading("zed", out, stop)
        start = time.time()
        result[jobs] = {"report": grade(submissions, out, SOLUTIONS, timeout=30, jobs=jobs, sandbox=False),
                        "out": out, "killed": list(killed), "seconds": time.time() - start}
        stop.set()
    shards = []
    for k in (1, 2):
        out = tmp_path_factory.mktemp(f"shard{k}")
        grade(submissions, out, SOLUTIONS, timeout=30, jobs=1, shard=(k, 2), sandbox=False)
        shards.append(out)
    merged = tmp_path_factory.mktemp("merged")
    assert cli_main(["grade", "merge", *map(str, shards), "--out", str(merged), "--solutions", str(SOLUTIONS)]) == 0
    result.update(shards=shards, merged=merged)
    return result


def test_a_crashed_worker_costs_only_its_student_and_jobs_2_gives_the_csv_of_jobs_1(runs):
    for jobs in (1, 2):
        assert len(runs[jobs]["killed"]) == 1, f"--jobs {jobs}: the watcher never found zed's worker"
        zed = runs[jobs]["report"].find("zed", NB)
        assert (zed.score, zed.status) == (0, "error")
        assert "grading process died" in zed.reason
    one, two = _rows(runs[1]["out"]), _rows(runs[2]["out"])
    assert one == two
    scores = {r["student"]: (r["score"], r["status"]) for r in one}
    assert scores == {"alice": ("4", "graded"), "bob": ("0", "graded"), "carol": ("2", "graded"),
                      "grace": ("1", "kernel_died"), "mallory": ("4", "graded"), "zed": ("0", "error")}
    print({jobs: round(runs[jobs]["seconds"], 1) for jobs in (1, 2)})


def test_each_student_is_graded_in_a_course_folder_of_its_own(runs):
    """Even without the sandbox, the course folder a submission runs in holds only its student."""
    graded = nbformat.read(runs[2]["out"] / "autograded" / "mallory" / A / f"{NB}.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in graded.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "SEES ['mallory'] ['mallory']" in printed


def test_shards_partition_the_class_and_their_merge_equals_one_run(runs, submissions):
    students = sorted(p.name for p in submissions.iterdir())
    in_shard = [{r["student"] for r in _rows(out)} for out in runs["shards"]]
    assert in_shard[0].isdisjoint(in_shard[1]) and in_shard[0] | in_shard[1] == set(students)
    assert all(s in in_shard[shard_of(s, 2) - 1] for s in students)
    assert shard_of("alice", 2) == shard_of("alice", 2) and {shard_of(f"s{i}", 3) for i in range(40)} == {1, 2, 3}
    merged = {r["student"]: r for r in _rows(runs["merged"])}
    # no worker was killed in the shard runs: zed's sleep is within the limits and scores
    assert merged.pop("zed")["score"] == "4"
    one = {r["student"]: r for r in _rows(runs[1]["out"]) if r["student"] != "zed"}
    assert merged == one
    for student in students:
        assert (runs["merged"] / "feedback" / student / A / f"{NB}.html").is_file()
    # merging again into the same folder changes nothing
    assert cli_main(["grade", "merge", *map(str, runs["shards"]), "--out", str(runs["merged"]),
                     "--solutions", str(SOLUTIONS)]) == 0
    assert {r["student"]: r for r in _rows(runs["merged"])} == {**one, "zed": {**one["alice"], "student": "zed"}}


def test_merge_refuses_bad_inputs_with_one_line(runs, tmp_path, capsys):
    assert cli_main(["grade", "merge", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "has no gradebook.db" in capsys.readouterr().err
    with pytest.raises(GradingError, match="both an input and the output"):
        merge_outputs([runs["shards"][0]], runs["shards"][0], SOLUTIONS)


def test_gradebook_scores_are_revalidated_on_read(runs, tmp_path):
    """A gradebook row changed behind the grader's back (a score above the cell's points, huge
    extra credit) counts nothing in grades.csv, and is refused when merged."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(runs[1]["out"], out)
    with sqlite3.connect(out / "gradebook.db") as con:
        con.execute("UPDATE grade SET manual_score = 1000 WHERE notebook_id IN (SELECT sn.id FROM submitted_notebook sn "
                    "JOIN submitted_assignment sa ON sn.assignment_id = sa.id WHERE sa.student_id = 'bob')")
        con.execute("UPDATE grade SET extra_credit = 125 WHERE notebook_id IN (SELECT sn.id FROM submitted_notebook sn "
                    "JOIN submitted_assignment sa ON sn.assignment_id = sa.id WHERE sa.student_id = 'carol')")
    con.close()
    _write_csv(out, out / "gradebook.db")
    rows = {r["student"]: r["score"] for r in _rows(out)}
    assert rows["bob"] == "0" and rows["carol"] == "2" and rows["alice"] == "4"
    with pytest.raises(GradingError, match="outside"):
        merge_submission(out / "gradebook.db", runs[2]["out"] / "gradebook.db", "bob", A, manual=True)


def test_lanes_keep_a_task_with_the_task_it_needs():
    tasks = [{"limit": 10}, {"limit": 1, "needs": 0}, {"limit": 10}, {"limit": 1, "needs": 2}, {"limit": 5}]
    lanes = _lanes(tasks, 2)
    assert sorted(i for lane in lanes for i in lane) == list(range(5))
    assert any(lane[:2] == [0, 1] for lane in lanes) and any([2, 3] == lane[:2] or lane[-2:] == [2, 3] for lane in lanes)
    assert len(_lanes(tasks, 8)) == 3 and _lanes(tasks, 1) == [[0, 1, 2, 3, 4]]


def test_bad_jobs_and_shard_are_refused_before_anything_runs(tmp_path, capsys):
    for args, said in ((["--jobs", "0"], "must be at least 1"), (["--shard", "3/2"], "1 <= K <= N"),
                       (["--shard", "x"], "expected K/N")):
        with pytest.raises(SystemExit):
            cli_main(["grade", str(tmp_path), "--out", str(tmp_path / "o"), *args])
        assert said in capsys.readouterr().err
    with pytest.raises(GradingError, match="jobs must be at least 1"):
        grade(tmp_path, tmp_path / "o", SOLUTIONS, jobs=0, sandbox=False)
    assert not (tmp_path / "o").exists()
