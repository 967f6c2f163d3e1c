#!/usr/bin/env bash
# Create .venv and install compinterp with its test tools and the HuggingFace extra (transformers).
# Torch is installed first, pinned to a CPU build that pip finds on this machine's disk;
# set TORCH_SPEC (e.g. TORCH_SPEC="torch" for the newest, or a CUDA build) to choose another.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[dev,hf]"
