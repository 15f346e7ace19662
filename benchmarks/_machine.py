"""What the benchmark scripts say about the machine they ran on, and where ``../shared`` is."""

from __future__ import annotations

import os
import platform
from pathlib import Path

SHARED = Path(os.environ.get("ROBUSTARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
