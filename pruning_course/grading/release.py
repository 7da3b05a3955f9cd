"""Student versions and their checks: :func:`generate` writes them from the solutions,
:func:`drift` lists the ones that are out of date, :func:`validate` autogrades solutions and
unmodified student versions."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Iterable

from .course import Course, failure_summary, gradebook_cells
from .notebooks import (
    Catalog,
    catalog_of,
    cell_errors,
    notebook_bytes,
    grade_id_of,
    is_ignored,
    is_test_cell,
    normalize_notebook,
    read_notebook,
    run_flags,
    write_bytes_atomically,
)
from .reports import (
    DEFAULT_TIMEOUT,
    RELEASE_STUDENT,
    SOLUTION_STUDENT,
    CellCheck,
    NotebookValidation,
    ValidationReport,
    as_number,
)

# ---------------------------------------------------------------------------------------------
# generate / drift
# ---------------------------------------------------------------------------------------------


def _release_files(course: Course, assignments: Iterable[str]) -> dict[str, bytes]:
    """Student files of the given assignments, as ``{"<assignment>/<path>": bytes}`` (notebooks normalised)."""
    out = {}
    for a in assignments:
        base = course.root / "release" / a
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(base)
            if path.is_dir() or any(is_ignored(p) for p in rel.parts):
                continue
            if path.suffix == ".ipynb":
                nb = read_notebook(path)
                normalize_notebook(nb)
                data = notebook_bytes(nb).encode()
            else:
                data = path.read_bytes()
            out[f"{a}/{rel.as_posix()}"] = data
    return out


def _drift_from(files: dict[str, bytes], catalog: Catalog, notebooks_dir) -> list[str]:
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
    catalog = catalog_of(solutions_dir, assignments)
    out_root = Path(notebooks_dir)
    with Course(catalog, config=config) as course:
        course.generate(catalog.assignments)
        files = _release_files(course, catalog.assignments)
    written = []
    for name, data in sorted(files.items()):
        dst = out_root / name
        if not dst.is_file() or dst.read_bytes() != data:
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomically(dst, data)
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
    catalog = catalog_of(solutions_dir, assignments)
    with Course(catalog, config=config) as course:
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
    catalog = catalog_of(solutions_dir, assignments)
    report = ValidationReport()
    with Course(catalog, timeout=timeout, quick=quick, config=config) as course:
        course.generate(catalog.assignments)
        files = _release_files(course, catalog.assignments)
        report.drift = _drift_from(files, catalog, notebooks_dir)
        tasks: list[dict] = []
        all_checks: dict[str, dict[str, NotebookValidation]] = {}
        for a, nbs in catalog.assignments.items():
            checks = {nb: NotebookValidation(a, nb) for nb in nbs}
            for nb in nbs:
                source = read_notebook(catalog.root / a / f"{nb}.ipynb")
                committed = Path(notebooks_dir) / a / f"{nb}.ipynb"
                student_version = committed if committed.is_file() else course.release_nb(a, nb)
                text = student_version.read_text(encoding="utf-8", errors="replace")
                for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "BEGIN MARK SCHEME"):
                    if marker in text:
                        checks[nb].problems.append(f"the student version contains '### {marker}'")
                kernel = source.metadata.get("kernelspec", {}).get("name")
                if kernel != "python3":
                    checks[nb].warnings.append(f"kernelspec is {kernel!r}; grading always uses 'python3'")
                if not any(is_test_cell(c) for c in source.cells):
                    checks[nb].warnings.append("no autograded test cells")
                for student, src in ((SOLUTION_STUDENT, catalog.root / a / f"{nb}.ipynb"),
                                     (RELEASE_STUDENT, student_version)):
                    d = course.submitted_dir(student, a)
                    d.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, d / f"{nb}.ipynb")
            n_cells = sum(len(read_notebook(catalog.root / a / f"{nb}.ipynb").cells) for nb in nbs)
            for student in (SOLUTION_STUDENT, RELEASE_STUDENT):
                tasks.append({"op": "autograde", "assignment": a, "student": student,
                              "limit": timeout * (n_cells + 2) + 180})
            all_checks[a] = checks
        for r in course.run(tasks):
            if not r.get("success"):
                for v in all_checks[r["assignment"]].values():
                    v.problems.append(f"autograding the {r['student']} failed: {failure_summary(r)}")
        for a, checks in all_checks.items():
            _check_scores(course, a, checks)
            report.notebooks.extend(checks.values())
    report.seconds = time.time() - start
    return report


def _check_scores(course: Course, a: str, checks: dict[str, NotebookValidation]) -> None:
    cells = {}
    for student in (SOLUTION_STUDENT, RELEASE_STUDENT):
        for nb in checks:
            cells[student, nb] = gradebook_cells(course.db_path, student, a, nb)
    for nb, v in checks.items():
        sol, rel = cells[SOLUTION_STUDENT, nb], cells[RELEASE_STUDENT, nb]
        if sol is None or rel is None:
            v.problems.append("no grades recorded")
            continue
        outputs = cell_errors(course.autograded_nb(SOLUTION_STUDENT, a, nb))
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
                                  f"({as_number(info['score'] or 0)}/{as_number(info['max_score'])}): {check.message or 'no error output'}")
            if (r.get("score") or 0) > 0:
                v.problems.append(f"the unmodified student version scores {as_number(r['score'])} on {gid}")
        for flag in run_flags(course.autograded_nb(SOLUTION_STUDENT, a, nb)):
            v.problems.append(f"solution: {flag}")
        graded = course.autograded_nb(SOLUTION_STUDENT, a, nb)
        for cell in read_notebook(graded).cells if graded.exists() else []:
            if is_test_cell(cell) and any(o.get("output_type") == "execute_result" for o in cell.get("outputs", [])):
                v.warnings.append(f"test cell {grade_id_of(cell)} ends with an expression that has a value; nbgrader "
                                  "scores a numeric last value as partial credit (end test cells with a statement)")

