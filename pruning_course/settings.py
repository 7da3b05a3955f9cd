"""The one place where the package reads environment variables.

``PRUNING_COURSE_QUICK=1``   quick mode: tiny model, little data (CI, grading tests).
``PRUNING_COURSE_CACHE``     where converted models live (default ``~/.cache/pruning_course``).
``PRUNING_COURSE_DEVICE``    device for calibration and evaluation (default: ``cpu``).
``PRUNING_COURSE_CELL_TIMEOUT`` seconds a notebook cell may run under nbgrader (read by
                             ``autograder/nbgrader_config.py``; `grade --timeout` sets it).
``TORCHINDUCTOR_CACHE_DIR``  torch's compile cache; the command line moves it from the temp dir
                             into :func:`cache_dir` unless it is set.
"""

from __future__ import annotations

import os
from pathlib import Path


def quick_mode() -> bool:
    """True when the course runs in quick mode (tiny model, little data)."""
    return os.environ.get("PRUNING_COURSE_QUICK", "").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    """Directory for converted models and other derived artefacts."""
    root = os.environ.get("PRUNING_COURSE_CACHE") or Path.home() / ".cache" / "pruning_course"
    return Path(root).expanduser()


def default_device() -> str:
    """Device that calibration and evaluation run on unless told otherwise."""
    return os.environ.get("PRUNING_COURSE_DEVICE", "cpu")


def keep_torch_cache_out_of_tmp() -> None:
    """Point torch's compile cache into :func:`cache_dir` unless the user chose a place.

    torch creates ``$TMPDIR/torchinductor_$USER`` as soon as a model is built (its dynamo import
    makes the folder), so without this every run of the command line leaves it in the temp dir.
    Call before torch builds anything."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torchinductor"))


def child_environment() -> dict[str, str]:
    """A copy of this process's environment, for the processes the grader starts (its nbgrader
    workers and their kernels), which then set their own variables on top."""
    return dict(os.environ)

