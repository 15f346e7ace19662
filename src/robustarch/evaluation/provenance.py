"""Provenance: what identifies the weights a run evaluated, and how the run was made (check 9 of
``../shared/docs/attacks.md``: profile, arguments, seed, dtype, device, weights hash, library versions, code
revision). Recorded in every run's ``meta`` by the engine (``docs/store.md``)."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn


def hash_state_dict(model: nn.Module) -> str:
    """sha256 over a state_dict's names, dtypes, shapes and bytes (first 16 hex): identifies weights that
    come from no file (a random initialisation, a model built in Python), so two different sets of weights
    are never one run."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def weights_file_hash(path: str | os.PathLike[str]) -> str:
    """sha256 of a weights file (first 16 hex), cached per (path, size, mtime) within a process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()[:16]
    return _FILE_HASHES[key]


@functools.cache
def code_revision() -> str:
    """The git revision of the robustarch source (``+dirty`` when changed), or ``unknown``; asked once per
    process."""
    src = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    import sqlite3

    import numpy

    import robustarch

    return {
        "robustarch": robustarch.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def run_provenance(device: torch.device, world_size: int) -> dict[str, Any]:
    """The machine-and-code part of a run's ``meta``."""
    return {
        "versions": library_versions(),
        "code_revision": code_revision(),
        "hostname": socket.gethostname(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_threads": torch.get_num_threads(),
        "argv": sys.argv,
        "device_name": device_name(device),
        "world_size": world_size,
    }
