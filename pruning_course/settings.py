"""The one place where the package reads environment variables.

``PRUNING_COURSE_QUICK=1``   quick mode: tiny model, little data (CI, grading tests).
``PRUNING_COURSE_CACHE``     where converted models live (default ``~/.cache/pruning_course``).
``PRUNING_COURSE_DEVICE``    device for calibration and evaluation (default: ``cpu``).
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
