"""What a fresh install is made of: the pinned versions agree with pyproject.toml, the README's
commands are the ones CI runs, and the licenses are where they are said to be."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"constraints.txt must pin exact versions: {line!r}"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{requirement.name} is pinned twice in constraints.txt"
        pins[name] = specs[0].version
    return pins


def _requirements() -> list[Requirement]:
    """Every requirement pyproject.toml declares, the optional extras included (not the course itself)."""
    lines = list(PROJECT["dependencies"])
    for extra in PROJECT.get("optional-dependencies", {}).values():
        lines += extra
    return [r for r in map(Requirement, lines) if canonicalize_name(r.name) != canonicalize_name(PROJECT["name"])]


@pytest.mark.parametrize("requirement", _requirements(), ids=str)
def test_every_requirement_is_pinned_to_a_version_it_allows(requirement):
    pins = _pins()
    name = canonicalize_name(requirement.name)
    assert name in pins, f"{requirement.name} is in pyproject.toml but not pinned in constraints.txt"
    assert requirement.specifier.contains(pins[name], prereleases=True), (
        f"pyproject.toml asks for {requirement}, but constraints.txt pins {requirement.name}=={pins[name]}")


def test_setup_installs_with_the_constraints_and_the_torch_it_pins():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-c constraints.txt" in setup and "PRUNING_COURSE_UNPINNED" in setup
    torch_default = re.search(r"TORCH_SPEC:-torch==([\w.]+)", setup).group(1)
    assert _pins()["torch"] == torch_default, "setup.sh's torch and constraints.txt's torch differ"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/jupyter lab" in readme and "PRUNING_COURSE_UNPINNED=1" in readme


def test_the_declared_licenses_are_there():
    assert PROJECT["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    readme = (ROOT / "README.md").read_text()
    assert "Apache-2.0" in readme and "CC BY-SA" in readme
