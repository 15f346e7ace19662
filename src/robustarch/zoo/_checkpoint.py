"""Reading and writing checkpoints: the one place where a weight file becomes a bare network's state_dict.

Accepted files (all loaded with ``torch.load(weights_only=True)``, which cannot execute code, unless the
caller passes ``allow_pickle=True``):

* a raw ``state_dict`` (huyvnphan, torchvision, DARTS, ... release files);
* a dict holding one under a usual key (``state_dict``, ``model_state_dict``, ``model``, ``net``, ...), such
  as a training checkpoint with optimizer state, or the files :func:`save_checkpoint` writes;
* keys carrying a wrapper prefix: ``module.`` (``nn.DataParallel``, as in the study's P-DARTS / PC-DARTS /
  DenseNAS ImageNet files), ``_orig_mod.`` (``torch.compile``), ``net.`` (robustarch's normalizing wrapper),
  or the spec's ``checkpoint_prefix``;
* keys in an older layout that the spec's ``key_rewrites`` map to the current one (torchvision DenseNet).

``.safetensors`` files (Hugging Face's format: a JSON header and raw tensor bytes) load with no pickle at all.

Before anything is unpickled, :func:`check_weight_file` looks at the file's bytes: an empty file, an HTML or
text page (what Google Drive and many servers send instead of the file), a truncated archive or a zip that
is not a torch checkpoint each get an error that says what was received, never the ``allow_pickle`` advice.

The resulting dict is checked against the network before loading; any missing, unexpected or mis-shaped key
raises :class:`RobustarchError` with the full report, then it is loaded strictly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustarch.errors import RobustarchError

log = logging.getLogger(__name__)

FORMAT = "robustarch-checkpoint"
FORMAT_VERSION = 1
# where training scripts usually put the network's weights inside a larger checkpoint dict, in lookup order
STATE_DICT_KEYS = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "net",
    "network",
    "weights",
    "params",
)
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "net.")
_REPORT_LIMIT = 20  # keys listed per category in an error message
WEIGHT_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt", ".bin", ".safetensors")
_SNIFF_BYTES = 4096
# safetensors metadata key under which save_safetensors stores robustarch's JSON metadata
SAFETENSORS_METADATA_KEY = "robustarch"
GOOGLE_DRIVE_PAGE_HELP = (
    "Google Drive sends such a page instead of the file when it cannot scan a large file for viruses "
    "('Virus scan warning'), when the file was downloaded too often in 24 hours ('Quota exceeded': try again "
    "later, or copy the file into your own Drive and download the copy), or when the file is not shared "
    "publicly (a sign-in page). Install gdown (pip install gdown) so robustarch can follow the confirmation "
    "step, or download the file in a browser and pass its path (or put it in $ROBUSTARCH_WEIGHTS_MIRROR)."
)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (weight files are up to ~0.5 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_checkpoint(
    path: str | os.PathLike[str], *, allow_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``path`` and return ``(state_dict, metadata)``; ``metadata`` is ``{}`` for files not written by
    :func:`save_checkpoint`. Never executes pickled code unless ``allow_pickle=True``."""
    path = weight_file_in(Path(path))
    kind = check_weight_file(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        # torch's weights_only unpickler names its refusals; anything else is a damaged file
        if allow_pickle or "Weights only load failed" not in str(err):
            raise RobustarchError(f"cannot read checkpoint {path}, it is corrupt: {err}") from err
        raise RobustarchError(
            f"refusing to load {path}: it contains pickled Python objects beyond tensors and plain "
            "containers, and unpickling them could execute arbitrary code. If you trust the file's "
            "origin, pass allow_pickle=True. Details: " + str(err).splitlines()[0]
        ) from err
    except (RuntimeError, EOFError, OSError, IndexError, ValueError) as err:
        raise RobustarchError(
            f"cannot read checkpoint {path} ({path.stat().st_size} bytes): it looks truncated or corrupt "
            f"({type(err).__name__}: {str(err).splitlines()[0]}). Delete it and download it again."
        ) from err
    return extract_state_dict(obj, source=str(path))


def weight_file_in(path: Path) -> Path:
    """``path`` itself, or the one weight file inside a model folder as the authors distribute them
    (DenseNAS: ``net_config`` + ``weights.pt``)."""
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "none"
            raise RobustarchError(
                f"{path} is a folder; expected exactly one weight file in it, found {found}"
            )
        path = candidates[0]
    if not path.is_file():
        raise RobustarchError(f"checkpoint file not found: {path}")
    return path


def _html_title(text: str) -> str:
    match = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    return " ".join(match.group(1).split())[:120] if match else ""


def _describe_text(path: Path, head: bytes, size: int) -> str:
    text = head.decode("utf-8", errors="replace")
    lowered = text.lstrip("\ufeff \t\r\n").lower()
    if lowered.startswith(("<!doctype html", "<html")) or "<html" in lowered[:1024]:
        title = _html_title(text)
        titled = f", title {title!r}" if title else ""
        what = f"{path} is an HTML page ({size} bytes{titled}), not a checkpoint."
        if "google" in lowered and ("drive" in lowered or "accounts.google.com" in lowered):
            return f"{what} {GOOGLE_DRIVE_PAGE_HELP}"
        return (
            f"{what} The server sent a web page (an error, sign-in or landing page) instead of the file: "
            "open the address in a browser to see why, or download the file by hand and pass its path."
        )
    if lowered.startswith("version https://git-lfs.github.com/spec/"):
        return (
            f"{path} is a Git LFS pointer ({size} bytes), not the file: the repository was cloned without "
            "git-lfs. Run `git lfs pull` there, or download the file itself."
        )
    first = text.strip().splitlines()[0][:100] if text.strip() else ""
    return f"{path} is a text file ({size} bytes), not a checkpoint; it starts with {first!r}."


def _looks_like_text(head: bytes) -> bool:
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:  # a multi-byte character cut at the end of the sample is still text
        if err.start < len(head) - 4:
            return False
    return True


def check_weight_file(path: str | os.PathLike[str]) -> str:
    """What ``path`` holds, judged from its bytes before anything is unpickled: ``"torch-zip"`` (torch.save's
    format since 1.6), ``"torch-legacy"`` (the older pickle format of torchvision's early files) or
    ``"safetensors"``. An empty file, an HTML or text page, a truncated or foreign archive raise
    :class:`RobustarchError` saying what was received and what to do."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise RobustarchError(
            f"{path} is empty (0 bytes): the download did not complete. Delete it and fetch again."
        )
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if head.startswith(b"PK\x03\x04"):
        return _check_zip(path, size)
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = struct.unpack("<Q", head[:8])[0]
        if 8 + header_len > size:
            raise RobustarchError(
                f"{path} is a truncated safetensors file ({size} bytes, header claims {header_len}); "
                "delete it and download it again."
            )
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-legacy"
    if head.startswith(b"\x1f\x8b") or head[257:262] == b"ustar":
        raise RobustarchError(
            f"{path} is a gzip/tar archive ({size} bytes), not a checkpoint: extract it and pass the weight "
            "file inside."
        )
    if _looks_like_text(head):
        raise RobustarchError(_describe_text(path, head, size))
    raise RobustarchError(
        f"{path} ({size} bytes) is not a checkpoint robustarch can read: it is neither a torch.save file nor "
        f"safetensors (it starts with bytes {head[:16].hex(' ')})."
    )


def _check_zip(path: Path, size: int) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as err:
        raise RobustarchError(
            f"{path} is a truncated or corrupt zip / torch archive ({size} bytes: {err}). Delete it and "
            "download it again."
        ) from err
    # torch.save writes <archive name>/data.pkl plus tensor records
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch-zip"
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} members)" if len(names) > 8 else "")
    raise RobustarchError(
        f"{path} is a zip archive but not a torch checkpoint (it holds {shown or 'nothing'}): extract it and "
        "pass the weight file inside."
    )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as err:
        raise RobustarchError(f"cannot read safetensors file {path}, it is corrupt: {err}") from err
    metadata: dict[str, Any] = {}
    if SAFETENSORS_METADATA_KEY in header:
        try:
            metadata = dict(json.loads(header[SAFETENSORS_METADATA_KEY]))
        except (ValueError, TypeError):
            log.warning("%s: ignoring unreadable robustarch metadata in the safetensors header", path)
    if not state:
        raise RobustarchError(f"{path}: the safetensors file holds no tensors")
    return state, metadata


def extract_state_dict(
    obj: Any, source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Find the network weights in a loaded checkpoint object (see the module docstring)."""
    metadata: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        metadata = dict(obj.get("metadata") or {})
    if isinstance(obj, nn.Module):  # a whole pickled model, only reachable with allow_pickle=True
        obj = obj.state_dict()
    if _is_state_dict(obj):
        return dict(obj), metadata
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if _is_state_dict(inner):
                log.debug("%s: using the state_dict under key %r", source, key)
                return dict(inner), metadata
        raise RobustarchError(
            f"{source}: no state_dict found. Top-level keys: {', '.join(map(str, list(obj)[:30]))}; "
            f"expected tensors at the top level or under one of: {', '.join(STATE_DICT_KEYS)}"
        )
    raise RobustarchError(f"{source}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")


def _strip_prefixes(keys: list[str], expected: set[str], prefixes: Iterable[str]) -> str:
    """The longest chain of wrapper prefixes that every key carries and the network's own keys do not."""
    chain = ""
    if not keys:
        return chain
    prefixes = [p for p in dict.fromkeys(prefixes) if p]
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            full = chain + p
            if all(k.startswith(full) for k in keys) and not all(k.startswith(full) for k in expected):
                chain, changed = full, True
                break
    return chain


def remap_keys(
    state_dict: Mapping[str, torch.Tensor],
    expected: Iterable[str],
    prefix: str = "",
    rewrites: Iterable[tuple[str, str]] = (),
) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (``prefix`` first, then ``module.`` / ``_orig_mod.`` / ``net.``) and apply the
    ``(regex, replacement)`` ``rewrites`` to every key."""
    expected = set(expected)
    keys = list(state_dict)
    chain = _strip_prefixes(keys, expected, (prefix, *WRAPPER_PREFIXES))
    if chain:
        log.info("stripping key prefix %r from the checkpoint", chain)
    compiled = [(re.compile(pattern), repl) for pattern, repl in rewrites]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key[len(chain) :]
        for pattern, repl in compiled:
            new = pattern.sub(repl, new)
        out[new] = value
    return out


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_REPORT_LIMIT]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {s}" for s in shown) + more


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Load ``state_dict`` into ``model`` with strict keys and shapes; on any mismatch raise
    :class:`RobustarchError` listing the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    state = dict(state_dict)
    # BatchNorm files saved before PyTorch 0.4.1 (e.g. torchvision's ResNet/VGG releases) have no
    # num_batches_tracked; torch itself fills it with 0, which only matters for momentum=None training
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshaped:
        parts = [f"{source} does not match the network ({type(model).__name__}, {len(own)} keys):"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("mis-shaped keys", misshaped),
        ):
            if items:
                parts.append(_listing(title, items))
        raise RobustarchError("\n".join(parts))
    model.load_state_dict(state, strict=True)


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None
) -> Path:
    """Save the bare network's ``state_dict`` (wrappers removed, tensors on CPU) with a JSON-serialisable
    ``metadata`` dict, in a file that loads with ``weights_only=True``. Written atomically."""
    from robustarch.zoo import unwrap

    meta = dict(metadata or {})
    try:
        json.dumps(meta)
    except TypeError as err:
        raise RobustarchError(f"checkpoint metadata must be JSON-serialisable: {err}") from err
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "metadata": meta, "state_dict": state}, tmp)
    os.replace(tmp, path)
    return path


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``state_dict`` as a ``.safetensors`` file (no pickle; loads with :func:`read_checkpoint`), with a
    JSON-serialisable ``metadata`` dict in its header. Written atomically."""
    from safetensors.torch import save_file

    try:
        meta = json.dumps(dict(metadata or {}))
    except TypeError as err:
        raise RobustarchError(f"checkpoint metadata must be JSON-serialisable: {err}") from err
    # safetensors refuses tensors that share storage (tied or viewed weights): give each its own copy
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", SAFETENSORS_METADATA_KEY: meta})
    os.replace(tmp, path)
    return path
