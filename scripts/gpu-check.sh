#!/usr/bin/env bash
# The GPU check (issue 14): on a machine with one CUDA GPU, from a clone of the repository, in at most about
# 8 minutes. Runs the device-parametrized tests on CUDA (tests/test_devices.py, plus the preparation tests),
# then benchmarks/gpu.py (PGD-10 and the ImageNet ResNet-50 against torchattacks, APGD-CE against
# AutoAttack's own code, float32 against bf16 end to end), and writes a markdown block for
# docs/benchmarks.md to $OUT/gpu-check.md (default: gpu-check-out/).
#
#   bash scripts/gpu-check.sh                 # python3 with a CUDA torch; pytest, tqdm, matplotlib, pillow
# It needs no network: it uses the python3 it finds (or $PYTHON) and the source tree (PYTHONPATH=src), and
# installs the test-only oracles (torchattacks 3.5.1, pyautoattack 0.2.0; both pure Python) from .whl/ where
# they are missing (on a machine with a registry: pip download --no-deps -d .whl torchattacks==3.5.1
# pyautoattack==0.2.0).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "gpu-check: $PY has no torch; set PYTHON to the python that holds a CUDA build of torch" >&2
  exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-check: $PY's torch sees no CUDA device; run this on a machine with a GPU" >&2
  exit 2
fi
missing=$("$PY" - <<'PYEOF'
import importlib.util
print(" ".join(m for m in ("torchattacks", "pyautoattack", "tqdm", "scipy") if importlib.util.find_spec(m) is None))
PYEOF
)
if [ -n "$missing" ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu-check: installing $missing from .whl/"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-check-site .whl/*.whl || exit 2
    export PYTHONPATH="/tmp/gpu-check-site:$PYTHONPATH"
  else
    echo "gpu-check: missing $missing and no .whl/ folder to install them from" >&2
  fi
fi
{
  echo "## GPU check, $(date -u +%Y-%m-%d)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
  echo '```'
  echo
} > "$OUT/gpu-check.md"
status=0
echo "gpu-check: tests on CUDA"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_devices.py tests/test_prepare.py -rs \
  2>&1 | tee "$OUT/tests.log" | tail -5 || status=1
{
  echo "Tests on CUDA (tests/test_devices.py, tests/test_prepare.py): \`$(tail -1 "$OUT/tests.log")\`"
  echo
} >> "$OUT/gpu-check.md"
echo "gpu-check: benchmarks"
timeout 300 "$PY" benchmarks/gpu.py --device cuda 2>"$OUT/benchmarks.err" | tee -a "$OUT/gpu-check.md" || status=1
echo
echo "gpu-check: wrote $OUT/gpu-check.md"
exit $status
