"""Submitted notebooks: finding them in a folder (layouts and student ids), extracting a zip
safely, and preparing one for nbgrader (readable, valid, deleted test cells restored)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import stat
import time
import unicodedata
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .notebooks import Catalog, grade_id_of, nbformat_module, nbgrader_metadata, normalize_notebook
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


#: longest student id in UTF-8 bytes (it is a folder name, and nbgrader's ``student.id`` column)
_MAX_ID_BYTES = 100


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:6]


def _student_id(raw: str) -> str:
    """The id of a student named ``raw``: NFC-normalised, letters and digits of any script kept
    (``str.isalnum``) with ``._@+-``, every run of other characters replaced by ``_``.  An id
    longer than :data:`_MAX_ID_BYTES` is cut and gets a hash of the name, so it stays distinct."""
    name = unicodedata.normalize("NFC", raw.strip())
    sid = re.sub(r"[^\w.@+-]+", "_", name).strip("._-")
    if len(sid.encode("utf-8")) > _MAX_ID_BYTES:
        sid = sid.encode("utf-8")[: _MAX_ID_BYTES - 7].decode("utf-8", errors="ignore").rstrip("._-")
        sid = f"{sid}-{_short_hash(name)}"
    return sid


def _distinct_ids(raws: set[str]) -> dict[str, str]:
    """``{raw name: student id}`` with no two different names sharing an id.

    Names that differ only in Unicode normal form (``José`` typed on Linux and on macOS) are one
    student.  When cleaning still makes different names collide (``Jane Doe`` and ``Jane, Doe``),
    a name that already was a clean id keeps it and every other gets ``-`` and a short hash of
    the name: the same names always get the same ids."""
    by_id: dict[str, set[str]] = {}
    for raw in raws:
        by_id.setdefault(_student_id(raw), set()).add(unicodedata.normalize("NFC", raw.strip()))
    out = {}
    for raw in raws:
        sid, name = _student_id(raw), unicodedata.normalize("NFC", raw.strip())
        out[raw] = sid if len(by_id[sid]) == 1 or name == sid else f"{sid}-{_short_hash(name)}"
    return out


#: why files in nbgrader's, Jupyter's and the OS's own folders are not graded
_SYSTEM_FOLDERS = {
    ".ipynb_checkpoints": "Jupyter's autosave copies",
    "__MACOSX": "macOS metadata copies added when zipping",
    "__pycache__": "Python's cache",
}


def _not_graded_because(parts: tuple[str, ...]) -> str | None:
    """Why a notebook at these path parts is not graded (a system or hidden folder), or None."""
    for p in parts[:-1]:
        if p in _SYSTEM_FOLDERS:
            return f"in the folder {p} ({_SYSTEM_FOLDERS[p]}); not graded"
        if p == "feedback":
            return ("in a folder named 'feedback' (nbgrader's feedback folder); not graded: "
                    "rename the folder to grade it")
        if p.startswith("."):
            return f"in the hidden folder {p!r} (its name starts with '.'); not graded: rename it to grade it"
    if parts[-1].startswith("._"):
        return "a macOS metadata file (its name starts with '._'), not a notebook; not graded"
    if parts[-1].startswith("."):
        return "a hidden file (its name starts with '.'); not graded: rename it to grade it"
    return None


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
            if (why := _not_graded_because(parts)) is not None:
                skipped.append((info.filename, why))
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                skipped.append((info.filename, "a symbolic link stored in the zip, not a file; not extracted"))
                continue
            if info.file_size > _MAX_NOTEBOOK_BYTES:
                skipped.append((info.filename, f"larger than {_MAX_NOTEBOOK_BYTES // 2**20} MiB"))
                continue
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                # a damaged member (bad CRC, truncated data), an encrypted one or an unknown
                # compression: this file is lost, the rest of the zip is still graded
                target.unlink(missing_ok=True)
                skipped.append((info.filename, f"damaged or unreadable in the zip ({shorten(exc, 160)}); not extracted"))
                continue
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


def _notebook_files(root: Path, exclude: Path | None) -> tuple[list[Path], list[tuple[str, str]]]:
    """The ``.ipynb`` files under ``root`` (sorted), never following a symbolic link: a link is
    refused (it could point anywhere, the solutions included) and listed with the reason."""
    if root.is_file():
        return [root], []
    if exclude is not None and (root.resolve() == exclude or exclude in root.resolve().parents):
        return [], []
    files, refused = [], []

    def unreadable(exc: OSError) -> None:
        refused.append((Path(exc.filename).relative_to(root).as_posix() if exc.filename else str(root),
                        f"cannot read this folder ({exc.strerror or exc}); nothing in it was graded"))

    for folder, dirs, names in os.walk(root, onerror=unreadable):  # os.walk never follows links
        here = Path(folder)
        for d in sorted(dirs):
            path = here / d
            if path.is_symlink():
                refused.append((path.relative_to(root).as_posix(),
                                "a symbolic link to a folder; not followed (copy the files in instead)"))
                dirs.remove(d)
            elif exclude is not None and path.resolve() == exclude:
                dirs.remove(d)  # the output folder of this grading run
        for n in names:
            path = here / n
            if path.suffix.lower() != ".ipynb":
                continue
            if path.is_symlink():
                refused.append((path.relative_to(root).as_posix(),
                                "a symbolic link, not a submitted file; not followed (copy the file in instead)"))
            elif path.is_file():
                files.append(path)
    return sorted(files), refused


def discover_submissions(root: Path, catalog: Catalog, exclude: Path | None = None) -> tuple[list[Submission], list[tuple[str, str]]]:
    """The submissions under ``root`` (layouts: see the package docstring), one per student and
    notebook, and ``(file, why)`` for every notebook file that is not graded: not a course
    notebook, whose it is unclear, in a hidden or system folder, or a symbolic link."""
    owner = catalog.notebook_to_assignment
    names = sorted(owner)
    found: list[tuple[str, Submission]] = []
    files, skipped = _notebook_files(root, exclude)
    base = root.parent if root.is_file() else root
    for path in files:
        rel = path.relative_to(base)
        origin = rel.as_posix()
        if (why := _not_graded_because(rel.parts)) is not None:
            skipped.append((origin, why))
            continue
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
        if not _student_id(raw):
            skipped.append((origin, f"no usable student id in {raw!r}"))
            continue
        found.append((raw, Submission("", a, nb, path, origin)))
    ids = _distinct_ids({raw for raw, _ in found})
    by_key: dict[tuple[str, str], list[Submission]] = {}
    for raw, sub in found:
        sub.student = ids[raw]
        if sub.student != _student_id(raw):
            sub.notes.append(f"student id {raw!r} was made {sub.student!r}: another submitted name "
                             f"normalises to {_student_id(raw)!r} too")
        elif sub.student != raw:
            sub.notes.append(f"student id {raw!r} was normalised to {sub.student!r}")
        by_key.setdefault((sub.student, sub.notebook), []).append(sub)
    subs = []
    for key in sorted(by_key):
        copies = sorted(by_key[key], key=lambda s: (s.path.stat().st_mtime, s.origin))
        chosen = copies[-1]
        if len(copies) > 1:
            chosen.notes.append(f"{len(copies)} files for this notebook; graded the newest ({chosen.origin}), "
                                f"ignored {', '.join(s.origin for s in copies[:-1])}")
        subs.append(chosen)
    return subs, skipped


# ---------------------------------------------------------------------------------------------
# Preparing one submitted notebook
# ---------------------------------------------------------------------------------------------


def prepare_submission(path: Path, release) -> tuple[object | None, str | None, list[str], list[str]]:
    """Read a submitted notebook and make it safe to hand to nbgrader.

    Returns (notebook or None, why it is unreadable or None, restored grade ids, notes).
    Outputs are cleared, cell ids made valid and unique, every grade id left on one cell
    (:func:`_strip_stray_grade_ids`; the notes say which cells lost theirs), and graded test
    cells the student deleted are put back (from the student version) right after the cell that
    preceded them there."""
    nbformat = nbformat_module()
    try:
        if path.stat().st_size > _MAX_NOTEBOOK_BYTES:
            return None, f"the file is larger than {_MAX_NOTEBOOK_BYTES // 2**20} MiB", [], []
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
        if not text.strip():
            return None, "the file is empty", [], []
        raw = json.loads(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("cells", raw.get("worksheets")), list):
            return None, "the file is JSON but not a Jupyter notebook (no list of cells)", [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nbformat warns about (and fixes) duplicate cell ids etc.
            nb = nbformat.reads(text, as_version=4)
    except UnicodeDecodeError:
        return None, "the file is not text (not UTF-8), so not a notebook", [], []
    except json.JSONDecodeError as exc:
        return None, f"the file is not valid JSON, so not a notebook ({exc})", [], []
    except Exception as exc:  # nbformat errors of every kind
        return None, f"the file cannot be read as a notebook ({type(exc).__name__}: {shorten(exc, 160)})", [], []
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
            return None, f"the notebook does not follow the notebook format ({shorten(exc, 160)})", [], []
    notes = _strip_stray_grade_ids(nb, release)
    restored = _restore_tests(nb, release)
    return nb, None, restored, notes


def _role(cell) -> tuple:
    m = nbgrader_metadata(cell)
    return cell.get("cell_type"), bool(m.get("grade")), bool(m.get("solution"))


def _likeness(cell, release_cell) -> tuple[bool, bool, bool]:
    """How well a submitted copy of a grade id matches the release's cell (compared as a tuple)."""
    return (cell.get("cell_type") == release_cell.get("cell_type"), _role(cell) == _role(release_cell),
            cell.get("source") == release_cell.get("source"))


def _strip_stray_grade_ids(nb, release) -> list[str]:
    """Leave each of the release's grade ids on one cell; returns what was done, as notes.

    nbgrader fails on the whole notebook (``KeyError: 'grade_id'``) when a grade id appears
    twice (a backup copy of a solution cell, the setup cell pasted again, a markdown cell that
    shares a code cell's id) or one the notebook does not have (a test cell pasted from another
    notebook).  Of several copies the one kept is, like nbgrader's own ``DeduplicateIds``, the
    last whose cell type and role (test / solution) match the release's, preferring a copy
    with the release's source; the others lose their nbgrader metadata and run as the plain
    cells they are.  Cells with nbgrader metadata but an unknown (or no) grade id lose it too."""
    expected = {gid: cell for cell in release.cells if (gid := grade_id_of(cell))}
    copies: dict[str, list[int]] = {}
    strays: dict[int, str] = {}
    for i, cell in enumerate(nb.cells):
        if "nbgrader" not in cell.get("metadata", {}):
            continue
        gid = grade_id_of(cell)
        if isinstance(gid, str) and gid in expected:
            copies.setdefault(gid, []).append(i)
        elif gid or any(nbgrader_metadata(cell).get(k) for k in ("grade", "solution", "locked", "task")):
            strays[i] = f"grade id {gid!r} is not one of this notebook's" if gid else "nbgrader metadata without a grade id"
        else:
            del cell.metadata["nbgrader"]  # empty nbgrader metadata: nothing to say
    for gid, found in copies.items():
        if len(found) == 1:
            continue
        keep = max(found, key=lambda i: _likeness(nb.cells[i], expected[gid]) + (i,))
        for i in found:
            if i != keep:
                strays[i] = f"another copy of {gid!r}, which cell {keep + 1} keeps"
    for i in strays:
        del nb.cells[i].metadata["nbgrader"]
    if not strays:
        return []
    listed = "; ".join(f"cell {i + 1} ({why})" for i, why in sorted(strays.items()))
    return [f"grading ignored the nbgrader metadata of {listed}: they ran as plain cells"]


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
