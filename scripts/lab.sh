#!/usr/bin/env bash
# JupyterLab for students: the course's notebooks with nbgrader's "Validate" button only.
#
#   bash scripts/lab.sh                          # full mode (SmolLM2)
#   PRUNING_COURSE_QUICK=1 bash scripts/lab.sh   # quick mode (a tiny random model), as grading runs
#
# jupyter/student/ is put first on JUPYTER_CONFIG_PATH: its labconfig/page_config.json disables
# nbgrader's instructor plugins (Create Assignment, Formgrader, the assignment and course lists
# and the nbgrader menu) and its jupyter_server_config.json their server extensions, so the
# "No nbgrader_config.py" warnings of those extensions never show. The validate extension stays.
# Instructors start `.venv/bin/jupyter lab` directly and keep the whole nbgrader UI.
set -euo pipefail
cd "$(dirname "$0")/.."
export JUPYTER_CONFIG_PATH="$(pwd)/jupyter/student${JUPYTER_CONFIG_PATH:+:$JUPYTER_CONFIG_PATH}"
exec .venv/bin/jupyter lab notebooks/ "$@"
