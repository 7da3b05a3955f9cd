"""Submitted notebooks: finding them in a folder (layouts and student ids), extracting a zip
safely, and preparing one for nbgrader (readable, valid, deleted test cells restored)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .notebooks import Catalog, grade_id_of, is_ignored, nbformat_module, nbgrader_metadata, normalize_notebook
from .reports import GradingError, shorten

_MAX_NOTEBOOK_BYTES = 200 * 2**20


# ---------------------------------------------------------------------------------------------
# Finding submissions
# ---------------------------------------------------------------------------------------------


@dataclass
class Submission:
    student: str
    assignment: str
    notebook: str
    path: Path
    origin: str
    notes: list[str] = field(default_factory=list)


def _student_id(raw: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@+-]+", "_", raw.strip()).strip("._-")


def extract_zip(path: Path, dest: Path) -> list[tuple[str, str]]:
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
            if any(is_ignored(p) for p in parts):
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


def discover_submissions(root: Path, catalog: Catalog, exclude: Path | None = None) -> tuple[list[Submission], list[tuple[str, str]]]:
    owner = catalog.notebook_to_assignment
    names = sorted(owner)
    by_key: dict[tuple[str, str], list[Submission]] = {}
    skipped: list[tuple[str, str]] = []
    files = [root] if root.is_file() else sorted(root.rglob("*"))
    base = root.parent if root.is_file() else root
    for path in files:
        if not path.is_file() or path.suffix.lower() != ".ipynb":
            continue
        rel = path.relative_to(base)
        if any(is_ignored(p) for p in rel.parts):
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
        sub = Submission(student, a, nb, path, origin)
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


def prepare_submission(path: Path, release) -> tuple[object | None, str | None, list[str]]:
    """Read a submitted notebook and make it safe to hand to nbgrader.

    Returns (notebook or None, why it is unreadable or None, restored grade ids).  Outputs are
    cleared, cell ids made valid and unique, and graded test cells the student deleted are put
    back (from the student version) right after the cell that preceded them there."""
    nbformat = nbformat_module()
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
        return None, f"the file cannot be read as a notebook ({type(exc).__name__}: {shorten(exc, 160)})", []
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    normalize_notebook(nb)
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
            return None, f"the notebook does not follow the notebook format ({shorten(exc, 160)})", []
    restored = _restore_tests(nb, release)
    return nb, None, restored


def _restore_tests(nb, release) -> list[str]:
    order = [(gid, cell) for cell in release.cells if (gid := grade_id_of(cell))]
    pos = {}
    for i, cell in enumerate(nb.cells):
        gid = grade_id_of(cell)
        if gid and gid not in pos:
            pos[gid] = i
    ids = {c.get("id") for c in nb.cells}
    restored = []
    for k, (gid, rcell) in enumerate(order):
        if gid in pos or not nbgrader_metadata(rcell).get("grade"):
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
