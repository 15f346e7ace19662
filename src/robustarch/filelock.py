"""An exclusive advisory file lock, shared by the caches (downloaded weights, decoded datasets), so that
torchrun ranks or parallel jobs build one entry once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created with its folder). A no-op where ``fcntl`` does not
    exist (Windows): parallel builds of one entry may then repeat, never corrupt (both write atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
