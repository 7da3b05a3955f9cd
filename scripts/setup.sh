#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install the course into it,
# at the exact versions in constraints.txt (the ones the course's recorded numbers were made with),
# so that every machine of a class gets the same numbers.
#
#   bash scripts/setup.sh                              # pinned (what CI and the README use)
#   PRUNING_COURSE_UNPINNED=1 bash scripts/setup.sh    # the newest versions pyproject.toml allows
#   PRUNING_COURSE_UNPINNED=1 TORCH_SPEC='torch==2.9.1' bash scripts/setup.sh   # another torch
#
# torch is installed first at an exact version: on the course machines `torch==2.13.0` is a CPU
# build found on local disk, while a looser requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PINS=(-c constraints.txt)
if [ "${PRUNING_COURSE_UNPINNED:-0}" = 1 ]; then
  PINS=()
fi
# `pruning-course grade` runs every student's kernel in a bubblewrap sandbox (grading/sandbox.py)
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -qq bubblewrap >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq bubblewrap >/dev/null; }
  else
    echo "note: grading needs bubblewrap: sudo apt-get install bubblewrap (or your distribution's package)" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC" "${PINS[@]}"
.venv/bin/python -m pip install -q -e ".[test]" "${PINS[@]}"
# ipykernel's install leaves an empty tmpXXXX_kernels folder in the temp dir: give it one of its own
kernel_tmp=$(mktemp -d)
TMPDIR="$kernel_tmp" .venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
rm -rf "$kernel_tmp"
echo "environment ready: $(pwd)/.venv ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'); ${PINS[*]:-unpinned})"
