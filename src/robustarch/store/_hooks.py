"""Pause points for crash tests: a test sets ``ROBUSTARCH_TEST_PAUSE`` to make a process stop at a named
point so it can be killed there (``kill -9``), e.g. between writing a chunk's rows and committing them.

``ROBUSTARCH_TEST_PAUSE="mid-commit@3"`` pauses the 3rd time this process reaches ``mid-commit``; the
process first creates the file named by ``ROBUSTARCH_TEST_PAUSE_FILE`` (so the test knows it is there),
then sleeps. Unset (the normal case), a pause point costs one dict lookup.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

_hits: Counter[str] = Counter()


def pause_point(name: str) -> None:
    spec = os.environ.get("ROBUSTARCH_TEST_PAUSE")
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] != int(nth or 1):
        return
    marker = os.environ.get("ROBUSTARCH_TEST_PAUSE_FILE")
    if marker:
        Path(marker).write_text(f"{name}@{_hits[name]} pid={os.getpid()}\n")
    time.sleep(float(os.environ.get("ROBUSTARCH_TEST_PAUSE_SECONDS", "3600")))
