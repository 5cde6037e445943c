#!/usr/bin/env bash
# Install the project into ./.venv. The CPU build of torch goes in first so that pip never
# pulls the multi-GB CUDA wheels on a CPU machine; set TORCH_SPEC to choose another build
# (a GPU user: TORCH_SPEC="torch==2.13.0" with their CUDA index, or an already-installed torch).
# EXTRAS picks the optional groups (default test; EXTRAS= for the core only).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS-test}  # optional dependency groups of pyproject.toml
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
echo "installed into $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
