"""Wrong answers taken from the per-check test modules (tests/test_checks_*.py).

Those tests already hold many classic mistakes, each as ``fails_with(check, wrong, *fragments)`` or
``fails_matching(check, wrong, pattern)``. :func:`harvest` runs every test function of a module
(each parametrization too) with those two helpers replaced by a recorder, so each call becomes a
:class:`Wrong` whose hint requires every fragment; the wrong answers then run once more here, with
the whole suite's criteria (rejected, named, not misleading, a short first line).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import itertools
import re

from . import Wrong


def _hint(fragments, pattern=None) -> str:
    if pattern is not None:
        return pattern
    return "(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments)


def harvest(module_name: str, skip: tuple[str, ...] = ()) -> list[Wrong]:
    module = importlib.import_module(module_name)
    found: list[Wrong] = []
    current = {"label": ""}

    def record_with(check, fn, *fragments):
        found.append(Wrong(check, current["label"], fn, _hint(fragments)))
        return " ".join(fragments)

    def record_matching(check, fn, pattern):
        found.append(Wrong(check, current["label"], fn, _hint((), pattern)))
        return pattern

    saved = {name: module.__dict__.get(name) for name in ("fails_with", "fails_matching")}
    for name in saved:
        if saved[name] is not None:
            module.__dict__[name] = record_matching if saved[name].__name__ == "fails_matching" else record_with
    try:
        for name, test in inspect.getmembers(module, inspect.isfunction):
            if not name.startswith("test_") or "pass" in name or "not_implemented" in name or name in skip:
                continue
            marks = [m for m in getattr(test, "pytestmark", []) if m.name == "parametrize"]
            if any(p not in {a for m in marks for a in _names(m)} for p in inspect.signature(test).parameters):
                continue  # a fixture (capsys, tmp_path): not a plain wrong-answer test
            grids = [[dict(zip(_names(m), v if len(_names(m)) > 1 else (v,))) for v in m.args[1]] for m in marks]
            for index, combo in enumerate(itertools.product(*grids) if grids else [()]):
                kwargs = {k: v for part in combo for k, v in part.items()}
                current["label"] = f"{name[5:]}" + (f"[{index}]" if grids else "")
                before = len(found)
                try:
                    with contextlib.redirect_stdout(io.StringIO()):
                        test(**kwargs)
                except Exception:  # noqa: BLE001 - an assertion on the recorder's dummy message
                    pass
                for k in range(before + 1, len(found)):  # several calls in one test: number them
                    found[k] = Wrong(found[k].check, f"{found[k].label}#{k - before}", found[k].fn, found[k].hint)
    finally:
        for name, value in saved.items():
            if value is not None:
                module.__dict__[name] = value
    return found


def _names(mark) -> list[str]:
    names = mark.args[0]
    return [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
