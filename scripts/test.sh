#!/usr/bin/env bash
# Set up .venv (with test extras) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
