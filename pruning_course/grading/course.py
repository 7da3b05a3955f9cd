"""The throwaway nbgrader course directory (:class:`Course`), the worker processes that run
nbgrader in it (``_worker_main``, watched and killed from outside), and reading the gradebook."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sqlite3
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Iterable

from .. import settings
from ..model_files import writing
from .notebooks import Catalog, is_ignored
from .reports import COURSE_ID, DEFAULT_CONFIG, DEFAULT_TIMEOUT, GradingError, shorten
from .sandbox import Limits, sandbox_problem, warm_kernel_caches

_WORKER = "import sys; from pruning_course.grading.course import _worker_main; _worker_main(sys.argv[1:])"


class Course:
    """A temporary nbgrader course: ``source/``, ``release/``, ``submitted/``, ``autograded/``, ``feedback/``."""

    def __init__(self, catalog: Catalog, db_path: Path | None = None, *, timeout: int = DEFAULT_TIMEOUT,
                 quick: bool = True, config: str | Path | None = None, sandbox: bool | None = None,
                 limits: Limits | None = None):
        """``sandbox``: run every kernel in bubblewrap (:mod:`.sandbox`); ``True`` refuses with the
        install hint when it is unavailable, ``None`` uses it when it is available (for the course's
        own notebooks), ``False`` runs kernels unconfined."""
        self.catalog = catalog
        self.timeout = int(timeout)
        self.quick = quick
        problem = sandbox_problem() if sandbox is not False else None
        if sandbox and problem:
            raise GradingError(problem)
        self.sandboxed = sandbox is not False and problem is None
        self.limits = limits or Limits()
        if self.sandboxed:
            warm_kernel_caches(quick)
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
        self._worker_numbers = itertools.count(1)
        self._stopping = threading.Event()

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
        kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        if self.sandboxed:  # the launcher applies the limits, then becomes bwrap ... -- kernel
            kernel = [sys.executable, "-m", "pruning_course.grading.sandbox", *self.limits.argv(), "--", *kernel]
        (spec / "kernel.json").write_text(json.dumps({
            "argv": kernel, "display_name": "Python 3 (ipykernel)", "language": "python",
            "metadata": {"debugger": False},
            # SIGINT would reach bubblewrap, not the kernel: interrupt with a message instead
            "interrupt_mode": "message" if self.sandboxed else "signal",
        }, indent=1))
        for d in ("jupyter_config", "jupyter_runtime", "ipython"):
            (self.tmp / d).mkdir()
        # only this package goes on the kernels' path, never the repository root
        pypath = self.tmp / "pythonpath"
        pypath.mkdir()
        package = Path(__file__).resolve().parents[1]
        try:
            (pypath / package.name).symlink_to(package, target_is_directory=True)
        except OSError:
            shutil.copytree(package, pypath / package.name, ignore=shutil.ignore_patterns("__pycache__"))
        self.pythonpath = pypath
        self.scratch = _short_temp_dir("pcg-")

    def env(self) -> dict:
        env = settings.child_environment()
        for var in ("JPY_PARENT_PID", "NBGRADER_EXECUTION", "NBGRADER_VALIDATING"):
            env.pop(var, None)
        env.update({
            # nbgrader runs console scripts (alembic, jupyter) by name: this interpreter's first
            "PATH": os.pathsep.join([str(Path(sys.executable).parent)] + [p for p in [env.get("PATH")] if p]),
            "PYTHONPATH": os.pathsep.join([str(self.pythonpath)] + [p for p in [env.get("PYTHONPATH")] if p]),
            # kernels' connection files, nbgrader's scratch and anything else temporary stay in
            # this course's folder, which close() removes even when a kernel was killed
            "TMPDIR": str(self.scratch),
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
            shutil.copytree(self.catalog.root / a, dst, ignore=lambda _d, names: [n for n in names if is_ignored(n)])

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
    def run(self, tasks: list[dict], jobs: int = 1, on_done=None) -> list[dict]:
        """Run nbgrader tasks (``op``: generate | autograde | feedback) in worker processes.

        Each task may carry ``limit`` (seconds, default 600), ``log`` (a file that gets the
        task's nbgrader log), ``needs`` (the index of a task that must succeed first), and
        ``root`` and ``db`` (the course folder and gradebook it works in; default: this course's).
        ``jobs`` workers run side by side, each in its own lane of tasks (a task and the tasks that
        need it share a lane), each with ``cores / jobs`` threads for its kernels. One worker runs
        its lane's tasks in order, so nbgrader is imported once per lane; a worker that runs over a
        task's limit, or dies, is killed together with its kernels, that task is recorded as
        failed, and a fresh worker carries on with the next task of the lane. ``on_done(index,
        result)`` is called (one call at a time) as each task's result is known. Returns one result
        per task: ``success``, ``error``, ``log`` and, when the worker had to be stopped,
        ``failure`` (a sentence)."""
        results: list[dict | None] = [None] * len(tasks)
        lanes = _lanes(tasks, max(1, int(jobs)))
        lock = threading.Lock()
        threads = max(1, (os.cpu_count() or 1) // len(lanes)) if len(lanes) > 1 else None

        def run_lane(indices: list[int]) -> None:
            position = {index: k for k, index in enumerate(indices)}
            local = [{**tasks[i], **({"needs": position[tasks[i]["needs"]]} if tasks[i].get("needs") is not None
                                     else {})} for i in indices]
            done: list[dict | None] = [None] * len(local)

            def record(k: int, result: dict) -> None:
                done[k] = result
                with lock:
                    results[indices[k]] = result
                    if on_done is not None:
                        on_done(indices[k], result)

            first = 0
            while first < len(local):
                need = local[first].get("needs")
                if need is not None and done[need] is not None and not done[need].get("success"):
                    record(first, {**local[first], "success": False, "failure": "skipped (the task it needs failed)"})
                    first += 1
                    continue
                first = self._run_worker(local, first, done, record, threads)

        self._stopping = threading.Event()
        workers = [threading.Thread(target=run_lane, args=(lane,), daemon=True) for lane in lanes]
        try:
            for w in workers:
                w.start()
            for w in workers:
                while w.is_alive():
                    w.join(0.2)  # a bare join() would hold off Ctrl-C until the lane ends
        except BaseException:  # interrupted: stop every worker and its kernels, keep what was recorded
            self._stopping.set()
            for w in workers:
                w.join(60)
            raise
        return [r or {**t, "success": False, "failure": "not run"} for t, r in zip(tasks, results)]

    def _run_worker(self, tasks: list[dict], first: int, results: list, record, threads: int | None) -> int:
        """Start a worker at task ``first``; ``record`` each result; return the next task to start at."""
        number = next(self._worker_numbers)
        spec_file = self.tmp / f"run-{number}.json"
        events_file = self.tmp / f"events-{number}.jsonl"
        spec_file.write_text(json.dumps({"config": str(self.config_file), "tasks": tasks, "first": first,
                                         "events": str(events_file), "db": str(self.db_path),
                                         "memory_gb": self.limits.memory_gb}))
        env = self.env()
        if threads is not None:  # workers side by side: their kernels share the cores
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        with open(self.tmp / f"workers-{number}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(spec_file)], cwd=self.root,
                                    env=env, stdin=subprocess.DEVNULL, stdout=log,
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
                        record(ev["index"], ev["result"])
                        current = None
                if self._stopping.is_set():
                    _kill_tree(proc)
                    return len(tasks)
                if exited:
                    nxt = max([i + 1 for i in range(len(tasks)) if results[i] is not None] + [first])
                    if nxt < len(tasks):  # died: blame the task it was running (or the next one)
                        bad = current if current is not None else nxt
                        self._fail(tasks, record, bad, f"the grading process died (exit status {proc.returncode})")
                        return bad + 1
                    return len(tasks)
                if current is None:
                    if time.monotonic() - since > 300:  # stuck between tasks or at start-up
                        bad = max([i + 1 for i in range(len(tasks)) if results[i] is not None] + [first])
                        _kill_tree(proc)
                        self._fail(tasks, record, bad, "the grading process did not start the task within 300 s")
                        return bad + 1
                else:
                    limit = float(tasks[current].get("limit", 600))
                    if time.monotonic() - since > limit:
                        _kill_tree(proc)
                        self._fail(tasks, record, current,
                                   f"it took longer than the wall-clock limit of {limit:.0f} s and was stopped")
                        return current + 1
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                _kill_tree(proc)

    @staticmethod
    def _fail(tasks: list[dict], record, index: int, failure: str) -> None:
        record(index, {**tasks[index], "success": False, "failure": failure})
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
            log = "".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("workers-*.log")))[-3000:]
            raise GradingError(f"nbgrader generate_assignment failed for {bad[0]['assignment']}: "
                               f"{failure_summary(bad[0])}\n{log}")

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> "Course":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _lanes(tasks: list[dict], jobs: int) -> list[list[int]]:
    """Split task indices into at most ``jobs`` lanes, in order within each: a task goes with the
    task it needs; chains go to the lane with the least work so far (by their limits)."""
    chains: list[list[int]] = []
    chain_of: dict[int, int] = {}
    for i, task in enumerate(tasks):
        need = task.get("needs")
        if need is not None and need in chain_of:
            chain_of[i] = chain_of[need]
            chains[chain_of[i]].append(i)
        else:
            chain_of[i] = len(chains)
            chains.append([i])
    lanes: list[list[int]] = [[] for _ in range(max(1, min(jobs, len(chains))))]
    load = [0.0] * len(lanes)
    for chain in chains:
        k = load.index(min(load))
        lanes[k] += chain
        load[k] += sum(float(tasks[i].get("limit", 600)) for i in chain)
    return lanes


def _short_temp_dir(prefix: str) -> Path:
    """A new private folder for the kernels' temp files, with a short path.

    multiprocessing (datasets' ``num_proc``, used by notebook 12) puts AF_UNIX sockets in the
    temp dir, two folders deep, and a socket path longer than 108 bytes fails with a bare
    ``EOFError``. So the folder goes in the temp dir when its path is short, else in ``/tmp``;
    :meth:`Course.close` removes it either way."""
    base = tempfile.gettempdir()
    if len(base) > 40 and os.name == "posix" and os.path.isdir("/tmp") and os.access("/tmp", os.W_OK):
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


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
    if spec.get("memory_gb"):
        # the checks unpickle what a student's kernel sends (allow-listed classes only, but a
        # constructor can still be told to build something huge): a worker that runs out of this
        # address space fails that student's task, not the machine's other jobs
        import resource

        limit = int(spec["memory_gb"] * 2**30)
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
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
    for db in {t["db"] for t in spec["tasks"] if t.get("db")}:
        _ensure_gradebook(Path(db))
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
            if task.get("root"):  # a student's own course folder and gradebook
                coursedir.root = task["root"]
                coursedir.db_url = f"sqlite:///{task['db']}"
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
    """Create an empty gradebook at ``db`` if there is none.

    nbgrader's ``Gradebook`` stamps a new database with its alembic head by running the
    ``alembic`` console script found on ``PATH`` -- which is not the virtualenv's when
    ``.venv/bin/pruning-course`` runs from a shell that never activated it. So the head is read
    here, in-process, from nbgrader's own migration scripts and the ``alembic_version`` table is
    written first; ``Gradebook`` then sees an existing database and only creates its tables.
    The file is built under a temporary name next to ``db`` and renamed into place
    (:func:`~pruning_course.model_files.writing`), so a failure
    leaves neither a half-made gradebook nor a stray temporary file."""
    if db.exists():
        return
    import sqlite3

    from alembic.script import ScriptDirectory
    from nbgrader.api import Gradebook
    from nbgrader.dbutil import ALEMBIC_DIR

    head = ScriptDirectory(ALEMBIC_DIR).get_current_head()
    with writing(db) as fresh:
        with sqlite3.connect(fresh) as connection:
            connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
            connection.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (head,))
        connection.close()
        Gradebook(f"sqlite:///{fresh}", COURSE_ID).close()


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt))(?::\s*(.*))?$")


def failure_summary(result: dict) -> str:
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
        return shorten(candidates[-1])
    errors = [ln[len("[ERROR] "):] for ln in text.splitlines() if ln.startswith("[ERROR]")]
    return shorten(errors[0] if errors else "nbgrader reported an error (see the log)")


# ---------------------------------------------------------------------------------------------
# Gradebook
# ---------------------------------------------------------------------------------------------


def _gradebook(db_path: Path):
    from nbgrader.api import Gradebook

    return Gradebook(f"sqlite:///{db_path}", COURSE_ID)


def gradebook_cells(db_path: Path, student: str, a: str, nb: str) -> dict | None:
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
            out[g.name] = {"score": None if manual else _cell_points(g), "max_score": float(g.max_score),
                           "manual": manual}
        return out


def gradebook_scores(db_path: Path) -> dict[tuple[str, str, str], tuple[float, float]]:
    """``{(student, assignment, notebook): (score, max_score)}``, re-validated: a cell's score
    counts only when it lies in ``[0, its max]``, its extra credit only up to its max (so no row
    of the file, however it was changed, gives more than twice a notebook's points)."""
    out = {}
    if not db_path.exists():
        return out
    with _gradebook(db_path) as gb:
        for assignment in gb.assignments:
            for sub in assignment.submissions:
                for nb in sub.notebooks:
                    score = sum(_cell_points(g) for g in nb.grades)
                    out[(sub.student.id, assignment.name, nb.name)] = (score, float(nb.max_score))
    return out


def _cell_points(grade) -> float:
    """A gradebook cell's points (its manual score if any, else its automatic one, plus extra
    credit), each part counted only when it lies in ``[0, the cell's max]``."""
    base = grade.manual_score if grade.manual_score is not None else grade.auto_score
    return sum(float(v) for v in (base, grade.extra_credit) if v is not None and _in_range(v, grade.max_score))


def _in_range(value, max_score) -> bool:
    """None, or a finite number in ``[0, max_score]``."""
    if value is None:
        return True
    try:
        return math.isfinite(float(value)) and 0 <= float(value) <= float(max_score)
    except (TypeError, ValueError):
        return False


#: the tables of nbgrader's gradebook that hold students and their work (the rest: assignments, cells)
_STUDENT_TABLES = ("comment", "grade", "submitted_notebook", "submitted_assignment", "student")


def template_gradebook(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` without any student or grade: its assignments and cells only (the
    gradebook each student's job is graded into; :func:`merge_submission` brings its grades back)."""
    shutil.copyfile(src, dst)
    with contextlib.closing(sqlite3.connect(dst)) as con:
        for table in _STUDENT_TABLES:
            con.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        con.commit()


def merge_submission(src: Path, dst: Path, student: str, assignment: str, *, manual: bool = False) -> None:
    """Copy one student's graded submission from gradebook ``src`` into ``dst``, re-validated.

    As nbgrader's own re-autograde does, a manual score already in ``dst`` stays (the cell is then
    flagged for manual grading again); ``manual=True`` (merging graded outputs) also copies manual
    scores, extra credit and comments of ``src``. :class:`GradingError` when ``src`` has no such
    submission, a score outside ``[0, max]``, or cells that ``dst``'s assignment does not have."""
    from nbgrader.api import MissingEntry
    from sqlalchemy.exc import SAWarning

    with _gradebook(src) as gb:
        try:
            sub = gb.find_submission(assignment, student)
        except MissingEntry:
            raise GradingError(f"{src} has no submission of {assignment} by {student}") from None
        person = {k: getattr(sub.student, k) for k in ("first_name", "last_name", "email", "lms_user_id")}
        timestamp = sub.timestamp
        grades = [(nb.name, g.name, g.auto_score, g.manual_score, g.extra_credit, float(g.max_score))
                  for nb in sub.notebooks for g in nb.grades]
        comments = [(nb.name, c.name, c.auto_comment, c.manual_comment) for nb in sub.notebooks for c in nb.comments]
    for nb, cell, auto, by_hand, extra, max_score in grades:
        if not all(_in_range(v, max_score) for v in (auto, by_hand, extra)):
            raise GradingError(f"{src}: {student}/{assignment}/{nb} cell {cell} has a score outside [0, {max_score:g}]")
    with _gradebook(dst) as gb, warnings.catch_warnings():
        # nbgrader's add_submission builds its rows during a session autoflush (SQLAlchemy warns)
        warnings.simplefilter("ignore", SAWarning)
        gb.update_or_create_student(student, **person)
        gb.update_or_create_submission(assignment, student, timestamp=timestamp)
        try:
            for nb, cell, auto, by_hand, extra, max_score in grades:
                grade = gb.find_grade(cell, nb, assignment, student)
                if abs(float(grade.max_score) - max_score) > 1e-9:
                    raise GradingError(f"{assignment}/{nb} cell {cell} is worth {max_score:g} in {src} but "
                                       f"{float(grade.max_score):g} in {dst}: grade into a new folder")
                grade.auto_score = auto
                if manual and by_hand is not None:
                    grade.manual_score = by_hand
                if manual and extra is not None:
                    grade.extra_credit = extra
                grade.needs_manual_grade = grade.manual_score is not None or grade.auto_score is None
            for nb, cell, auto_comment, manual_comment in comments:
                comment = gb.find_comment(cell, nb, assignment, student)
                comment.auto_comment = auto_comment
                if manual and manual_comment is not None:
                    comment.manual_comment = manual_comment
        except MissingEntry as error:
            gb.db.rollback()
            raise GradingError(f"{dst} does not have the cells of {assignment} that {src} graded ({error}): "
                               "grade into a new folder") from None
        gb.db.commit()
