#!/usr/bin/env bash
# Create .venv and install robustarch into it. Usage: scripts/setup.sh [--test]
#   --test  also install the test tools and the test-only attack oracles: torchattacks 3.5.1, AutoAttack's
#           own code (pyautoattack 0.2.0: imports only torch and numpy, declares no dependencies; its
#           42 MB wheel carries an example checkpoint the tests do not use), and torchattacks 1.3, the
#           version the study ran (its wheel downloaded into .oracles/, imported from there by
#           tests/test_attacks_oracle13.py in a subprocess: both cannot be installed side by side).
# Why torch 2.13.0: a CPU wheel of it ships on our development/CI machines (pip's find-links picks it up
# without a download), and the conformance fixtures were computed with it. On a machine without that wheel
# pip takes torch from the registry (the CUDA build; it also runs on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
# pip's exit status is kept; only the noise about this machine's empty local indexes is filtered out.
pip_install() {
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip_install "torch==2.13.0"
if [ "${1:-}" = "--test" ]; then
  bash scripts/system-deps.sh dataset-fashion-mnist chromium
  pip_install -e ".[test]"
  pip_install --no-deps "torchattacks==3.5.1"
  pip_install --no-deps "pyautoattack==0.2.0"  # AutoAttack's own code: the FAB and cascade oracle
  if [ ! -f .oracles/torchattacks-1.3-py3-none-any.whl ]; then
    .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps "torchattacks==1.3" -d .oracles \
      2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) || echo "setup: could not download torchattacks 1.3; tests/test_attacks_oracle13.py will skip" >&2
  fi
else
  bash scripts/system-deps.sh dataset-fashion-mnist
  pip_install -e .
fi
.venv/bin/python -c "import robustarch, torch; print('robustarch ready, torch', torch.__version__)"
