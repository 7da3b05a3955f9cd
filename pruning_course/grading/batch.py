"""Grading a batch of submissions: :func:`grade`, one job per student and assignment through
nbgrader, the lock on the output folder, feedback pages and the cumulative outputs
(``grades.csv``, ``grading_status.json``)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import html
import io
import json
import os
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from .course import (
    Course,
    failure_summary,
    gradebook_cells,
    gradebook_scores,
    merge_submission,
    template_gradebook,
)
from .notebooks import (
    catalog_of,
    cell_errors,
    notebook_bytes,
    nbgrader_metadata,
    read_notebook,
    run_flags,
    write_bytes_atomically,
)
from .reports import (
    CSV_FIELDS,
    DEFAULT_TIMEOUT,
    STATUSES,
    GradeReport,
    GradingError,
    NotebookGrade,
    as_number,
    shorten,
)
from .submissions import discover_submissions, extract_zip, prepare_submission, Submission
from .sandbox import sandbox_problem
from .tampering import exercise_names, reference_answers, tampering_attempts

# ---------------------------------------------------------------------------------------------
# grade
# ---------------------------------------------------------------------------------------------


def grade(submissions: str | Path, out_dir: str | Path, solutions_dir="solutions",
          timeout: int = DEFAULT_TIMEOUT, *, quick: bool = True, wall_timeout: float | None = None,
          config: str | Path | None = None, sandbox: bool = True, jobs: int | None = None,
          shard: tuple[int, int] | None = None) -> GradeReport:
    """Autograde a folder or ``.zip`` of submitted notebooks (layouts: see the package docstring).

    ``timeout`` is the per-cell limit in seconds; ``wall_timeout`` caps one student's assignment
    as a whole (default: enough for every cell to hit ``timeout``).  Results accumulate in
    ``out_dir`` (``grades.csv``, feedback, gradebook); grading the same student again replaces
    that student's grade and keeps everyone else's.

    ``sandbox``: every kernel runs in bubblewrap (:mod:`.sandbox`), and :class:`GradingError`
    says how to install it when it cannot; ``False`` runs the students' code as the caller
    (unsafe: for a machine without bubblewrap and submissions you trust).

    ``jobs``: students graded side by side (default: one per core), each job in its own course
    folder and gradebook, merged into ``out``'s by this process. ``shard=(k, n)``: grade only the
    students of shard ``k`` of ``n`` (1-based; :func:`shard_of`, by a hash of the student id, the
    same on every machine), so that ``n`` machines grade a class and :func:`merge_outputs`
    combines their folders."""
    start = time.time()
    jobs = (os.cpu_count() or 1) if jobs is None else int(jobs)
    if jobs < 1:
        raise GradingError(f"jobs must be at least 1, got {jobs}")
    if shard is not None and not (len(shard) == 2 and 1 <= shard[0] <= shard[1]):
        raise GradingError(f"shard must be K/N with 1 <= K <= N, got {shard[0]}/{shard[1]}")
    problem = sandbox_problem() if sandbox else None
    if problem:  # before anything is created
        raise GradingError(problem)
    catalog = catalog_of(solutions_dir)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    db_path = out / "gradebook.db"
    report = GradeReport(out_dir=out, csv_path=out / "grades.csv")
    with _out_dir_lock(out), Course(catalog, db_path, timeout=timeout, quick=quick, config=config,
                                          sandbox=sandbox) as course:
        if db_path.exists():
            backup_gradebook(db_path, out / "backups")
        src = Path(submissions).resolve()
        if not src.exists():
            raise GradingError(f"submissions not found: {src}")
        if src.is_file() and src.suffix.lower() == ".zip":
            root = course.tmp / "upload"
            root.mkdir()
            report.skipped += extract_zip(src, root)
        else:
            root = src
        subs, skipped = discover_submissions(root, catalog, exclude=out)
        report.skipped += skipped
        if shard is not None:
            subs = [s for s in subs if shard_of(s.student, shard[1]) == shard[0]]
        groups: dict[tuple[str, str], list[Submission]] = {}
        for s in subs:
            groups.setdefault((s.student, s.assignment), []).append(s)
        if groups:
            try:
                course.generate(sorted({a for _, a in groups}))
            except GradingError as exc:
                raise GradingError(f"{exc}\nIf cells were added to or removed from the solutions since {out} "
                                   "was first graded, grade into a new folder.") from exc
            report.grades += _grade_batch(course, out, groups, wall_timeout, jobs)
        _write_csv(out, db_path)
        (out / "skipped.csv").unlink(missing_ok=True)  # it describes one run
        if report.skipped:
            with open(out / "skipped.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["file", "reason"])
                w.writerows(report.skipped)
    report.seconds = time.time() - start
    return report


def shard_of(student: str, shards: int) -> int:
    """The shard (1 .. ``shards``) a student belongs to: a hash of the id, the same everywhere."""
    digest = hashlib.sha256(student.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards + 1


def merge_outputs(inputs: list[str | Path], out_dir: str | Path, solutions_dir="solutions") -> GradeReport:
    """Combine the output folders of several ``grade`` runs (the shards of a class, graded on
    several machines) into ``out_dir``: one gradebook, status file, ``grades.csv`` and the
    feedback, graded notebooks and logs of every student.

    The assignments are generated from ``solutions_dir`` into the merged gradebook, and each
    submission's grades are checked against them (same cells, same points, scores within
    ``[0, max]``) as they are copied (:func:`~.course.merge_submission`, manual scores and extra
    credit included). A student in several inputs keeps the most recently graded record; inputs
    are only read."""
    start = time.time()
    catalog = catalog_of(solutions_dir)
    out = Path(out_dir).resolve()
    sources = [Path(p).resolve() for p in inputs]
    for src in sources:
        if not (src / "gradebook.db").is_file():
            raise GradingError(f"{src} is not the output folder of a grade run (it has no gradebook.db)")
        if src == out:
            raise GradingError(f"{src} is both an input and the output: merge into a new folder")
    submitted = {src: _submissions_in(src / "gradebook.db") for src in sources}
    assignments = sorted({a for subs in submitted.values() for _, a in subs})
    unknown = [a for a in assignments if a not in catalog.assignments]
    if unknown:
        raise GradingError(f"{', '.join(unknown)} graded in the inputs but not in {catalog.root}: "
                           "pass the --solutions the shards were graded with")
    out.mkdir(parents=True, exist_ok=True)
    db_path = out / "gradebook.db"
    report = GradeReport(out_dir=out, csv_path=out / "grades.csv")
    with _out_dir_lock(out), Course(catalog, db_path, sandbox=False) as course:
        if db_path.exists():
            backup_gradebook(db_path, out / "backups")
        if assignments:
            course.generate(assignments)
        status = _load_status(out)
        for src in sources:
            for student, a in submitted[src]:
                merge_submission(src / "gradebook.db", db_path, student, a, manual=True)
            for folder in ("feedback", "autograded", "logs"):
                _copy_regular_files(src / folder, out / folder)
            for key, rec in _load_status(src, set_aside=False).items():
                if key not in status or rec["graded_at"] >= status[key]["graded_at"]:
                    status[key] = rec
        write_bytes_atomically(out / "grading_status.json", json.dumps(dict(sorted(status.items())), indent=1).encode())
        _write_csv(out, db_path)
    report.grades = [NotebookGrade(r["student"], r["assignment"], r["notebook"], r["score"], r["max_score"],
                                   r["status"], r["reason"], submitted=r["submitted"]) for r in status.values()]
    report.seconds = time.time() - start
    return report


def _submissions_in(db: Path) -> list[tuple[str, str]]:
    """``(student, assignment)`` of every submission in a gradebook (read-only)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
            return sorted(con.execute("SELECT sa.student_id, a.name FROM submitted_assignment sa "
                                      "JOIN assignment a ON sa.assignment_id = a.id"))
    except sqlite3.Error as error:
        raise GradingError(f"{db} cannot be read as a gradebook ({error})") from None


def _copy_regular_files(src: Path, dst: Path) -> None:
    """Copy the plain files under ``src`` into ``dst`` (links and anything else are left out)."""
    if not src.is_dir() or src.is_symlink():
        return
    for folder, _dirs, names in os.walk(src):  # does not follow links to folders
        for name in names:
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                continue
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomically(target, path.read_bytes())


@dataclass
class _Job:
    """One student's notebooks of one assignment, through the stages of grading."""

    student: str
    assignment: str
    notebooks: list[str]
    submitted: dict[str, Submission]
    notes: dict[str, list[str]] = field(default_factory=dict)
    flags: dict[str, set] = field(default_factory=dict)
    root: Path = Path()
    code_cells: int = 0
    problem: str | None = None
    graded: bool = False  # nbgrader graded it: its gradebook holds its scores

    @property
    def course_root(self) -> Path:
        return self.root / "course"

    @property
    def db(self) -> Path:
        return self.root / "gradebook.db"

    @property
    def submitted_dir(self) -> Path:
        return self.course_root / "submitted" / self.student / self.assignment

    def autograded_nb(self, nb: str) -> Path:
        return self.course_root / "autograded" / self.student / self.assignment / f"{nb}.ipynb"

    def feedback_html(self, nb: str) -> Path:
        return self.course_root / "feedback" / self.student / self.assignment / f"{nb}.html"

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


def _grade_batch(course: Course, out: Path, groups: dict, wall_timeout: float | None, jobs: int) -> list[NotebookGrade]:
    """Grade every (student, assignment) job in its own course folder and gradebook, ``jobs`` side
    by side; each job's grades are checked and merged into ``out``'s gradebook, its feedback
    published and its status saved as soon as it is done, so an interrupted run keeps them."""
    template = course.tmp / "template.db"
    template_gradebook(course.db_path, template)
    batch = []
    for n, ((student, a), group) in enumerate(sorted(groups.items())):
        job = _Job(student, a, course.catalog.assignments[a], {s.notebook: s for s in group},
                   root=course.tmp / "students" / f"{n:05d}")
        for nb in job.notebooks:
            job.notes[nb] = list(job.submitted[nb].notes) if nb in job.submitted else []
            job.flags[nb] = set()
        try:
            _make_student_folder(course, job, template)
            _prepare_job(course, job)
        except Exception as exc:  # never let one submission stop the batch
            job.problem = shorten(f"internal error while reading the submission ({type(exc).__name__}: {exc})")
        batch.append(job)
        log = out / "logs" / job.student / f"{job.assignment}.log"
        if log.exists():
            log.unlink()

    def tasks_for(chosen: list[_Job], limit) -> list[dict]:
        tasks = []
        for job in chosen:
            log = str(out / "logs" / job.student / f"{job.assignment}.log")
            where = {"student": job.student, "root": str(job.course_root), "db": str(job.db)}
            tasks.append({"op": "autograde", "assignment": job.assignment, **where, "limit": limit(job), "log": log})
            tasks.append({"op": "feedback", "assignment": job.assignment, **where, "limit": 300, "log": log,
                          "needs": len(tasks) - 1})
        return tasks

    grades: list[NotebookGrade] = []

    def finish(job: _Job) -> None:
        """Merge the job's grades, publish its feedback and save its status (never raises)."""
        try:
            if job.graded:
                merge_submission(job.db, course.db_path, job.student, job.assignment)
            done = _collect(course, out, job)
        except Exception as exc:
            done = [NotebookGrade(job.student, job.assignment, nb, 0.0, 0.0, "error",
                                  shorten(f"internal grading error ({type(exc).__name__}: {exc})", 400),
                                  submitted=job.submitted[nb].origin if nb in job.submitted else "")
                    for nb in job.notebooks]
        grades.extend(done)
        _save_status(out, done)

    def first_run_done(chosen: list[_Job]):
        def on_done(index: int, result: dict) -> None:
            job = chosen[index // 2]
            if index % 2 == 0:  # autograde
                if not result.get("success"):
                    job.problem = failure_summary(result)
                elif not all(job.autograded_nb(nb).exists() for nb in job.submitted):
                    job.problem = "nbgrader produced no graded notebook"
                job.graded = job.problem is None
            elif job.problem is None:  # its feedback: the job is done
                finish(job)
        return on_done

    runnable = [j for j in batch if j.problem is None]
    course.run(tasks_for(runnable, lambda j: wall_timeout or course.timeout * (j.code_cells + 2) + 180), jobs=jobs,
               on_done=first_run_done(runnable))

    # what nbgrader could not grade is graded as the unmodified student version (zero), with the reason
    failed = [j for j in batch if j.problem is not None]
    for job in failed:
        job.graded = False
        for nb in job.notebooks:
            job.note(nb, "error", f"grading failed ({job.problem}); scored as the unmodified student version (zero)")
        try:
            _make_student_folder(course, job, template)
            for nb in job.notebooks:
                shutil.copyfile(course.release_nb(job.assignment, nb), job.submitted_dir / f"{nb}.ipynb")
        except Exception as exc:
            job.note(None, None, f"the unmodified student version could not be prepared ({type(exc).__name__})")
    if failed:
        def on_retry_done(index: int, result: dict) -> None:
            job = failed[index // 2]
            if index % 2 == 0:
                job.graded = bool(result.get("success"))
                if not job.graded:
                    job.note(None, None, f"grading the unmodified student version failed too ({failure_summary(result)})")
            else:
                finish(job)
        course.run(tasks_for(failed, lambda j: course.timeout * 4 + 300), jobs=jobs, on_done=on_retry_done)
    return sorted(grades, key=lambda g: (g.student, g.assignment, g.notebook))


def _make_student_folder(course: Course, job: "_Job", template: Path) -> None:
    """The job's own nbgrader course folder (the assignment's source and an empty ``submitted/``)
    and its own gradebook (the assignment's cells, no other student)."""
    if job.root.exists():
        shutil.rmtree(job.root)
    shutil.copytree(course.root / "source" / job.assignment, job.course_root / "source" / job.assignment)
    job.submitted_dir.mkdir(parents=True)
    shutil.copyfile(template, job.db)


def _prepare_job(course: Course, job: _Job) -> None:
    """Write the student's notebooks, made safe for nbgrader, into ``submitted/``."""
    sub_dir = job.submitted_dir
    for nb in job.notebooks:
        release = read_notebook(course.release_nb(job.assignment, nb))
        if nb not in job.submitted:
            job.note(nb, "missing", "this notebook was not submitted")
            continue
        prepared, unreadable, restored, notes = prepare_submission(job.submitted[nb].path, release)
        if prepared is None:
            job.note(nb, "invalid", f"{unreadable}; it was graded as the unmodified student version (zero)")
            prepared = release
        elif restored:
            job.note(nb, "cells_restored", f"deleted test cell(s) {', '.join(restored)} were put back and graded")
        for text in notes:
            job.note(nb, None, text)
        if prepared is not release:
            _read_code(job, nb, prepared, release)
        job.code_cells += sum(c.cell_type == "code" for c in prepared.cells)
        (sub_dir / f"{nb}.ipynb").write_text(notebook_bytes(prepared), encoding="utf-8")


def _read_code(job: _Job, nb: str, prepared, release) -> None:
    """Report tampering attempts, and void the test cells of exercises answered with the package's
    own code (:mod:`.tampering`): the judge (``CourseExecute``) fails them with the reason."""
    cells = [(i, c.source, not nbgrader_metadata(c).get("locked", False))
             for i, c in enumerate(prepared.cells, 1) if c.cell_type == "code"]
    for finding in tampering_attempts(cells):
        job.note(nb, "tampering", f"tampering attempt, {finding}")
    exercises = exercise_names([c.source for c in release.cells
                                if c.cell_type == "code" and nbgrader_metadata(c).get("solution")])
    void = {}
    for finding in reference_answers(cells, exercises):
        job.note(nb, "reference_answer", str(finding))
        for cell in release.cells:
            meta = nbgrader_metadata(cell)
            if cell.cell_type == "code" and meta.get("grade") and not meta.get("solution") \
                    and re.search(rf"\b{re.escape(finding.name)}\b", cell.source):
                void[meta["grade_id"]] = (f"no points: {finding.name} is the course's own reference implementation, "
                                          f"not your answer ({finding})")
    prepared.metadata["pruning_course"] = {"void_tests": void}


def _collect(course: Course, out: Path, job: _Job) -> list[NotebookGrade]:
    """Scores from the gradebook, reasons from the executed notebooks; publish feedback."""
    student, a = job.student, job.assignment
    grades = []
    for nb in job.notebooks:
        flags, notes = job.flags[nb], job.notes[nb]
        cells = (gradebook_cells(course.db_path, student, a, nb) if job.graded else None) or {}
        graded_nb = job.autograded_nb(nb)
        if "error" not in flags:
            for flag in run_flags(graded_nb):
                kind, sentence = flag.split(": ", 1)
                flags.add(kind)
                notes.append(sentence)
        errors = cell_errors(graded_nb)
        failed = [f"{gid} ({as_number(c['score'] or 0)}/{as_number(c['max_score'])})"
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
        if graded_nb.exists() and not job.feedback_html(nb).exists():
            notes.append("nbgrader could not produce the feedback page")
        status = next((s for s in STATUSES if s in flags), "graded")
        reason = " | ".join(notes)
        feedback = _publish_feedback(job, out, nb, score, max_score, status, reason)
        grades.append(NotebookGrade(student, a, nb, score, max_score, status, reason, feedback,
                                    job.submitted[nb].origin if nb in job.submitted else ""))
    return grades


def _max_points(path: Path) -> float:
    try:
        return float(sum(nbgrader_metadata(c).get("points", 0) or 0 for c in read_notebook(path).cells if nbgrader_metadata(c).get("grade")))
    except Exception:
        return 0.0


def _publish_feedback(job: _Job, out: Path, nb: str, score: float, max_score: float, status: str,
                      reason: str) -> Path:
    """Copy the feedback (with a grading-notes box) and the executed notebook into ``out``."""
    student, a = job.student, job.assignment
    box = _notes_box(student, nb, score, max_score, status, reason)
    src = job.feedback_html(nb)
    dst = out / "feedback" / student / a / f"{nb}.html"
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.exists():
        page = src.read_text(encoding="utf-8", errors="replace")
        m = re.search(r"<body[^>]*>", page, flags=re.IGNORECASE)
        page = page[: m.end()] + "\n" + box + page[m.end():] if m else box + page
    else:
        page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(nb)}</title></head>"
                f"<body>\n{box}\n<p>No feedback notebook could be produced for this submission.</p></body></html>\n")
    write_bytes_atomically(dst, page.encode("utf-8"))
    graded = job.autograded_nb(nb)
    if graded.exists():
        target = out / "autograded" / student / a / f"{nb}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(target, graded.read_bytes())
    return dst


def _notes_box(student, nb, score, max_score, status, reason) -> str:
    colour = "#2e7d32" if status == "graded" else "#c62828"
    items = "".join(f"<li>{html.escape(part)}</li>" for part in reason.split(" | ") if part)
    return (f'<div id="autograder-notes" style="border:2px solid {colour};border-radius:6px;margin:1em;'
            f'padding:0.6em 1em;font-family:sans-serif;background:#fafafa">'
            f"<strong>Autograder</strong> &mdash; {html.escape(student)}, {html.escape(nb)}: "
            f"score {as_number(score)} / {as_number(max_score)} (status: {html.escape(status)})"
            f"<ul>{items}</ul></div>")


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


#: gradebook backups always kept (the newest); older ones go only when no grade is lost
BACKUPS_KEPT = 20
_BACKUP_NAME = re.compile(r"gradebook-(\d{8}-\d{6})(?:-(\d+))?\.db")


def backup_gradebook(db_path: Path, folder: Path, keep: int = BACKUPS_KEPT) -> Path:
    """Copy the gradebook to ``folder/gradebook-YYYYmmdd-HHMMSS.db`` before a run changes it.

    The newest ``keep`` backups stay; an older one is deleted only when every grade in it (each
    cell's automatic and manual score and extra credit, per student and notebook) is also in the
    gradebook or in a backup that stays -- so no grade ever recorded is lost, however many runs
    replace it.  A backup that cannot be read is never deleted."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = folder / f"gradebook-{stamp}.db", 1
    while target.exists():
        target, n = folder / f"gradebook-{stamp}-{n}.db", n + 1
    shutil.copyfile(db_path, target)
    backups = sorted((m.group(1), int(m.group(2) or 0), p) for p in folder.iterdir()
                     if (m := _BACKUP_NAME.fullmatch(p.name)))
    paths = [p for *_, p in backups]
    kept = _grade_rows(db_path) or set()
    for p in paths[-keep:]:
        kept |= _grade_rows(p) or set()
    for p in reversed(paths[:-keep]):  # newest first: what it holds protects the older ones
        rows = _grade_rows(p)
        if rows is not None and rows <= kept:
            p.unlink()
        else:
            kept |= rows or set()
    return target


def _grade_rows(db: Path) -> set[tuple] | None:
    """Every grade in an nbgrader gradebook as ``(student, assignment, notebook, cell, auto,
    manual, extra credit)``, or None when the file cannot be read as one."""
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as con:
            return set(con.execute(
                "SELECT sa.student_id, a.name, n.name, c.name, g.auto_score, g.manual_score, g.extra_credit "
                "FROM grade g JOIN submitted_notebook sn ON g.notebook_id = sn.id "
                "JOIN submitted_assignment sa ON sn.assignment_id = sa.id "
                "JOIN assignment a ON sa.assignment_id = a.id JOIN notebook n ON sn.notebook_id = n.id "
                "JOIN base_cell c ON g.cell_id = c.id"))
    except sqlite3.Error:
        return None


def _status_key(student: str, a: str, nb: str) -> str:
    return f"{student}/{a}/{nb}"


_STATUS_FIELDS = {"student": str, "assignment": str, "notebook": str, "score": (int, float),
                  "max_score": (int, float), "status": str, "reason": str, "submitted": str, "graded_at": str}


def _load_status(out: Path, set_aside: bool = True) -> dict:
    """``grading_status.json``, re-validated: only records of the right shape, under their own key,
    with a known status and 0 <= score <= max_score. An unreadable file is kept aside as
    ``grading_status.json.unreadable-<time>`` and the statuses start afresh (the scores live in
    the gradebook, so ``grades.csv`` loses no grade)."""
    path = out / "grading_status.json"
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError):
        if set_aside:
            path.replace(out / f"grading_status.json.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        return {}
    status = {}
    for key, rec in raw.items():
        if (isinstance(rec, dict) and all(isinstance(rec.get(f), t) for f, t in _STATUS_FIELDS.items())
                and not isinstance(rec["score"], bool) and rec["status"] in STATUSES
                and key == _status_key(rec["student"], rec["assignment"], rec["notebook"])
                and 0 <= rec["score"] <= rec["max_score"]):
            status[key] = {f: rec[f] for f in _STATUS_FIELDS}
    return status


def _save_status(out: Path, grades: list[NotebookGrade]) -> None:
    path = out / "grading_status.json"
    status = _load_status(out)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    for g in grades:
        status[_status_key(g.student, g.assignment, g.notebook)] = {
            "student": g.student, "assignment": g.assignment, "notebook": g.notebook,
            "score": g.score, "max_score": g.max_score, "status": g.status, "reason": g.reason,
            "submitted": g.submitted, "graded_at": now}
    write_bytes_atomically(path, json.dumps(dict(sorted(status.items())), indent=1).encode())


def _write_csv(out: Path, db_path: Path) -> None:
    """``grades.csv``: every notebook graded into this ``out_dir``; scores from the gradebook."""
    status = _load_status(out)
    scores = gradebook_scores(db_path)
    rows = {}
    for rec in status.values():
        key = (rec["student"], rec["assignment"], rec["notebook"])
        score, max_score = scores.get(key, (0.0, rec["max_score"]))  # a score comes from the gradebook or is zero
        rows[key] = {**{k: rec[k] for k in ("student", "assignment", "notebook", "status", "reason")},
                     "score": as_number(score), "max_score": as_number(max_score)}
    for key, (score, max_score) in scores.items():
        rows.setdefault(key, {"student": key[0], "assignment": key[1], "notebook": key[2],
                              "score": as_number(score), "max_score": as_number(max_score), "status": "graded", "reason": ""})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for key in sorted(rows):
        w.writerow(rows[key])
    write_bytes_atomically(out / "grades.csv", buf.getvalue().encode())
