"""The course commands as a new instructor runs them on a bare machine.

The real console script (``<venv>/bin/pruning-course``) runs in a child process whose ``PATH``
holds no virtualenv, with an empty ``TMPDIR``, an empty model cache and an empty home: nothing
an earlier run left behind can make these pass. nbgrader creates a gradebook by calling the
``alembic`` console script by name, which is found only on the venv's ``PATH``; these tests
failed on every machine where the venv was not activated until the gradebook was made
in-process. After each command, failed or not, the temp dir must be empty again.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")

SOLUTIONS = Path(__file__).parent / "fixtures" / "grading" / "solutions"
A = NB = "fixture_basics"
SCRIPT = Path(sys.executable).parent / "pruning-course"


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """Run the installed ``pruning-course`` as on a machine that has never run it."""
    if not SCRIPT.is_file():
        pytest.skip(f"the console script is not installed next to {sys.executable}")
    root = tmp_path_factory.mktemp("bare")
    # a temp dir with a long path, as on macOS (/var/folders/...): kernels that use multiprocessing
    # put AF_UNIX sockets in theirs, and a socket path over 108 bytes fails
    tmpdir, cache, home = root / "tmp" / ("long-temp-dir-" + "x" * 40), root / "cache", root / "home"
    for d in (tmpdir, cache, home):
        d.mkdir(parents=True)
    system_path = os.pathsep.join(p for p in ("/usr/local/bin", "/usr/bin", "/bin") if Path(p).is_dir())
    venv_bin = str(Path(sys.executable).parent)
    assert venv_bin not in system_path.split(os.pathsep)
    env = {"PATH": system_path, "TMPDIR": str(tmpdir), "PRUNING_COURSE_CACHE": str(cache), "HOME": str(home),
           "LANG": "C.UTF-8"}

    def scratch_dirs():
        return set(Path("/tmp").glob("pcg-*")) if Path("/tmp").is_dir() else set()

    def run(*argv, cwd=root):
        before = scratch_dirs()
        result = subprocess.run([str(SCRIPT), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        left = sorted(p.name for p in tmpdir.iterdir()) + sorted(str(p) for p in scratch_dirs() - before)
        for p in tmpdir.iterdir():  # the next command starts from an empty temp dir again
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return result, left

    return {"run": run, "root": root, "env": env}


def test_generate_validate_and_grade_without_a_venv_on_path(bare):
    run, root = bare["run"], bare["root"]
    notebooks = root / "notebooks"
    result, left = run("generate", "--solutions", str(SOLUTIONS), "--notebooks", str(notebooks))
    assert result.returncode == 0, result.stderr
    assert (notebooks / A / f"{NB}.ipynb").is_file()
    assert left == [], f"generate left {left} in the temp dir"

    result, left = run("validate", "--solutions", str(SOLUTIONS), "--notebooks", str(notebooks), "--timeout", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alembic" not in result.stderr
    assert left == [], f"validate left {left} in the temp dir"

    submissions = root / "submissions"
    (submissions / "alice").mkdir(parents=True)
    solution = json.loads((SOLUTIONS / A / f"{NB}.ipynb").read_text())
    first = next(c for c in solution["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("solution"))
    first["source"] = ("import multiprocessing\nmanager = multiprocessing.Manager()  # a listening socket in TMPDIR\n"
                       "manager.shutdown()\n" + "".join(first["source"]))
    (submissions / "alice" / f"{NB}.ipynb").write_text(json.dumps(solution))
    (submissions / "bob").mkdir()
    shutil.copy(notebooks / A / f"{NB}.ipynb", submissions / "bob" / f"{NB}.ipynb")
    (submissions / f"dave_{NB}.ipynb").write_text("{ not a notebook")
    out = root / "graded"
    result, left = run("grade", str(submissions), "--out", str(out), "--solutions", str(SOLUTIONS), "--timeout", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert left == [], f"grade left {left} in the temp dir"
    with open(out / "grades.csv", newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert float(rows["alice"]["score"]) == float(rows["alice"]["max_score"]) > 0
    assert float(rows["bob"]["score"]) == 0 and float(rows["dave"]["score"]) == 0
    assert (out / "gradebook.db").read_bytes()[:16] == b"SQLite format 3\x00"


def test_a_failed_validate_leaves_nothing_in_the_temp_dir(bare, tmp_path):
    run = bare["run"]
    broken = tmp_path / "solutions"
    shutil.copytree(SOLUTIONS, broken)
    nb_path = broken / A / f"{NB}.ipynb"
    nb = json.loads(nb_path.read_text())
    for cell in nb["cells"]:  # every solution cell now raises: the solutions cannot score full marks
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution"):
            cell["source"] = "### BEGIN SOLUTION\nraise RuntimeError('broken on purpose')\n### END SOLUTION\n"
    nb_path.write_text(json.dumps(nb))
    notebooks = tmp_path / "notebooks"
    result, left = run("generate", "--solutions", str(broken), "--notebooks", str(notebooks))
    assert result.returncode == 0, result.stderr
    result, left = run("validate", "--solutions", str(broken), "--notebooks", str(notebooks), "--timeout", "30")
    assert result.returncode == 1, result.stdout + result.stderr
    assert left == [], f"a failed validate left {left} in the temp dir"


def test_prune_and_eval_on_a_tiny_model_leave_nothing_in_the_temp_dir(bare, tmp_path):
    run = bare["run"]
    saved, out = tmp_path / "pruned", tmp_path / "out.json"
    tiny = ["--model", "tiny-llama", "--seqlen", "32", "--max-eval-windows", "2", "--quiet"]
    result, left = run("prune", "--method", "magnitude", "--sparsity", "0.5", "--save", str(saved), *tiny)
    assert result.returncode == 0, result.stderr
    assert left == [], f"prune left {left} in the temp dir"
    result, left = run("eval", "--model", str(saved), "--json", str(out), *tiny[2:])
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert left == [], f"eval left {left} in the temp dir"
