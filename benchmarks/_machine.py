"""What the benchmark scripts say about the machine they ran on, and where ``../shared`` is."""

from __future__ import annotations

import compileall
import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROBUSTARCH_SHARED", REPO.parent / "shared"))


def compile_sources() -> None:
    """Write the bytecode of ``src/`` as installing the package does (pip compiles on install; a first run
    caches it). A process that finds none compiles every robustarch module it imports (~0.2 s for an
    evaluation), and under ``PYTHONDONTWRITEBYTECODE=1`` it does so on every run: a whole-process timing
    would then measure the compiler, which users do not run."""
    compileall.compile_dir(REPO / "src", quiet=1)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
