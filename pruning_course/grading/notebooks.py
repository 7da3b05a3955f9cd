"""The course catalogue (which notebooks belong to which assignment) and helpers that read,
normalise, write and inspect notebooks: nbgrader metadata of cells, errors and run flags
recorded in executed notebooks."""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .reports import GradingError, shorten

_IGNORE = (".ipynb_checkpoints", "__pycache__", "*.pyc", "feedback", ".DS_Store", "__MACOSX", ".*")
_CELL_METADATA_DROP = ("execution", "ExecuteTime")


# ---------------------------------------------------------------------------------------------
# Course catalogue
# ---------------------------------------------------------------------------------------------


@dataclass
class Catalog:
    root: Path
    assignments: dict[str, list[str]]  # assignment -> notebook names (without .ipynb)

    @property
    def notebook_to_assignment(self) -> dict[str, str]:
        return {nb: a for a, nbs in self.assignments.items() for nb in nbs}


def is_ignored(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pat) for pat in _IGNORE)


def catalog_of(solutions_dir, assignments: Iterable[str] | None = None) -> Catalog:
    root = Path(solutions_dir).resolve()
    if not root.is_dir():
        raise GradingError(f"solutions directory not found: {root}")
    found: dict[str, list[str]] = {}
    for d in sorted(root.iterdir()):
        if d.is_dir() and not is_ignored(d.name):
            nbs = sorted(p.stem for p in d.glob("*.ipynb") if not is_ignored(p.name))
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
    return Catalog(root, found)


# ---------------------------------------------------------------------------------------------
# Notebook helpers
# ---------------------------------------------------------------------------------------------


def nbformat_module():
    import nbformat

    return nbformat


def nbgrader_metadata(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def grade_id_of(cell) -> str | None:
    return nbgrader_metadata(cell).get("grade_id")


def is_test_cell(cell) -> bool:
    m = nbgrader_metadata(cell)
    return bool(m.get("grade")) and not m.get("solution") and cell.get("cell_type") == "code"


def normalize_notebook(nb) -> None:
    """Strip per-run noise (execution timings) and make cell ids present and unique."""
    seen: set[str] = set()
    for i, cell in enumerate(nb.cells):
        for key in _CELL_METADATA_DROP:
            cell.get("metadata", {}).pop(key, None)
        cid = cell.get("id")
        if not cid or not re.fullmatch(r"[a-zA-Z0-9-_]{1,64}", str(cid)) or cid in seen:
            base = re.sub(r"[^a-zA-Z0-9-_]", "-", str(grade_id_of(cell) or cid or f"cell-{i}"))[:56] or f"cell-{i}"
            cid, k = base, 1
            while cid in seen:
                cid, k = f"{base}-{k}", k + 1
            cell["id"] = cid
        seen.add(cid)
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 5))


def notebook_bytes(nb) -> str:
    text = nbformat_module().writes(nb)
    return text if text.endswith("\n") else text + "\n"


def read_notebook(path: Path):
    nbformat = nbformat_module()
    with open(path, encoding="utf-8-sig") as f:
        return nbformat.read(f, as_version=4)


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically (nbgrader leaves read-only files behind; never write through them)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Autograded-notebook inspection
# ---------------------------------------------------------------------------------------------


#: errors the autograder itself puts on cells (see autograder/course_preprocessors.py), and how
#: the list of failed tests names them (the status sentence explains them once)
_RUN_ERRORS = {
    "CellTimeoutError": "timed out",
    "KernelUnresponsiveError": "timed out and the kernel ignored the interrupt",
    "KernelDiedError": "the kernel died in this cell",
    "KernelExitedError": "it called exit(), which shut the kernel down",
    "NotExecutedError": "not executed (the kernel was lost earlier)",
    "OutputTimeoutError": "its output did not arrive in time",
}


def cell_errors(path: Path) -> dict[str, str]:
    """``{grade_id: "Ename: evalue"}`` for graded cells of an executed notebook that raised
    (a timeout or crash recorded on the cell wins over the exception it caused)."""
    if not path.exists():
        return {}
    out = {}
    for cell in read_notebook(path).cells:
        gid = grade_id_of(cell)
        if not gid or cell.cell_type != "code":
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        ours = [_RUN_ERRORS[o.get("ename")] for o in errors if o.get("ename") in _RUN_ERRORS]
        if ours:
            out[gid] = ours[-1]
        elif errors:
            o = errors[0]
            out[gid] = shorten(f"{o.get('ename')}: {o.get('evalue')}" if o.get("evalue") else o.get("ename"))
    return out


def run_flags(path: Path) -> list[str]:
    """Timeouts and kernel deaths recorded in an executed notebook, as ``"<status>: <sentence>"``."""
    if not path.exists():
        return []
    flags = []
    for i, cell in enumerate(read_notebook(path).cells):
        if cell.cell_type != "code":
            continue
        where = f"cell {i + 1}" + (f" ({grade_id_of(cell)})" if grade_id_of(cell) else "")
        for o in cell.get("outputs", []):
            if o.get("output_type") != "error":
                continue
            if o.get("ename") == "CellTimeoutError":
                flags.append(f"timeout: {where} did not finish within the time limit and was interrupted")
            elif o.get("ename") == "KernelDiedError":
                flags.append(f"kernel_died: the kernel died in {where}; the cells after it were not executed")
            elif o.get("ename") == "KernelExitedError":  # the death showed in a later cell; this one exited
                flags.append(f"kernel_died: {where} called exit() or quit(), which shut the kernel down; "
                             "the cells it had not reached by then were not executed")
            elif o.get("ename") == "KernelUnresponsiveError":
                flags.append(f"timeout: {where} did not finish within the time limit and its kernel ignored "
                             "the interrupt, so it was shut down; the cells after it were not executed")
            elif o.get("ename") == "OutputTimeoutError":
                flags.append(f"timeout: the output of {where} did not arrive in time")
    return flags
