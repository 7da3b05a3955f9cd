#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install the course into it.
# torch is installed first at an exact version: on the course machines `torch==2.13.0` is a CPU
# build found on local disk, while a looser requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
echo "environment ready: $(pwd)/.venv ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
