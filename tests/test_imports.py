"""Every module of the package imports on its own, first: no import cycle hides behind the order in
which the tests happen to import things (``import pruning_course.methods`` first once failed while
every test passed). One fresh interpreter; before each module, every ``pruning_course`` module is
forgotten, so each one is imported as if it came first."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import importlib, pkgutil, sys, traceback
from pathlib import Path
import torch, transformers  # the heavy imports, once
import pruning_course
names = sorted(m.name for m in pkgutil.walk_packages([str(Path(pruning_course.__file__).parent)], prefix="pruning_course."))
failures = 0
for name in names:
    for loaded in [m for m in sys.modules if m == "pruning_course" or m.startswith("pruning_course.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as error:
        failures += 1
        print(f"{name}: {type(error).__name__}: {error}")
print(f"{len(names)} modules, {failures} failed")
"""


def test_every_module_imports_first():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    count, failed = int(last.split()[0]), int(last.split(", ")[1].split()[0])
    assert count > 40 and failed == 0, result.stdout
