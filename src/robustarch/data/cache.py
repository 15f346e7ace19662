"""The preprocessed-tensor cache: decode once, then every model and attack of a study reads uint8 tensors.

One folder per key under the cache directory (``$ROBUSTARCH_CACHE``, else ``$XDG_CACHE_HOME/robustarch/data``,
else ``~/.cache/robustarch/data``). The key hashes the dataset id, split, a fingerprint of the files read
(path, sizes, mtimes), the preprocessing id (with the Pillow version) and the subset. A folder holds
``images.u8`` (raw N x C x H x W uint8, memory-mapped on read), ``labels.npy``, ``ids.npy`` and
``manifest.json`` (key fields, shapes, sizes and sha256 of each file).

Crash safety: a cache is built in ``<key>.tmp-<pid>-<random>``; every file is fsynced, the manifest is written
last, and the folder is renamed into place atomically, so ``<key>`` is either complete or absent. A folder
that fails the checks (no or unreadable manifest, other key, wrong sizes, wrong sha256, labels/ids differing
from the current index of the files) is logged, removed and rebuilt; leftover temporary folders of a killed
build are removed. An exclusive lock (``fcntl.flock``) on ``<key>.lock`` lets parallel workers build a
key once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustarch.data._dataset import ImageDataset
from robustarch.data.errors import CacheError
from robustarch.filelock import file_lock

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
_verified: set[tuple[str, int, int]] = set()  # (images path, size, mtime) whose sha256 this process checked


def default_cache_dir() -> Path:
    if os.environ.get("ROBUSTARCH_CACHE"):
        return Path(os.environ["ROBUSTARCH_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "robustarch" / "data"


def cache_key(fields: dict[str, Any]) -> str:
    canon = json.dumps({"format": FORMAT, **fields}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:24]


def _sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _problem(folder: Path, key: str, ds: ImageDataset, verify: bool) -> str | None:
    """Why ``folder`` is not a usable cache for ``ds`` (None if it is)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest (the build did not finish)"
    except (OSError, ValueError) as err:
        return f"unreadable manifest ({err})"
    if manifest.get("format") != FORMAT or manifest.get("key") != key:
        return "manifest of another key or format"
    if manifest.get("n") != len(ds) or tuple(manifest.get("image_size", ())) != ds.image_size:
        return "shape differs from the dataset"
    for name, want in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != want["size"]:
            return f"{name} is missing or has the wrong size (truncated?)"
        if name != "images.u8" and _sha256_file(path) != want["sha256"]:
            return f"{name} fails its sha256"
    if set(manifest.get("files", {})) != {"images.u8", "labels.npy", "ids.npy"}:
        return "manifest lists the wrong files"
    if not np.array_equal(np.load(folder / "labels.npy"), ds.labels.numpy()) or not np.array_equal(
        np.load(folder / "ids.npy"), ds.example_ids.numpy()
    ):
        return "labels or example ids differ from the files on disk"
    images = folder / "images.u8"
    st = images.stat()
    stamp = (str(images.resolve()), st.st_size, st.st_mtime_ns)
    if verify and stamp not in _verified:
        if _sha256_file(images) != manifest["files"]["images.u8"]["sha256"]:
            return "images.u8 fails its sha256 (corrupt)"
        _verified.add(stamp)
    return None


def _open(folder: Path, ds: ImageDataset) -> ImageDataset:
    # mode "c" (copy-on-write): pages load lazily from the file, writes would stay private to the process
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="c", shape=(len(ds), *ds.image_size))
    return ImageDataset(ds.labels, ds.example_ids, ds.image_size, images=torch.from_numpy(images))


def _build(
    folder: Path, key: str, fields: dict[str, Any], ds: ImageDataset, threads: int | None, progress: bool
) -> None:
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir(parents=True)
    try:
        shape = (len(ds), *ds.image_size)
        images = np.memmap(tmp / "images.u8", dtype=np.uint8, mode="w+", shape=shape)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(ds), desc=f"caching {fields.get('dataset')}", unit="img")
        t0 = time.perf_counter()
        ds.decode_into(images, threads=threads, progress=bar.update if bar else None)
        if bar:
            bar.close()
        images.flush()
        del images
        np.save(tmp / "labels.npy", ds.labels.numpy())
        np.save(tmp / "ids.npy", ds.example_ids.numpy())
        files = {}
        for name in ("images.u8", "labels.npy", "ids.npy"):
            _fsync_path(tmp / name)
            files[name] = {"size": (tmp / name).stat().st_size, "sha256": _sha256_file(tmp / name)}
        manifest = {
            "format": FORMAT,
            "key": key,
            "fields": fields,
            "n": len(ds),
            "image_size": list(ds.image_size),
            "files": files,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.perf_counter() - t0, 3),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _fsync_path(tmp / MANIFEST)
        _fsync_path(tmp)
        os.rename(tmp, folder)  # atomic: the key folder appears complete or not at all
        _fsync_path(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cached(
    ds: ImageDataset,
    fields: dict[str, Any],
    cache_dir: Path | str | None = None,
    *,
    threads: int | None = None,
    verify: bool = True,
    progress: bool = False,
) -> ImageDataset:
    """``ds`` backed by the cache entry of ``fields``, decoding and writing it first if absent or invalid."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(fields)
    folder = root / key
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CacheError(f"cannot create the cache folder {root}: {err} (set ROBUSTARCH_CACHE)") from err
    if folder.is_dir() and _problem(folder, key, ds, verify) is None:
        log.debug("cache hit %s", folder)
        return _open(folder, ds)
    with file_lock(root / f"{key}.lock"):
        problem = _problem(folder, key, ds, verify) if folder.exists() else None
        if folder.exists() and problem is None:
            return _open(folder, ds)  # another worker built it while this one waited for the lock
        if folder.exists():
            log.warning("cache %s is unusable: %s; rebuilding", folder, problem)
            shutil.rmtree(folder)
        for stale in root.glob(f"{key}.tmp-*"):
            log.warning("removing %s, left by an interrupted cache build", stale)
            shutil.rmtree(stale, ignore_errors=True)
        log.info("building cache %s (%d images of %s)", folder, len(ds), fields.get("dataset"))
        _build(folder, key, fields, ds, threads, progress)
    return _open(folder, ds)


def list_entries(cache_dir: Path | str | None = None) -> list[dict[str, Any]]:
    """Manifests of the complete cache entries (plus their folder and size on disk)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = [
        {"folder": str(d), "problem": "incomplete (no manifest): an interrupted build", "bytes": 0}
        for d in sorted(root.glob("*"))
        if d.is_dir() and not (d / MANIFEST).is_file()
    ]
    for manifest in sorted(root.glob(f"*/{MANIFEST}")):
        try:
            entry = json.loads(manifest.read_text())
        except (OSError, ValueError) as err:
            entry = {"problem": f"unreadable manifest: {err}", "files": {}}
        entry["folder"] = str(manifest.parent)
        entry["bytes"] = sum(f["size"] for f in entry.get("files", {}).values())
        out.append(entry)
    return out


def clear(cache_dir: Path | str | None = None) -> int:
    """Remove every entry, temporary folder and lock file; returns how many entries were removed."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not root.is_dir():
        return 0
    n = 0
    for child in root.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
            n += ".tmp-" not in child.name
        elif child.suffix == ".lock":
            child.unlink()
    return n
