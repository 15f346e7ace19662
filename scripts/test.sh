#!/usr/bin/env bash
# Set up .venv (with test extras) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
# Subprocesses started by tests (torchrun ranks, demo workers) inherit one thread each (see tests/conftest.py).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Two pytest workers (pytest-xdist), one test file per worker at a time so that a file's module-scoped
# fixtures (trained models, built reports) are computed once: ~14 min -> 6.5-9.2 min on 2 cores.
# ROBUSTARCH_TEST_WORKERS=0 runs in this process.
exec .venv/bin/python -m pytest -q -n "${ROBUSTARCH_TEST_WORKERS:-2}" --dist loadfile "$@"
