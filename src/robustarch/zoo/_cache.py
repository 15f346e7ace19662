"""Where downloaded weights live, and the lock file that pins what was downloaded (trust on first use).

The cache is ``$ROBUSTARCH_HOME/weights`` (``ROBUSTARCH_HOME`` defaults to ``$XDG_CACHE_HOME/robustarch``,
else ``~/.cache/robustarch``). Its layout, ``<source>/<model>/<dataset>/<file>``, is also the layout of a
mirror folder (``ROBUSTARCH_WEIGHTS_MIRROR``): a copy of one machine's cache serves machines offline.

For files whose sha256 the registry does not pin, the first download records the hash in
``weights/lock.json`` and every later use is checked against it, like ``pip``'s and ``cargo``'s lock files:
a file that changes on the server or on disk afterwards is refused.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from robustarch.errors import RobustarchError
from robustarch.filelock import file_lock

log = logging.getLogger(__name__)

LOCK_FORMAT = "robustarch-weights-lock"
LOCK_VERSION = 1
_TRUE = {"1", "true", "yes", "on"}


def home() -> Path:
    """robustarch's cache root: ``$ROBUSTARCH_HOME``, else ``$XDG_CACHE_HOME/robustarch``, else
    ``~/.cache/robustarch``."""
    explicit = os.environ.get("ROBUSTARCH_HOME")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "robustarch"


def weights_dir() -> Path:
    return home() / "weights"


def offline() -> bool:
    """``ROBUSTARCH_OFFLINE=1``: never touch the network (a local mirror folder is not network)."""
    return os.environ.get("ROBUSTARCH_OFFLINE", "").strip().lower() in _TRUE


def mirror() -> str | None:
    """``ROBUSTARCH_WEIGHTS_MIRROR``: a URL (``http(s)://``) or a local folder searched before the origin."""
    value = os.environ.get("ROBUSTARCH_WEIGHTS_MIRROR", "").strip()
    return value or None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest(path: Path) -> dict[str, str]:
    """sha256 of a file (key ``""``) or of every file of a folder (keys = relative paths): the identity the
    lock file records. Folders are the authors' model folders (DenseNAS: net_config + weights.pt)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {p.relative_to(path).as_posix(): file_sha256(p) for p in files}
    return {"": file_sha256(path)}


def lock_path() -> Path:
    return weights_dir() / "lock.json"


def read_lock() -> dict[str, dict[str, Any]]:
    """The recorded hashes, ``{key: {"sha256": {...}, "origin": ..., "recorded": ...}}``."""
    path = lock_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RobustarchError(
            f"the weights lock file {path} is unreadable ({err}); it records the hashes of files downloaded "
            "without a published hash. Repair or delete it (deleting it trusts the cached files anew)."
        ) from err
    if data.get("format") != LOCK_FORMAT:
        raise RobustarchError(f"{path} is not a robustarch weights lock file")
    return dict(data.get("files", {}))


def record(key: str, sha256: dict[str, str], origin: str) -> None:
    """Record ``sha256`` for ``key`` (first use); written atomically under a lock."""
    path = lock_path()
    with file_lock(path.with_name(path.name + ".lock")):
        files = read_lock()
        files[key] = {
            "sha256": sha256,
            "origin": origin,
            "recorded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        payload = {"format": LOCK_FORMAT, "version": LOCK_VERSION, "files": files}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
