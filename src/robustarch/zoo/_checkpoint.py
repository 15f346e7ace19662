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
    path = Path(path)
    if path.is_dir():  # a model folder as the authors distribute them (DenseNAS: net_config + weights.pt)
        candidates = sorted(p for p in path.iterdir() if p.suffix in (".pt", ".pth", ".tar", ".ckpt"))
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "none"
            raise RobustarchError(
                f"{path} is a folder; expected exactly one weight file in it, found {found}"
            )
        path = candidates[0]
    if not path.is_file():
        raise RobustarchError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        if allow_pickle:
            raise RobustarchError(f"cannot read checkpoint {path}: {err}") from err
        raise RobustarchError(
            f"refusing to load {path}: it contains pickled Python objects beyond tensors and plain "
            "containers, and unpickling them could execute arbitrary code. If you trust the file's "
            "origin, pass allow_pickle=True. Details: " + str(err).splitlines()[0]
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise RobustarchError(f"cannot read checkpoint {path}: {err}") from err
    return extract_state_dict(obj, source=str(path))


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
