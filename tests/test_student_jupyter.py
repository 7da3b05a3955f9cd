"""Students' JupyterLab (scripts/lab.sh puts jupyter/student first on JUPYTER_CONFIG_PATH) loads
nbgrader's validate extension and none of the instructor's: no Create Assignment toolbar, no
Formgrader, no assignment or course list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")
pytest.importorskip("jupyterlab_server")

ROOT = Path(__file__).resolve().parent.parent
STUDENT_CONFIG = ROOT / "jupyter" / "student"

PROBE = r"""
import json
from jupyter_server.serverapp import ServerApp
from jupyterlab_server.config import get_static_page_config
app = ServerApp()
app.load_config_file()
server = {k: v for k, v in app.jpserver_extensions.items() if k.startswith("nbgrader")}
disabled = sorted(k for k, v in (get_static_page_config(level="all").get("disabledExtensions") or {}).items() if v)
print(json.dumps({"server": server, "disabled": disabled}))
"""


def resolved_config(config_path: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_CONFIG_PATH"}
    if config_path:
        env["JUPYTER_CONFIG_PATH"] = config_path
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_student_config_keeps_only_the_validate_extension():
    config = resolved_config(str(STUDENT_CONFIG))
    assert config["server"] == {"nbgrader.server_extensions.formgrader": False,
                                "nbgrader.server_extensions.assignment_list": False,
                                "nbgrader.server_extensions.course_list": False,
                                "nbgrader.server_extensions.validate_assignment": True}
    instructor_plugins = {"@jupyter/nbgrader:create-assignment", "@jupyter/nbgrader:formgrader",
                          "@jupyter/nbgrader:assignment-list", "@jupyter/nbgrader:course-list", "@jupyter/nbgrader:menu"}
    assert instructor_plugins <= set(config["disabled"])
    assert "@jupyter/nbgrader:validate-assignment" not in config["disabled"]


def test_the_launcher_uses_the_student_config():
    script = (ROOT / "scripts" / "lab.sh").read_text()
    assert 'JUPYTER_CONFIG_PATH="$(pwd)/jupyter/student' in script and "jupyter lab notebooks/" in script
