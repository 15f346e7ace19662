#!/usr/bin/env bash
# Create .venv and install robustarch into it. Usage: scripts/setup.sh [--test]
#   --test  also install the test tools and the test-only attack oracle (torchattacks 3.5.1).
# Why torch 2.13.0: a CPU wheel of it ships on our development/CI machines (pip's find-links picks it up
# without a download), and the conformance fixtures were computed with it. On a machine without that wheel
# pip takes torch from the registry (the CUDA build; it also runs on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import torch" 
if [ "${1:-}" = "--test" ]; then
  bash scripts/system-deps.sh dataset-fashion-mnist chromium
  "${PIP[@]}" -e ".[test]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  "${PIP[@]}" --no-deps "torchattacks==3.5.1" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
else
  bash scripts/system-deps.sh dataset-fashion-mnist
  "${PIP[@]}" -e . 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
fi
.venv/bin/python -c "import robustarch" 
