"""Grading never costs an honest student a point (issue #13, section 2).

Each submission here does the right thing in a way the autograder once got wrong: a pasted or
duplicated nbgrader cell, a name outside ASCII, one very long output line, ``exit()``.  They are
graded in one batch (and a zip with a damaged member into the same folder) on the fixture
assignment of ``tests/test_grading.py``; every correct answer must get its points.  Submissions
the autograder must refuse (symbolic links, hidden folders) are in the batch too, and must be
named in ``skipped.csv``.  The fast unit tests after it need no nbgrader run.
"""

from __future__ import annotations

import copy
import csv
import sqlite3
import unicodedata
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")
nbformat = pytest.importorskip("nbformat")

from test_grading import A, NB, SOLUTIONS, _csv, _put, grade_id_of  # noqa: E402

from pruning_course.grading import grade  # noqa: E402
from pruning_course.grading.batch import backup_gradebook  # noqa: E402
from pruning_course.grading.notebooks import Catalog  # noqa: E402
from pruning_course.grading.submissions import (  # noqa: E402
    discover_submissions,
    extract_zip,
    prepare_submission,
)

SOURCE = nbformat.read(SOLUTIONS / A / f"{NB}.ipynb", as_version=4)  # full marks when submitted


def _index(nb, gid: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if grade_id_of(c) == gid)


def _with(nb, at: int, cell):
    out = copy.deepcopy(nb)
    out.cells.insert(at, cell)
    return out


def _foreign_test_cell():
    """A graded test cell of another notebook (its grade id is not in this one; it fails here)."""
    cell = nbformat.v4.new_code_cell("assert prune_model(sparsity=0.5) == 0.5")
    cell.metadata["nbgrader"] = {"grade": True, "grade_id": "test_prune", "locked": True, "points": 3,
                                 "schema_version": 3, "solution": False, "task": False}
    return cell


def _duplicates() -> dict[str, object]:
    """Correct notebooks with one extra nbgrader cell each (nbgrader: ``KeyError: 'grade_id'``)."""
    backup = copy.deepcopy(SOURCE.cells[_index(SOURCE, "add")])  # an older attempt, kept above
    backup.source = "def add(a, b):\n    return 0  # first try"
    backup.id = "add-backup"
    setup = copy.deepcopy(SOURCE.cells[_index(SOURCE, "setup")])
    setup.id = "setup-again"
    markdown = nbformat.v4.new_markdown_cell("My notes on mean()")
    markdown.metadata["nbgrader"] = dict(SOURCE.cells[_index(SOURCE, "test_mean")].metadata["nbgrader"])
    return {
        "backup_copy": _with(SOURCE, _index(SOURCE, "add"), backup),
        "setup_twice": _with(SOURCE, _index(SOURCE, "setup") + 1, setup),
        "foreign_test": _with(SOURCE, len(SOURCE.cells), _foreign_test_cell()),
        "shared_id_markdown": _with(SOURCE, _index(SOURCE, "mean"), markdown),
    }


def _source_with(gid: str, extra: str):
    nb = copy.deepcopy(SOURCE)
    nb.cells[_index(nb, gid)].source += "\n" + extra
    return nb


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    subs = tmp_path_factory.mktemp("submissions")
    for student, nb in _duplicates().items():
        _put(subs, f"{student}/{NB}.ipynb", nb)
    _put(subs, f"张伟_{NB}.ipynb", SOURCE)
    _put(subs, f"{unicodedata.normalize('NFC', 'José')}/{NB}.ipynb", SOURCE)
    half = copy.deepcopy(SOURCE)  # Josè only did add()
    for gid in ("mean", "clip"):
        half.cells[_index(half, gid)].source = half.cells[_index(half, gid)].source.split("\n")[0] + "\n    raise NotImplementedError()"
    _put(subs, f"Josè/{NB}.ipynb", half)
    _put(subs, f"loud/{NB}.ipynb", _source_with("add", 'print("x" * 30_000_000)'))
    _put(subs, f"quitter/{NB}.ipynb", _source_with("mean", "import time\nexit()\ntime.sleep(1)"))
    # refused: links (one to the solutions themselves), hidden and system folders
    (subs / "mallory").symlink_to(SOLUTIONS / A, target_is_directory=True)
    (subs / f"trudy_{NB}.ipynb").symlink_to(SOLUTIONS / A / f"{NB}.ipynb")
    _put(subs, f"feedback/{NB}.ipynb", SOURCE)
    _put(subs, f".oscar/{NB}.ipynb", SOURCE)
    _put(subs, f"loud/.ipynb_checkpoints/{NB}-checkpoint.ipynb", SOURCE)
    out = tmp_path_factory.mktemp("graded")
    report = grade(subs, out, SOLUTIONS, timeout=30)
    print(f"\n{report}")
    with open(out / "skipped.csv", newline="") as f:
        skipped = {r["file"]: r["reason"] for r in csv.DictReader(f)}
    return {"report": report, "out": out, "skipped": skipped}


# ---------------------------------------------------------------------------------------------
# one batch of honest students
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("student", sorted(_duplicates()))
def test_pasted_or_duplicated_nbgrader_cells_cost_nothing(honest, student):
    g = honest["report"].find(student, NB)
    assert (g.score, g.max_score, g.status) == (4, 4, "graded"), g.reason
    assert "grading ignored the nbgrader metadata of cell" in g.reason and "ran as plain cells" in g.reason
    if student == "foreign_test":
        assert "'test_prune' is not one of this notebook's" in g.reason


def test_unicode_names_keep_distinct_ids_end_to_end(honest):
    rows = _csv(honest["out"])
    jose, josè = unicodedata.normalize("NFC", "José"), unicodedata.normalize("NFC", "Josè")
    assert (rows["张伟"]["score"], rows[jose]["score"], rows[josè]["score"]) == ("4", "4", "1")
    for student in ("张伟", jose, josè):
        assert (honest["out"] / "feedback" / student / A / f"{NB}.html").is_file()
        assert (honest["out"] / "autograded" / student / A / f"{NB}.ipynb").is_file()


def test_one_huge_output_line_is_cut_in_bytes(honest):
    g = honest["report"].find("loud", NB)
    assert (g.score, g.status) == (4, "graded"), g.reason
    graded = honest["out"] / "autograded" / "loud" / A / f"{NB}.ipynb"
    feedback = honest["out"] / "feedback" / "loud" / A / f"{NB}.html"
    assert graded.stat().st_size < 1_000_000 and feedback.stat().st_size < 1_000_000
    cell = nbformat.read(graded, as_version=4).cells[_index(SOURCE, "add")]
    text = "".join(o.get("text", "") for o in cell.outputs)
    assert text.startswith("xxxx") and "bytes cut]" in text
    assert "bytes cut]" in feedback.read_text()


def test_exit_is_blamed_on_the_cell_that_called_it(honest):
    g = honest["report"].find("quitter", NB)
    where = f"cell {_index(SOURCE, 'mean') + 1} (mean)"
    assert g.status == "kernel_died"
    assert f"{where} called exit() or quit()" in g.reason, g.reason
    assert "the kernel died in" not in g.reason  # no later cell is blamed
    assert g.score >= 1  # test_add ran before the exit


def test_links_and_hidden_folders_are_refused_and_listed(honest):
    skipped = honest["skipped"]
    assert "a symbolic link to a folder; not followed" in skipped["mallory"]
    assert "a symbolic link, not a submitted file; not followed" in skipped[f"trudy_{NB}.ipynb"]
    assert "folder named 'feedback'" in skipped[f"feedback/{NB}.ipynb"]
    assert "hidden folder '.oscar'" in skipped[f".oscar/{NB}.ipynb"]
    assert "Jupyter's autosave copies" in skipped[f"loud/.ipynb_checkpoints/{NB}-checkpoint.ipynb"]
    graded = {g.student for g in honest["report"].grades}
    assert not graded & {"mallory", "trudy", "feedback", "oscar"}


def test_damaged_zip_member_is_skipped_and_the_rest_graded(honest, tmp_path):
    archive = tmp_path / "late.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"yan/{NB}.ipynb", nbformat.writes(SOURCE))
        zf.writestr(f"zed/{NB}.ipynb", nbformat.writes(SOURCE))
    _break_crc(archive, f"yan/{NB}.ipynb")
    report = grade(archive, honest["out"], SOLUTIONS, timeout=30)
    print(report)
    assert [(g.student, g.score) for g in report.grades] == [("zed", 4)]
    assert [name for name, _ in report.skipped] == [f"yan/{NB}.ipynb"]
    assert "CRC" in report.skipped[0][1]
    assert f"yan/{NB}.ipynb" in (honest["out"] / "skipped.csv").read_text()
    assert _csv(honest["out"])["张伟"]["score"] == "4"  # earlier grades kept
    # the gradebook as it was before this run is kept
    assert len(list((honest["out"] / "backups").glob("gradebook-*.db"))) == 1


def _break_crc(archive: Path, member: str) -> None:
    """Flip one byte of a stored member's data, so reading it fails its CRC check."""
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(member)
    data = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 10] ^= 0xFF
    archive.write_bytes(bytes(data))


def test_backups_never_lose_a_grade(honest, tmp_path):
    db = honest["out"] / "gradebook.db"
    folder = tmp_path / "backups"
    folder.mkdir()
    for k in range(25):
        (folder / f"gradebook-20200101-0000{k:02d}.db").write_bytes(db.read_bytes())
    # the third-oldest backup holds a grade nothing newer has (an instructor's manual score)
    unique = folder / "gradebook-20200101-000002.db"
    with sqlite3.connect(unique) as con:
        assert con.execute("UPDATE grade SET manual_score = 0.5 WHERE rowid = 1").rowcount == 1
    con.close()
    (folder / "notes.txt").write_text("not a backup")
    new = backup_gradebook(db, folder, keep=20)
    left = sorted(p.name for p in folder.glob("gradebook-*.db"))
    assert len(left) == 21 and new.name in left and unique.name in left
    assert left[:2] == [unique.name, "gradebook-20200101-000006.db"]
    assert (folder / "notes.txt").exists()


# ---------------------------------------------------------------------------------------------
# fast unit tests
# ---------------------------------------------------------------------------------------------


def test_student_ids_of_every_script_stay_distinct(tmp_path):
    catalog = Catalog(tmp_path, {"03_wanda": ["03_wanda"]})
    nfc, nfd = unicodedata.normalize("NFC", "José"), unicodedata.normalize("NFD", "José")
    names = {
        "张伟_03_wanda.ipynb": 1, f"{nfc}/03_wanda.ipynb": 2, "Josè/03_wanda.ipynb": 3,
        f"{nfd}_03_wanda.ipynb": 4,  # the same José, typed on a Mac: one student, the newest file
        "Jane Doe/03_wanda.ipynb": 5, "Jane, Doe/03_wanda.ipynb": 6, "Jane_Doe/03_wanda.ipynb": 7,
        f"{'长' * 60}甲/03_wanda.ipynb": 8, f"{'长' * 60}乙/03_wanda.ipynb": 9,
    }
    for rel, stamp in names.items():
        p = tmp_path / "in" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
        import os

        os.utime(p, (1000 + stamp, 1000 + stamp))
    subs, skipped = discover_submissions(tmp_path / "in", catalog)
    assert skipped == []
    ids = {s.student: s for s in subs}
    assert len(ids) == 8  # nine files, José twice
    assert {"张伟", nfc, "Josè", "Jane_Doe"} <= set(ids)
    assert ids[nfc].origin == f"{nfd}_03_wanda.ipynb"
    janes = sorted(i for i in ids if i.startswith("Jane_Doe"))
    assert len(janes) == 3 and all(j == "Jane_Doe" or len(j) == len("Jane_Doe-123456") for j in janes)
    assert "another submitted name normalises to 'Jane_Doe' too" in ids[janes[1]].notes[0]
    long_ids = [i for i in ids if i.startswith("长")]
    assert len(long_ids) == 2 and all(len(i.encode()) <= 100 for i in long_ids)
    # the same names always get the same ids
    again, _ = discover_submissions(tmp_path / "in", catalog)
    assert sorted(s.student for s in again) == sorted(ids)


def test_extract_zip_skips_a_member_that_fails_its_crc(tmp_path):
    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for name in ("a", "b", "c"):
            zf.writestr(f"{name}/{NB}.ipynb", nbformat.writes(SOURCE))
        zf.writestr(f"__MACOSX/a/._{NB}.ipynb", b"\0\5\26\7")
    _break_crc(archive, f"b/{NB}.ipynb")
    dest = tmp_path / "out"
    skipped = extract_zip(archive, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.ipynb")) == [f"a/{NB}.ipynb", f"c/{NB}.ipynb"]
    assert [name for name, _ in skipped] == [f"b/{NB}.ipynb", f"__MACOSX/a/._{NB}.ipynb"]
    assert "CRC" in skipped[0][1] and "macOS" in skipped[1][1]


def test_prepare_strips_stray_grade_ids(tmp_path):
    for name, nb in _duplicates().items():
        path = _put(tmp_path, f"{name}.ipynb", nb)
        prepared, why, restored, notes = prepare_submission(path, SOURCE)
        assert why is None and restored == []
        ids = [grade_id_of(c) for c in prepared.cells if grade_id_of(c)]
        assert ids == [grade_id_of(c) for c in SOURCE.cells], name  # each once, in order
        assert len(prepared.cells) == len(SOURCE.cells) + 1  # the extra cell stays, as a plain cell
        assert len(notes) == 1 and "ran as plain cells" in notes[0]
    # the right copy keeps the id: the code cell, not the markdown one; the solution below the backup
    prepared, *_ = prepare_submission(tmp_path / "shared_id_markdown.ipynb", SOURCE)
    assert prepared.cells[_index(prepared, "test_mean")].cell_type == "code"
    prepared, *_ = prepare_submission(tmp_path / "backup_copy.ipynb", SOURCE)
    assert "return 0" not in prepared.cells[_index(prepared, "add")].source
