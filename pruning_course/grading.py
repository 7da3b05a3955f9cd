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
repository.  nbgrader runs in worker processes watched from outside: a worker that runs over
a student's wall-clock limit or dies is killed together with its kernels, that student is
graded as the unmodified student version (zero) with the reason, and a fresh worker carries
on with the next student.  Kernels run the grading Python (``sys.executable``, which needs
``ipykernel``: the ``course`` extra), import this package (``pruning_course.checks``) from
where it is now, and get ``PRUNING_COURSE_QUICK=1``; nbgrader sets
``NBGRADER_EXECUTION=autograde`` while it grades.

Submission layouts accepted by :func:`grade` (a folder, or a ``.zip`` of one; nested folders
above these are fine, files other than ``.ipynb`` are ignored):

    <student>/<assignment>/<notebook>.ipynb    nbgrader's own (e.g. its ``submitted/`` folder)
    <student>/<notebook>.ipynb                 one folder per student (Moodle-style exports)
    <student>_<notebook>.ipynb                 flat; ``-`` or ``.`` also separate, and a
                                               trailing ``-2`` / `` (2)`` is ignored (Canvas,
                                               browser re-downloads)

Student ids are the folder name or file-name prefix, with characters other than letters,
digits and ``._@+-`` replaced by ``_``.  If one student has several files for one notebook,
the newest is graded and the others are named in the reason.

:func:`grade` writes into ``out_dir`` (safe to re-run; earlier students are kept):

    grades.csv                 student, assignment, notebook, score, max_score, status, reason
    gradebook.db               the nbgrader gradebook (every grade ever recorded here)
    feedback/<student>/<assignment>/<notebook>.html   nbgrader feedback + a grading-notes box
    autograded/<student>/<assignment>/<notebook>.ipynb  the executed notebooks
    logs/<student>/<assignment>.log                   nbgrader's log of the run
    grading_status.json        status and reason of every graded notebook
    skipped.csv                files of the last run that could not be matched to a student

Statuses (most severe first): ``error`` (grading itself failed; scored as the unmodified
student version, i.e. zero), ``invalid`` (not a readable notebook; zero), ``missing`` (a
notebook of the assignment was not submitted; zero), ``kernel_died`` (the cells from the
crash on score zero), ``timeout`` (a cell hit the per-cell timeout and scored zero),
``cells_restored`` (deleted test cells were put back and graded), ``graded``.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import fnmatch
import html
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable

#: Default per-cell timeout (seconds) when grading; notebooks run in quick mode then.
DEFAULT_TIMEOUT = 300
COURSE_ID = "pruning-course"
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "autograder" / "nbgrader_config.py"

#: Student ids used by :func:`validate` for the two reference submissions.
SOLUTION_STUDENT = "reference-solution"
RELEASE_STUDENT = "unmodified-student-version"

STATUSES = ("error", "invalid", "missing", "kernel_died", "timeout", "cells_restored", "graded")
CSV_FIELDS = ("student", "assignment", "notebook", "score", "max_score", "status", "reason")

_IGNORE = (".ipynb_checkpoints", "__pycache__", "*.pyc", "feedback", ".DS_Store", "__MACOSX", ".*")
_MAX_NOTEBOOK_BYTES = 200 * 2**20
_CELL_METADATA_DROP = ("execution", "ExecuteTime")


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
                "score": _num(self.score), "max_score": _num(self.max_score),
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
            lines.append(f"  {g.student:<24} {g.notebook:<28} {_num(g.score):>6} / {_num(g.max_score):<6} "
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
            manual = f" (+{_num(v.manual_points)} graded by hand)" if v.manual_points else ""
            lines.append(f"{mark} {v.assignment}/{v.notebook}: solution {_num(v.solution_score)}/{_num(v.max_score)}, "
                         f"unmodified student version {_num(v.release_score)}/{_num(v.max_score)}{manual}")
            lines += [f"     problem: {p}" for p in v.problems]
            lines += [f"     warning: {w}" for w in v.warnings]
        for name in self.drift:
            lines.append(f"FAIL {name}: out of date, run `pruning-course generate`")
        lines.append(("all notebooks valid" if self.ok else f"{len(self.problems)} problem(s)")
                     + f" ({self.seconds:.0f} s)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Course catalogue
# ---------------------------------------------------------------------------------------------


@dataclass
class _Catalog:
    root: Path
    assignments: dict[str, list[str]]  # assignment -> notebook names (without .ipynb)

    @property
    def notebook_to_assignment(self) -> dict[str, str]:
        return {nb: a for a, nbs in self.assignments.items() for nb in nbs}


def _ignored(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pat) for pat in _IGNORE)


def _catalog(solutions_dir, assignments: Iterable[str] | None = None) -> _Catalog:
    root = Path(solutions_dir).resolve()
    if not root.is_dir():
        raise GradingError(f"solutions directory not found: {root}")
    found: dict[str, list[str]] = {}
    for d in sorted(root.iterdir()):
        if d.is_dir() and not _ignored(d.name):
            nbs = sorted(p.stem for p in d.glob("*.ipynb") if not _ignored(p.name))
            if nbs:
                found[d.name] = nbs
    if assignments is not None:
        wanted = [assignments] if isinstance(assignments, str) else list(assignments)
        unknown = sorted(set(wanted) - set(found))
        if unknown:
            raise GradingError(f"unknown assignment(s) {unknown}; {root} has {sorted(found)}")
        found = {a: found[a] for a in sorted(set(wanted))}
    if not found:
        raise GradingError(f"no assignments (folders with notebooks) in {root}")
    owners: dict[str, str] = {}
    for a, nbs in found.items():
        for nb in nbs:
            if nb in owners:
                raise GradingError(f"notebook name {nb!r} is used by assignments {owners[nb]!r} and {a!r}; "
                                   "notebook names must be unique across the course")
            owners[nb] = a
    return _Catalog(root, found)


# ---------------------------------------------------------------------------------------------
# The throwaway nbgrader course directory and its worker processes
# ---------------------------------------------------------------------------------------------

_WORKER = "import sys; from pruning_course.grading import _worker_main; _worker_main(sys.argv[1:])"


class _Course:
    """A temporary nbgrader course: ``source/``, ``release/``, ``submitted/``, ``autograded/``, ``feedback/``."""

    def __init__(self, catalog: _Catalog, db_path: Path | None = None, *, timeout: int = DEFAULT_TIMEOUT,
                 quick: bool = True, config: str | Path | None = None):
        self.catalog = catalog
        self.timeout = int(timeout)
        self.quick = quick
        import importlib.util

        missing = [m for m in ("nbgrader", "ipykernel", "nbconvert") if importlib.util.find_spec(m) is None]
        if missing:
            raise GradingError(f"grading needs {', '.join(missing)}: pip install 'pruning-course[course]'")
        config = Path(config or DEFAULT_CONFIG).resolve()
        if not config.is_file():
            raise GradingError(f"nbgrader course config not found: {config}")
        self.tmp = Path(tempfile.mkdtemp(prefix="pruning-course-grading-"))
        self.root = self.tmp / "course"
        self.root.mkdir()
        self.db_path = Path(db_path).resolve() if db_path else self.tmp / "gradebook.db"
        self._write_config(config)
        self._write_kernel_and_path()

    # -- setup ------------------------------------------------------------------------------
    def _write_config(self, course_config: Path) -> None:
        t = self.timeout
        timeout_error = {
            "ename": "CellTimeoutError",
            "evalue": f"the cell did not finish within {t} s and was interrupted",
            "traceback": [f"\x1b[0;31mCellTimeoutError\x1b[0m: the cell did not finish within {t} s and was "
                          "interrupted (an infinite loop, or far too slow)"],
        }
        text = "\n".join([
            "# written by pruning_course.grading for one run; the course policy is loaded first",
            "c = get_config()",
            f"load_subconfig({str(course_config)!r})",
            f"c.CourseDirectory.root = {str(self.root)!r}",
            f"c.CourseDirectory.db_url = {('sqlite:///' + str(self.db_path))!r}",
            f"c.CourseDirectory.course_id = {COURSE_ID!r}",
            f"c.Execute.timeout = {t}",
            f"c.ExecutePreprocessor.timeout = {t}",
            f"c.Execute.error_on_timeout = {timeout_error!r}",
            f"c.CourseExecute.interrupt_grace = {min(60, max(5, t // 10))}",
            f"c.Execute.iopub_timeout = {min(30, max(4, t))}",
            f"c.ExecutePreprocessor.iopub_timeout = {min(30, max(4, t))}",
            "",
        ])
        self.config_file = self.root / "nbgrader_config.py"
        self.config_file.write_text(text)

    def _write_kernel_and_path(self) -> None:
        spec = self.tmp / "jupyter" / "kernels" / "python3"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)", "language": "python", "metadata": {"debugger": False},
        }, indent=1))
        for d in ("jupyter_config", "jupyter_runtime", "ipython"):
            (self.tmp / d).mkdir()
        # only this package goes on the kernels' path, never the repository root
        pypath = self.tmp / "pythonpath"
        pypath.mkdir()
        package = Path(__file__).resolve().parent
        try:
            (pypath / package.name).symlink_to(package, target_is_directory=True)
        except OSError:
            shutil.copytree(package, pypath / package.name, ignore=shutil.ignore_patterns("__pycache__"))
        self.pythonpath = pypath

    def env(self) -> dict:
        env = dict(os.environ)
        for var in ("JPY_PARENT_PID", "NBGRADER_EXECUTION", "NBGRADER_VALIDATING"):
            env.pop(var, None)
        env.update({
            "PYTHONPATH": os.pathsep.join([str(self.pythonpath)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
            "JUPYTER_PATH": str(self.tmp / "jupyter"),
            "JUPYTER_CONFIG_DIR": str(self.tmp / "jupyter_config"),
            "JUPYTER_RUNTIME_DIR": str(self.tmp / "jupyter_runtime"),
            "IPYTHONDIR": str(self.tmp / "ipython"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "PRUNING_COURSE_QUICK": "1" if self.quick else "0",
            "PRUNING_COURSE_CELL_TIMEOUT": str(self.timeout),
            "MPLBACKEND": "Agg",
            "PYTHONWARNINGS": "ignore",
            "TQDM_DISABLE": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "TOKENIZERS_PARALLELISM": "false",
        })
        return env

    def add_sources(self, assignments: Iterable[str]) -> None:
        for a in assignments:
            dst = self.root / "source" / a
            if dst.exists():
                continue
            shutil.copytree(self.catalog.root / a, dst, ignore=lambda _d, names: [n for n in names if _ignored(n)])

    # -- paths ------------------------------------------------------------------------------
    def release_nb(self, a: str, nb: str) -> Path:
        return self.root / "release" / a / f"{nb}.ipynb"

    def submitted_dir(self, student: str, a: str) -> Path:
        return self.root / "submitted" / student / a

    def autograded_nb(self, student: str, a: str, nb: str) -> Path:
        return self.root / "autograded" / student / a / f"{nb}.ipynb"

    def feedback_html(self, student: str, a: str, nb: str) -> Path:
        return self.root / "feedback" / student / a / f"{nb}.html"

    # -- running nbgrader -----------------------------------------------------------------
    def run(self, tasks: list[dict]) -> list[dict]:
        """Run nbgrader tasks (``op``: generate | autograde | feedback) in worker processes.

        Each task may carry ``limit`` (seconds, default 600), ``log`` (a file that gets the
        task's nbgrader log) and ``needs`` (the index of a task that must succeed first).  One
        worker runs the tasks in order, so nbgrader is imported once per batch; a worker that runs over a task's limit, or dies, is killed together with its
        kernels, that task is recorded as failed, and a fresh worker carries on with the next
        task.  Returns one result per task: ``success``, ``error``, ``log`` and, when the
        worker had to be stopped, ``failure`` (a sentence)."""
        results: list[dict | None] = [None] * len(tasks)
        first = 0
        while first < len(tasks):
            need = tasks[first].get("needs")
            if need is not None and results[need] is not None and not results[need].get("success"):
                results[first] = {**tasks[first], "success": False, "failure": "skipped (the task it needs failed)"}
                first += 1
                continue
            first = self._run_worker(tasks, first, results)
        return [r or {**t, "success": False, "failure": "not run"} for t, r in zip(tasks, results)]

    def _run_worker(self, tasks: list[dict], first: int, results: list) -> int:
        """Start a worker at task ``first``; fill ``results``; return the next task to start at."""
        self._n_runs = getattr(self, "_n_runs", 0) + 1
        spec_file = self.tmp / f"run-{self._n_runs}.json"
        events_file = self.tmp / f"events-{self._n_runs}.jsonl"
        spec_file.write_text(json.dumps({"config": str(self.config_file), "tasks": tasks, "first": first,
                                         "events": str(events_file), "db": str(self.db_path)}))
        with open(self.tmp / "workers.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(spec_file)], cwd=self.root,
                                    env=self.env(), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        launched = time.monotonic()
        current, since, seen = None, launched, 0
        try:
            while True:
                exited = proc.poll() is not None
                lines = events_file.read_text().splitlines() if events_file.exists() else []
                for line in lines[seen:]:
                    if not line.endswith("}"):
                        break  # partly written; read again next time
                    ev = json.loads(line)
                    seen += 1
                    if ev["event"] == "start":
                        current, since = ev["index"], time.monotonic()
                    else:
                        results[ev["index"]] = ev["result"]
                        current = None
                if exited:
                    nxt = max([i + 1 for i in range(len(tasks)) if results[i] is not None] + [first])
                    if nxt < len(tasks):  # died: blame the task it was running (or the next one)
                        bad = current if current is not None else nxt
                        self._fail(tasks, results, bad, f"the grading process died (exit status {proc.returncode})")
                        return bad + 1
                    return len(tasks)
                if current is None:
                    if time.monotonic() - since > 300:  # stuck between tasks or at start-up
                        bad = max([i + 1 for i in range(len(tasks)) if results[i] is not None] + [first])
                        _kill_tree(proc)
                        self._fail(tasks, results, bad, "the grading process did not start the task within 300 s")
                        return bad + 1
                else:
                    limit = float(tasks[current].get("limit", 600))
                    if time.monotonic() - since > limit:
                        _kill_tree(proc)
                        self._fail(tasks, results, current,
                                   f"it took longer than the wall-clock limit of {limit:.0f} s and was stopped")
                        return current + 1
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                _kill_tree(proc)

    @staticmethod
    def _fail(tasks: list[dict], results: list, index: int, failure: str) -> None:
        results[index] = {**tasks[index], "success": False, "failure": failure}
        if tasks[index].get("log"):
            Path(tasks[index]["log"]).parent.mkdir(parents=True, exist_ok=True)
            with open(tasks[index]["log"], "a", encoding="utf-8") as f:
                f.write(f"[ERROR] {tasks[index]['op']} stopped: {failure}\n")

    def generate(self, assignments: Iterable[str]) -> None:
        assignments = list(assignments)
        self.add_sources(assignments)
        results = self.run([{"op": "generate", "assignment": a, "limit": 300} for a in assignments])
        bad = [r for r in results if not r.get("success")]
        if bad:
            log = (self.tmp / "workers.log").read_text(errors="replace")[-3000:]
            raise GradingError(f"nbgrader generate_assignment failed for {bad[0]['assignment']}: "
                               f"{_failure_summary(bad[0])}\n{log}")

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "_Course":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill the worker and everything it started (kernels run in their own sessions)."""
    victims = []
    try:
        import psutil

        try:
            parent = psutil.Process(proc.pid)
            victims = parent.children(recursive=True)
        except psutil.Error:
            pass
    except ImportError:  # pragma: no cover - psutil is a dependency
        psutil = None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    for v in victims:
        try:
            v.kill()
        except Exception:
            pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass


def _worker_main(argv: list[str]) -> None:
    """Entry point of the worker process: run nbgrader converters for a list of tasks."""
    import logging

    spec = json.loads(Path(argv[0]).read_text())
    from nbgrader.converters import Autograde, GenerateAssignment, GenerateFeedback
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.utils import capture_log
    from traitlets.config.loader import PyFileConfigLoader
    from traitlets.log import get_logger

    config_path = Path(spec["config"])
    cfg = PyFileConfigLoader(config_path.name, path=str(config_path.parent)).load_config()
    if "Autograde" not in cfg or "IgnorePattern" not in cfg:
        raise SystemExit(f"the course policy (autograder/nbgrader_config.py) was not loaded by {config_path}")
    _ensure_gradebook(Path(spec["db"]))
    log = get_logger()
    log.setLevel(logging.INFO)
    formatter = logging.Formatter("[%(levelname)s] %(message)s")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    log.addHandler(console)
    classes = {"generate": GenerateAssignment, "autograde": Autograde, "feedback": GenerateFeedback}

    def emit(event: dict) -> None:
        with open(spec["events"], "a") as f:
            f.write(json.dumps(event) + "\n")

    succeeded: dict[int, bool] = {}
    for index in range(spec["first"], len(spec["tasks"])):
        task = spec["tasks"][index]
        emit({"event": "start", "index": index})
        if succeeded.get(task.get("needs"), True) is False:
            succeeded[index] = False
            emit({"event": "done", "index": index,
                  "result": {**task, "success": False, "failure": "skipped (the task it needs failed)"}})
            continue
        start = time.time()
        task_log = None
        if task.get("log"):
            Path(task["log"]).parent.mkdir(parents=True, exist_ok=True)
            task_log = logging.FileHandler(task["log"], mode="a", encoding="utf-8")
            task_log.setFormatter(formatter)
            log.addHandler(task_log)
        print(f"---- {task['op']} {task['assignment']} {task.get('student', '')}", file=sys.stderr, flush=True)
        try:
            coursedir = CourseDirectory(config=cfg)
            coursedir.assignment_id = task["assignment"]
            if task.get("student"):
                coursedir.student_id = task["student"]
            app = classes[task["op"]](coursedir=coursedir, config=cfg)
            app.force = True
            if task["op"] == "generate":
                app.create_assignment = True
            elif task["op"] == "autograde":
                app.create_student = True
            result = capture_log(app)
        except Exception as exc:  # setting up the converter failed
            import traceback

            result = {"success": False, "error": traceback.format_exc(), "failure": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = round(time.time() - start, 2)
        log.info("%s %s in %.1f s", task["op"], "succeeded" if result.get("success") else "FAILED", result["seconds"])
        if task_log is not None:
            log.removeHandler(task_log)
            task_log.close()
        succeeded[index] = bool(result.get("success"))
        emit({"event": "done", "index": index, "result": {**task, **result}})


def _ensure_gradebook(db: Path) -> None:
    """Create an empty gradebook at ``db`` if there is none, from a cached empty one.

    Creating a gradebook runs nbgrader's alembic migrations (~3 s); an empty one is kept in the
    temp directory per nbgrader version and copied instead."""
    if db.exists():
        return
    from importlib.metadata import version

    from nbgrader.api import Gradebook

    uid = os.getuid() if hasattr(os, "getuid") else "user"
    template = Path(tempfile.gettempdir()) / f"pruning-course-empty-gradebook-{version('nbgrader')}-{uid}.db"
    if not template.exists() or template.read_bytes()[:16] != b"SQLite format 3\x00":
        fresh = template.with_name(f"{template.name}.{os.getpid()}.tmp")
        Gradebook(f"sqlite:///{fresh}", COURSE_ID).close()
        os.replace(fresh, template)
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, db)


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt))(?::\s*(.*))?$")


def _failure_summary(result: dict) -> str:
    """One line saying why an nbgrader task failed, from its log and traceback."""
    if result.get("failure"):
        return result["failure"]
    text = (result.get("log") or "") + "\n" + (result.get("error") or "")
    candidates = []
    for line in text.splitlines():
        line = line.strip()
        m = _EXC_LINE.match(line)
        if m and not m.group(1).endswith("NbGraderException"):
            candidates.append(line)
    if candidates:
        return _short(candidates[-1])
    errors = [ln[len("[ERROR] "):] for ln in text.splitlines() if ln.startswith("[ERROR]")]
    return _short(errors[0] if errors else "nbgrader reported an error (see the log)")


# ---------------------------------------------------------------------------------------------
# Notebook helpers
# ---------------------------------------------------------------------------------------------


def _nbformat():
    import nbformat

    return nbformat


def _nbmeta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def _grade_id(cell) -> str | None:
    return _nbmeta(cell).get("grade_id")


def _is_test(cell) -> bool:
    m = _nbmeta(cell)
    return bool(m.get("grade")) and not m.get("solution") and cell.get("cell_type") == "code"


def _normalize(nb) -> None:
    """Strip per-run noise (execution timings) and make cell ids present and unique."""
    seen: set[str] = set()
    for i, cell in enumerate(nb.cells):
        for key in _CELL_METADATA_DROP:
            cell.get("metadata", {}).pop(key, None)
        cid = cell.get("id")
        if not cid or not re.fullmatch(r"[a-zA-Z0-9-_]{1,64}", str(cid)) or cid in seen:
            base = re.sub(r"[^a-zA-Z0-9-_]", "-", str(_grade_id(cell) or cid or f"cell-{i}"))[:56] or f"cell-{i}"
            cid, k = base, 1
            while cid in seen:
                cid, k = f"{base}-{k}", k + 1
            cell["id"] = cid
        seen.add(cid)
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 5))


def _dumps(nb) -> str:
    text = _nbformat().writes(nb)
    return text if text.endswith("\n") else text + "\n"


def _read_notebook(path: Path):
    nbformat = _nbformat()
    with open(path, encoding="utf-8-sig") as f:
        return nbformat.read(f, as_version=4)


# ---------------------------------------------------------------------------------------------
# generate / drift
# ---------------------------------------------------------------------------------------------


def _release_files(course: _Course, assignments: Iterable[str]) -> dict[str, bytes]:
    """Student files of the given assignments, as ``{"<assignment>/<path>": bytes}`` (notebooks normalised)."""
    out = {}
    for a in assignments:
        base = course.root / "release" / a
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(base)
            if path.is_dir() or any(_ignored(p) for p in rel.parts):
                continue
            if path.suffix == ".ipynb":
                nb = _read_notebook(path)
                _normalize(nb)
                data = _dumps(nb).encode()
            else:
                data = path.read_bytes()
            out[f"{a}/{rel.as_posix()}"] = data
    return out


def _drift_from(files: dict[str, bytes], catalog: _Catalog, notebooks_dir) -> list[str]:
    root = Path(notebooks_dir)
    drifted = [name for name, data in files.items()
               if not (root / name).is_file() or (root / name).read_bytes() != data]
    # student notebooks that no source produces any more
    if root.is_dir():
        for a in catalog.assignments:
            for path in sorted((root / a).glob("*.ipynb")) if (root / a).is_dir() else []:
                name = f"{a}/{path.name}"
                if name not in files:
                    drifted.append(name)
    return sorted(set(drifted))


def generate(solutions_dir="solutions", notebooks_dir="notebooks", assignments=None, *,
             config: str | Path | None = None) -> list[Path]:
    """Write the student versions of ``solutions/<a>/`` into ``notebooks/<a>/`` with ``nbgrader
    generate_assignment``.  Output is byte-for-byte reproducible (no timestamps, cell ids kept
    from the sources); files whose content did not change are not rewritten, student notebooks
    that no source produces any more are removed.  Returns the paths of all student files."""
    catalog = _catalog(solutions_dir, assignments)
    out_root = Path(notebooks_dir)
    with _Course(catalog, config=config) as course:
        course.generate(catalog.assignments)
        files = _release_files(course, catalog.assignments)
    written = []
    for name, data in sorted(files.items()):
        dst = out_root / name
        if not dst.is_file() or dst.read_bytes() != data:
            dst.parent.mkdir(parents=True, exist_ok=True)
            _write_bytes(dst, data)
        written.append(dst)
    for a in catalog.assignments:
        for stale in sorted((out_root / a).glob("*.ipynb")):
            if f"{a}/{stale.name}" not in files:
                stale.unlink()
    return written


def drift(solutions_dir="solutions", notebooks_dir="notebooks", assignments=None, *,
          config: str | Path | None = None) -> list[str]:
    """Student files (``"<assignment>/<notebook>.ipynb"``) that differ from what :func:`generate`
    would write now, are missing, or have no source any more.  Empty when all is up to date."""
    catalog = _catalog(solutions_dir, assignments)
    with _Course(catalog, config=config) as course:
        course.generate(catalog.assignments)
        files = _release_files(course, catalog.assignments)
    return _drift_from(files, catalog, notebooks_dir)


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------


def validate(solutions_dir="solutions", notebooks_dir="notebooks", assignments=None, *,
             timeout: int = DEFAULT_TIMEOUT, quick: bool = True,
             config: str | Path | None = None) -> ValidationReport:
    """Autograde every solution notebook (it must get full marks on every test cell) and every
    unmodified student version from ``notebooks_dir`` (it must score zero on every graded cell),
    and check that the student versions are up to date and leak no solution or hidden test."""
    start = time.time()
    catalog = _catalog(solutions_dir, assignments)
    report = ValidationReport()
    with _Course(catalog, timeout=timeout, quick=quick, config=config) as course:
        course.generate(catalog.assignments)
        files = _release_files(course, catalog.assignments)
        report.drift = _drift_from(files, catalog, notebooks_dir)
        tasks: list[dict] = []
        all_checks: dict[str, dict[str, NotebookValidation]] = {}
        for a, nbs in catalog.assignments.items():
            checks = {nb: NotebookValidation(a, nb) for nb in nbs}
            for nb in nbs:
                source = _read_notebook(catalog.root / a / f"{nb}.ipynb")
                committed = Path(notebooks_dir) / a / f"{nb}.ipynb"
                student_version = committed if committed.is_file() else course.release_nb(a, nb)
                text = student_version.read_text(encoding="utf-8", errors="replace")
                for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "BEGIN MARK SCHEME"):
                    if marker in text:
                        checks[nb].problems.append(f"the student version contains '### {marker}'")
                kernel = source.metadata.get("kernelspec", {}).get("name")
                if kernel != "python3":
                    checks[nb].warnings.append(f"kernelspec is {kernel!r}; grading always uses 'python3'")
                if not any(_is_test(c) for c in source.cells):
                    checks[nb].warnings.append("no autograded test cells")
                for student, src in ((SOLUTION_STUDENT, catalog.root / a / f"{nb}.ipynb"),
                                     (RELEASE_STUDENT, student_version)):
                    d = course.submitted_dir(student, a)
                    d.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, d / f"{nb}.ipynb")
            n_cells = sum(len(_read_notebook(catalog.root / a / f"{nb}.ipynb").cells) for nb in nbs)
            for student in (SOLUTION_STUDENT, RELEASE_STUDENT):
                tasks.append({"op": "autograde", "assignment": a, "student": student,
                              "limit": timeout * (n_cells + 2) + 180})
            all_checks[a] = checks
        for r in course.run(tasks):
            if not r.get("success"):
                for v in all_checks[r["assignment"]].values():
                    v.problems.append(f"autograding the {r['student']} failed: {_failure_summary(r)}")
        for a, checks in all_checks.items():
            _check_scores(course, a, checks)
            report.notebooks.extend(checks.values())
    report.seconds = time.time() - start
    return report


def _check_scores(course: _Course, a: str, checks: dict[str, NotebookValidation]) -> None:
    cells = {}
    for student in (SOLUTION_STUDENT, RELEASE_STUDENT):
        for nb in checks:
            cells[student, nb] = _gradebook_cells(course.db_path, student, a, nb)
    for nb, v in checks.items():
        sol, rel = cells[SOLUTION_STUDENT, nb], cells[RELEASE_STUDENT, nb]
        if sol is None or rel is None:
            v.problems.append("no grades recorded")
            continue
        outputs = _cell_errors(course.autograded_nb(SOLUTION_STUDENT, a, nb))
        for gid, info in sol.items():
            r = rel.get(gid, {})
            check = CellCheck(gid, info["max_score"], info["score"], r.get("score"), outputs.get(gid, ""))
            v.cells.append(check)
            if info["manual"]:  # a written answer: the instructor grades it in nbgrader's formgrader
                v.manual_points += info["max_score"]
                continue
            v.max_score += info["max_score"]
            v.solution_score += info["score"] or 0
            v.release_score += r.get("score") or 0
            if (info["score"] or 0) < info["max_score"]:
                v.problems.append(f"the solution does not get full marks on {gid} "
                                  f"({_num(info['score'] or 0)}/{_num(info['max_score'])}): {check.message or 'no error output'}")
            if (r.get("score") or 0) > 0:
                v.problems.append(f"the unmodified student version scores {_num(r['score'])} on {gid}")
        for flag in _run_flags(course.autograded_nb(SOLUTION_STUDENT, a, nb)):
            v.problems.append(f"solution: {flag}")
        graded = course.autograded_nb(SOLUTION_STUDENT, a, nb)
        for cell in _read_notebook(graded).cells if graded.exists() else []:
            if _is_test(cell) and any(o.get("output_type") == "execute_result" for o in cell.get("outputs", [])):
                v.warnings.append(f"test cell {_grade_id(cell)} ends with an expression that has a value; nbgrader "
                                  "scores a numeric last value as partial credit (end test cells with a statement)")


# ---------------------------------------------------------------------------------------------
# Gradebook and autograded-notebook inspection
# ---------------------------------------------------------------------------------------------


def _gradebook(db_path: Path):
    from nbgrader.api import Gradebook

    return Gradebook(f"sqlite:///{db_path}", COURSE_ID)


def _gradebook_cells(db_path: Path, student: str, a: str, nb: str) -> dict | None:
    """``{grade_id: {"score", "max_score", "manual"}}`` of one submitted notebook, or None."""
    from nbgrader.api import MissingEntry

    if not db_path.exists():
        return None
    with _gradebook(db_path) as gb:
        try:
            sub = gb.find_submission_notebook(nb, a, student)
        except MissingEntry:
            return None
        out = {}
        for g in sub.grades:
            manual = g.auto_score is None and g.manual_score is None
            out[g.name] = {"score": None if manual else float(g.score), "max_score": float(g.max_score),
                           "manual": manual}
        return out


def _gradebook_scores(db_path: Path) -> dict[tuple[str, str, str], tuple[float, float]]:
    out = {}
    if not db_path.exists():
        return out
    with _gradebook(db_path) as gb:
        for assignment in gb.assignments:
            for sub in assignment.submissions:
                for nb in sub.notebooks:
                    out[(sub.student.id, assignment.name, nb.name)] = (float(nb.score), float(nb.max_score))
    return out


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(_ANSI.sub("", str(text)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: errors the autograder itself puts on cells (see autograder/course_preprocessors.py), and how
#: the list of failed tests names them (the status sentence explains them once)
_RUN_ERRORS = {
    "CellTimeoutError": "timed out",
    "KernelUnresponsiveError": "timed out and the kernel ignored the interrupt",
    "KernelDiedError": "the kernel died in this cell",
    "NotExecutedError": "not executed (the kernel was lost earlier)",
    "OutputTimeoutError": "its output did not arrive in time",
}


def _cell_errors(path: Path) -> dict[str, str]:
    """``{grade_id: "Ename: evalue"}`` for graded cells of an executed notebook that raised
    (a timeout or crash recorded on the cell wins over the exception it caused)."""
    if not path.exists():
        return {}
    out = {}
    for cell in _read_notebook(path).cells:
        gid = _grade_id(cell)
        if not gid or cell.cell_type != "code":
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        ours = [_RUN_ERRORS[o.get("ename")] for o in errors if o.get("ename") in _RUN_ERRORS]
        if ours:
            out[gid] = ours[-1]
        elif errors:
            o = errors[0]
            out[gid] = _short(f"{o.get('ename')}: {o.get('evalue')}" if o.get("evalue") else o.get("ename"))
    return out


def _run_flags(path: Path) -> list[str]:
    """Timeouts and kernel deaths recorded in an executed notebook, as ``"<status>: <sentence>"``."""
    if not path.exists():
        return []
    flags = []
    for i, cell in enumerate(_read_notebook(path).cells):
        if cell.cell_type != "code":
            continue
        where = f"cell {i + 1}" + (f" ({_grade_id(cell)})" if _grade_id(cell) else "")
        for o in cell.get("outputs", []):
            if o.get("output_type") != "error":
                continue
            if o.get("ename") == "CellTimeoutError":
                flags.append(f"timeout: {where} did not finish within the time limit and was interrupted")
            elif o.get("ename") == "KernelDiedError":
                flags.append(f"kernel_died: the kernel died in {where}; the cells after it were not executed")
            elif o.get("ename") == "KernelUnresponsiveError":
                flags.append(f"timeout: {where} did not finish within the time limit and its kernel ignored "
                             "the interrupt, so it was shut down; the cells after it were not executed")
            elif o.get("ename") == "OutputTimeoutError":
                flags.append(f"timeout: the output of {where} did not arrive in time")
    return flags


# ---------------------------------------------------------------------------------------------
# Finding submissions
# ---------------------------------------------------------------------------------------------


@dataclass
class _Submission:
    student: str
    assignment: str
    notebook: str
    path: Path
    origin: str
    notes: list[str] = field(default_factory=list)


def _student_id(raw: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@+-]+", "_", raw.strip()).strip("._-")


def _extract_zip(path: Path, dest: Path) -> list[tuple[str, str]]:
    """Extract the notebooks of a zip safely (no absolute paths, no ``..``); returns skipped members."""
    skipped = []
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise GradingError(f"{path} is not a valid zip file: {exc}") from exc
    with zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            parts = PurePosixPath(info.filename.replace("\\", "/")).parts
            if not parts[-1].lower().endswith(".ipynb"):
                continue
            if parts[0] == "/" or ".." in parts:
                skipped.append((info.filename, "unsafe path in the zip (absolute or with '..'); not extracted"))
                continue
            if any(_ignored(p) for p in parts):
                continue
            if info.file_size > _MAX_NOTEBOOK_BYTES:
                skipped.append((info.filename, f"larger than {_MAX_NOTEBOOK_BYTES // 2**20} MiB"))
                continue
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            stamp = time.mktime(info.date_time + (0, 0, -1))
            os.utime(target, (stamp, stamp))
    return skipped


def _match_name(stem: str, names: list[str]) -> tuple[str, str | None] | None:
    """(notebook, student prefix or None) for a file stem, or None."""
    candidates = [stem]
    bare = re.sub(r"(?:-\d+| ?\(\d+\))$", "", stem)
    if bare != stem:
        candidates.append(bare)
    for s in candidates:
        if s in names:
            return s, None
    for s in candidates:
        for nb in sorted(names, key=len, reverse=True):
            if len(s) > len(nb) + 1 and s.endswith(nb) and s[-len(nb) - 1] in "_-. ":
                return nb, s[: -len(nb) - 1]
    return None


def _discover(root: Path, catalog: _Catalog, exclude: Path | None = None) -> tuple[list[_Submission], list[tuple[str, str]]]:
    owner = catalog.notebook_to_assignment
    names = sorted(owner)
    by_key: dict[tuple[str, str], list[_Submission]] = {}
    skipped: list[tuple[str, str]] = []
    files = [root] if root.is_file() else sorted(root.rglob("*"))
    base = root.parent if root.is_file() else root
    for path in files:
        if not path.is_file() or path.suffix.lower() != ".ipynb":
            continue
        rel = path.relative_to(base)
        if any(_ignored(p) for p in rel.parts):
            continue
        if exclude is not None and (path.resolve() == exclude or exclude in path.resolve().parents):
            continue
        origin = rel.as_posix()
        match = _match_name(path.stem, names)
        if match is None:
            skipped.append((origin, f"not a notebook of this course (expected one of: {', '.join(names)})"))
            continue
        nb, prefix = match
        a = owner[nb]
        parts = rel.parts[:-1]
        if prefix is not None:
            raw = prefix
        elif parts and parts[-1] == a and len(parts) >= 2:
            raw = parts[-2]
        elif parts and parts[-1] != a:
            raw = parts[-1]
        else:
            skipped.append((origin, "cannot tell whose it is: use <student>/<notebook>.ipynb, "
                                    "<student>/<assignment>/<notebook>.ipynb or <student>_<notebook>.ipynb"))
            continue
        student = _student_id(raw)
        if not student:
            skipped.append((origin, f"no usable student id in {raw!r}"))
            continue
        sub = _Submission(student, a, nb, path, origin)
        if student != raw:
            sub.notes.append(f"student id {raw!r} was normalised to {student!r}")
        by_key.setdefault((student, nb), []).append(sub)
    subs = []
    for key in sorted(by_key):
        found = sorted(by_key[key], key=lambda s: (s.path.stat().st_mtime, s.origin))
        chosen = found[-1]
        if len(found) > 1:
            chosen.notes.append(f"{len(found)} files for this notebook; graded the newest ({chosen.origin}), "
                                f"ignored {', '.join(s.origin for s in found[:-1])}")
        subs.append(chosen)
    return subs, skipped


# ---------------------------------------------------------------------------------------------
# Preparing one submitted notebook
# ---------------------------------------------------------------------------------------------


def _prepare(path: Path, release) -> tuple[object | None, str | None, list[str]]:
    """Read a submitted notebook and make it safe to hand to nbgrader.

    Returns (notebook or None, why it is unreadable or None, restored grade ids).  Outputs are
    cleared, cell ids made valid and unique, and graded test cells the student deleted are put
    back (from the student version) right after the cell that preceded them there."""
    nbformat = _nbformat()
    try:
        if path.stat().st_size > _MAX_NOTEBOOK_BYTES:
            return None, f"the file is larger than {_MAX_NOTEBOOK_BYTES // 2**20} MiB", []
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
        if not text.strip():
            return None, "the file is empty", []
        raw = json.loads(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("cells", raw.get("worksheets")), list):
            return None, "the file is JSON but not a Jupyter notebook (no list of cells)", []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nbformat warns about (and fixes) duplicate cell ids etc.
            nb = nbformat.reads(text, as_version=4)
    except UnicodeDecodeError:
        return None, "the file is not text (not UTF-8), so not a notebook", []
    except json.JSONDecodeError as exc:
        return None, f"the file is not valid JSON, so not a notebook ({exc})", []
    except Exception as exc:  # nbformat errors of every kind
        return None, f"the file cannot be read as a notebook ({type(exc).__name__}: {_short(exc, 160)})", []
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    _normalize(nb)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nbformat.validate(nb)
    except Exception:
        try:
            from nbformat.validator import normalize

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, fixed = normalize(nb, strip_invalid_metadata=True)
                nb = nbformat.from_dict(fixed)
                nbformat.validate(nb)
        except Exception as exc:
            return None, f"the notebook does not follow the notebook format ({_short(exc, 160)})", []
    restored = _restore_tests(nb, release)
    return nb, None, restored


def _restore_tests(nb, release) -> list[str]:
    order = [(gid, cell) for cell in release.cells if (gid := _grade_id(cell))]
    pos = {}
    for i, cell in enumerate(nb.cells):
        gid = _grade_id(cell)
        if gid and gid not in pos:
            pos[gid] = i
    ids = {c.get("id") for c in nb.cells}
    restored = []
    for k, (gid, rcell) in enumerate(order):
        if gid in pos or not _nbmeta(rcell).get("grade"):
            continue
        at = None
        for j in range(k - 1, -1, -1):
            if order[j][0] in pos:
                at = pos[order[j][0]] + 1
                break
        if at is None:
            for j in range(k + 1, len(order)):
                if order[j][0] in pos:
                    at = pos[order[j][0]]
                    break
        if at is None:
            at = len(nb.cells)
        cell = copy.deepcopy(rcell)
        cid, n = cell.get("id") or gid, 1
        while cid in ids:
            cid, n = f"{cell.get('id') or gid}-restored{'' if n == 1 else n}", n + 1
        cell["id"] = cid
        ids.add(cid)
        nb.cells.insert(at, cell)
        for g, p in pos.items():
            if p >= at:
                pos[g] = p + 1
        pos[gid] = at
        restored.append(gid)
    return restored


# ---------------------------------------------------------------------------------------------
# grade
# ---------------------------------------------------------------------------------------------


def grade(submissions: str | Path, out_dir: str | Path, solutions_dir="solutions",
          timeout: int = DEFAULT_TIMEOUT, *, quick: bool = True, wall_timeout: float | None = None,
          config: str | Path | None = None) -> GradeReport:
    """Autograde a folder or ``.zip`` of submitted notebooks (layouts: see the module docstring).

    ``timeout`` is the per-cell limit in seconds; ``wall_timeout`` caps one student's assignment
    as a whole (default: enough for every cell to hit ``timeout``).  Results accumulate in
    ``out_dir`` (``grades.csv``, feedback, gradebook); grading the same student again replaces
    that student's grade and keeps everyone else's."""
    start = time.time()
    catalog = _catalog(solutions_dir)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    db_path = out / "gradebook.db"
    report = GradeReport(out_dir=out, csv_path=out / "grades.csv")
    with _out_dir_lock(out), _Course(catalog, db_path, timeout=timeout, quick=quick, config=config) as course:
        if db_path.exists():
            shutil.copyfile(db_path, out / "gradebook.db.bak")
        src = Path(submissions).resolve()
        if not src.exists():
            raise GradingError(f"submissions not found: {src}")
        if src.is_file() and src.suffix.lower() == ".zip":
            root = course.tmp / "upload"
            root.mkdir()
            report.skipped += _extract_zip(src, root)
        else:
            root = src
        subs, skipped = _discover(root, catalog, exclude=out)
        report.skipped += skipped
        groups: dict[tuple[str, str], list[_Submission]] = {}
        for s in subs:
            groups.setdefault((s.student, s.assignment), []).append(s)
        if groups:
            try:
                course.generate(sorted({a for _, a in groups}))
            except GradingError as exc:
                raise GradingError(f"{exc}\nIf cells were added to or removed from the solutions since {out} "
                                   "was first graded, grade into a new folder.") from exc
            report.grades += _grade_batch(course, out, groups, wall_timeout)
        _save_status(out, report.grades)
        _write_csv(out, db_path)
        (out / "skipped.csv").unlink(missing_ok=True)  # it describes one run
        if report.skipped:
            with open(out / "skipped.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["file", "reason"])
                w.writerows(report.skipped)
    report.seconds = time.time() - start
    return report


@dataclass
class _Job:
    """One student's notebooks of one assignment, through the stages of grading."""

    student: str
    assignment: str
    notebooks: list[str]
    submitted: dict[str, _Submission]
    notes: dict[str, list[str]] = field(default_factory=dict)
    flags: dict[str, set] = field(default_factory=dict)
    code_cells: int = 0
    problem: str | None = None

    def note(self, nb: str | None, flag: str | None, text: str) -> None:
        for name in [nb] if nb else self.notebooks:
            self.notes.setdefault(name, []).append(text)
            if flag:
                self.flags.setdefault(name, set()).add(flag)


@contextlib.contextmanager
def _out_dir_lock(out: Path):
    """One ``grade`` at a time per output folder (they share its gradebook)."""
    lock = out / ".grading.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _pid_alive(pid):
                raise GradingError(f"{out} is being graded by process {pid}; wait for it, "
                                   f"or delete {lock} if that is wrong") from None
            lock.unlink(missing_ok=True)  # left behind by a run that was killed
    else:
        raise GradingError(f"cannot lock {out}")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _grade_batch(course: _Course, out: Path, groups: dict, wall_timeout: float | None) -> list[NotebookGrade]:
    jobs = []
    for (student, a), group in sorted(groups.items()):
        job = _Job(student, a, course.catalog.assignments[a], {s.notebook: s for s in group})
        for nb in job.notebooks:
            job.notes[nb] = list(job.submitted[nb].notes) if nb in job.submitted else []
            job.flags[nb] = set()
        try:
            _prepare_job(course, job)
        except Exception as exc:  # never let one submission stop the batch
            job.problem = _short(f"internal error while reading the submission ({type(exc).__name__}: {exc})")
        jobs.append(job)

    def tasks_for(batch: list[_Job], limit) -> list[dict]:
        tasks = []
        for job in batch:
            log = str(out / "logs" / job.student / f"{job.assignment}.log")
            tasks.append({"op": "autograde", "assignment": job.assignment, "student": job.student,
                          "limit": limit(job), "log": log})
            tasks.append({"op": "feedback", "assignment": job.assignment, "student": job.student,
                          "limit": 300, "log": log, "needs": len(tasks) - 1})
        return tasks

    for job in jobs:
        log = out / "logs" / job.student / f"{job.assignment}.log"
        if log.exists():
            log.unlink()
    runnable = [j for j in jobs if j.problem is None]
    results = course.run(tasks_for(runnable, lambda j: wall_timeout or course.timeout * (j.code_cells + 2) + 180))
    for job, (auto, _feedback) in zip(runnable, zip(results[::2], results[1::2])):
        if not auto.get("success"):
            job.problem = _failure_summary(auto)
        elif not all(course.autograded_nb(job.student, job.assignment, nb).exists() for nb in job.submitted):
            job.problem = "nbgrader produced no graded notebook"

    # what nbgrader could not grade is graded as the unmodified student version (zero), with the reason
    failed = [j for j in jobs if j.problem is not None]
    for job in failed:
        sub_dir = course.submitted_dir(job.student, job.assignment)
        sub_dir.mkdir(parents=True, exist_ok=True)
        for nb in job.notebooks:
            job.note(nb, "error", f"grading failed ({job.problem}); scored as the unmodified student version (zero)")
            shutil.copyfile(course.release_nb(job.assignment, nb), sub_dir / f"{nb}.ipynb")
        shutil.rmtree(course.root / "autograded" / job.student / job.assignment, ignore_errors=True)
        shutil.rmtree(course.root / "feedback" / job.student / job.assignment, ignore_errors=True)
    if failed:
        retry = course.run(tasks_for(failed, lambda j: course.timeout * 4 + 300))
        for job, auto in zip(failed, retry[::2]):
            if not auto.get("success"):
                job.note(None, None, f"grading the unmodified student version failed too ({_failure_summary(auto)})")

    grades = []
    for job in jobs:
        try:
            grades += _collect(course, out, job)
        except Exception as exc:
            for nb in job.notebooks:
                grades.append(NotebookGrade(job.student, job.assignment, nb, 0.0, 0.0, "error",
                                            _short(f"internal grading error ({type(exc).__name__}: {exc})", 400),
                                            submitted=job.submitted[nb].origin if nb in job.submitted else ""))
    return grades


def _prepare_job(course: _Course, job: _Job) -> None:
    """Write the student's notebooks, made safe for nbgrader, into ``submitted/``."""
    sub_dir = course.submitted_dir(job.student, job.assignment)
    if sub_dir.exists():
        shutil.rmtree(sub_dir)
    sub_dir.mkdir(parents=True)
    for nb in job.notebooks:
        release = _read_notebook(course.release_nb(job.assignment, nb))
        if nb not in job.submitted:
            job.note(nb, "missing", "this notebook was not submitted")
            continue
        prepared, unreadable, restored = _prepare(job.submitted[nb].path, release)
        if prepared is None:
            job.note(nb, "invalid", f"{unreadable}; it was graded as the unmodified student version (zero)")
            prepared = release
        elif restored:
            job.note(nb, "cells_restored", f"deleted test cell(s) {', '.join(restored)} were put back and graded")
        job.code_cells += sum(c.cell_type == "code" for c in prepared.cells)
        (sub_dir / f"{nb}.ipynb").write_text(_dumps(prepared), encoding="utf-8")


def _collect(course: _Course, out: Path, job: _Job) -> list[NotebookGrade]:
    """Scores from the gradebook, reasons from the executed notebooks; publish feedback."""
    student, a = job.student, job.assignment
    grades = []
    for nb in job.notebooks:
        flags, notes = job.flags[nb], job.notes[nb]
        cells = _gradebook_cells(course.db_path, student, a, nb) or {}
        graded_nb = course.autograded_nb(student, a, nb)
        if "error" not in flags:
            for flag in _run_flags(graded_nb):
                kind, sentence = flag.split(": ", 1)
                flags.add(kind)
                notes.append(sentence)
        errors = _cell_errors(graded_nb)
        failed = [f"{gid} ({_num(c['score'] or 0)}/{_num(c['max_score'])})"
                  + (f": {errors[gid]}" if gid in errors else "")
                  for gid, c in cells.items() if not c["manual"] and (c["score"] or 0) < c["max_score"]]
        manual = [gid for gid, c in cells.items() if c["manual"]]
        score = sum(c["score"] or 0 for c in cells.values())
        max_score = sum(c["max_score"] for c in cells.values()) or _max_points(course.release_nb(a, nb))
        if failed and not flags & {"error", "invalid", "missing"}:
            notes.append("failed: " + "; ".join(failed))
        elif not failed and cells:
            notes.append("all tests passed")
        if manual:
            notes.append(f"needs manual grading: {', '.join(manual)}")
        if graded_nb.exists() and not course.feedback_html(student, a, nb).exists():
            notes.append("nbgrader could not produce the feedback page")
        status = next((s for s in STATUSES if s in flags), "graded")
        reason = " | ".join(notes)
        feedback = _publish(course, out, student, a, nb, score, max_score, status, reason)
        grades.append(NotebookGrade(student, a, nb, score, max_score, status, reason, feedback,
                                    job.submitted[nb].origin if nb in job.submitted else ""))
    return grades


def _max_points(path: Path) -> float:
    try:
        return float(sum(_nbmeta(c).get("points", 0) or 0 for c in _read_notebook(path).cells if _nbmeta(c).get("grade")))
    except Exception:
        return 0.0


def _publish(course: _Course, out: Path, student: str, a: str, nb: str, score: float, max_score: float,
             status: str, reason: str) -> Path:
    """Copy the feedback (with a grading-notes box) and the executed notebook into ``out``."""
    box = _notes_box(student, nb, score, max_score, status, reason)
    src = course.feedback_html(student, a, nb)
    dst = out / "feedback" / student / a / f"{nb}.html"
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.exists():
        page = src.read_text(encoding="utf-8", errors="replace")
        m = re.search(r"<body[^>]*>", page, flags=re.IGNORECASE)
        page = page[: m.end()] + "\n" + box + page[m.end():] if m else box + page
    else:
        page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(nb)}</title></head>"
                f"<body>\n{box}\n<p>No feedback notebook could be produced for this submission.</p></body></html>\n")
    _write_bytes(dst, page.encode("utf-8"))
    graded = course.autograded_nb(student, a, nb)
    if graded.exists():
        target = out / "autograded" / student / a / f"{nb}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes(target, graded.read_bytes())
    return dst


def _notes_box(student, nb, score, max_score, status, reason) -> str:
    colour = "#2e7d32" if status == "graded" else "#c62828"
    items = "".join(f"<li>{html.escape(part)}</li>" for part in reason.split(" | ") if part)
    return (f'<div id="autograder-notes" style="border:2px solid {colour};border-radius:6px;margin:1em;'
            f'padding:0.6em 1em;font-family:sans-serif;background:#fafafa">'
            f"<strong>Autograder</strong> &mdash; {html.escape(student)}, {html.escape(nb)}: "
            f"score {_num(score)} / {_num(max_score)} (status: {html.escape(status)})"
            f"<ul>{items}</ul></div>")


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


def _num(x) -> str:
    if x is None or x == "":
        return ""
    x = float(x)
    return str(int(x)) if x.is_integer() else f"{x:.4g}"


def _write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically (nbgrader leaves read-only files behind; never write through them)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _status_key(student: str, a: str, nb: str) -> str:
    return f"{student}/{a}/{nb}"


def _save_status(out: Path, grades: list[NotebookGrade]) -> None:
    path = out / "grading_status.json"
    status = json.loads(path.read_text()) if path.exists() else {}
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    for g in grades:
        status[_status_key(g.student, g.assignment, g.notebook)] = {
            "student": g.student, "assignment": g.assignment, "notebook": g.notebook,
            "score": g.score, "max_score": g.max_score, "status": g.status, "reason": g.reason,
            "submitted": g.submitted, "graded_at": now}
    _write_bytes(path, json.dumps(dict(sorted(status.items())), indent=1).encode())


def _write_csv(out: Path, db_path: Path) -> None:
    """``grades.csv``: every notebook graded into this ``out_dir``; scores from the gradebook."""
    path = out / "grading_status.json"
    status = json.loads(path.read_text()) if path.exists() else {}
    scores = _gradebook_scores(db_path)
    rows = {}
    for rec in status.values():
        key = (rec["student"], rec["assignment"], rec["notebook"])
        score, max_score = scores.get(key, (rec["score"], rec["max_score"]))
        rows[key] = {**{k: rec[k] for k in ("student", "assignment", "notebook", "status", "reason")},
                     "score": _num(score), "max_score": _num(max_score)}
    for key, (score, max_score) in scores.items():
        rows.setdefault(key, {"student": key[0], "assignment": key[1], "notebook": key[2],
                              "score": _num(score), "max_score": _num(max_score), "status": "graded", "reason": ""})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for key in sorted(rows):
        w.writerow(rows[key])
    _write_bytes(out / "grades.csv", buf.getvalue().encode())
