"""Deterministic subsets of a split: the first N, N spread evenly, a seeded class-balanced sample, or a file
of example ids.

A subset is written as a string, which is also how it is described in the spec and in results:
``"all"``, ``"first:N"``, ``"spread:N"`` (N examples at evenly spaced positions of the split's order: on
files sorted by class, such as the CIFAR-10 JPEG copy or ImageNet class folders, every class in proportion;
what ``limit=N`` takes on such files), ``"balanced:N"`` / ``"balanced:N:SEED"`` (N / num_classes examples of
every class, drawn with numpy's PCG64 from SEED, default 0, then sorted by example id), ``"ids:PATH"`` (one
example id per
line, or ImageNet val file names such as ``n01440764/ILSVRC2012_val_00000293.JPEG`` as in RobustBench's
5,000-image ImageNet list; kept in file order). A sequence of ints is an id list too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from robustarch.data._dataset import ImageDataset
from robustarch.data.errors import DataError, DataLayoutError
from robustarch.data.folders import _val_id
from robustarch.errors import UnknownNameError

SubsetArg = str | Path | Sequence[int] | None
KINDS = ("all", "first", "spread", "balanced", "ids")


def read_id_file(path: Path) -> list[int]:
    if not path.is_file():
        raise DataLayoutError(f"subset id file {path} does not exist")
    ids = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        token = line.split("#", 1)[0].strip()
        if not token:
            continue
        first = token.split()[0]
        if first.lstrip("-").isdigit():
            ids.append(int(first))
        elif (vid := _val_id(first)) is not None:
            ids.append(vid)
        else:
            raise DataError(
                f"{path}:{lineno}: expected an example id or an ImageNet val file name, got {line!r}"
            )
    return ids


def _digest(ids: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(ids, dtype="<i8").tobytes()).hexdigest()[:12]


def select(ds: ImageDataset, subset: SubsetArg, num_classes: int) -> tuple[ImageDataset, str]:
    """The subset of ``ds`` and its description (used in specs, results and cache keys)."""
    if subset is None or subset == "all":
        return ds, "all"
    if isinstance(subset, Path):
        subset = f"ids:{subset}"
    if not isinstance(subset, str):
        return _by_ids(ds, [int(i) for i in subset], f"ids:{len(subset)}@{_digest(subset)}")
    kind, _, rest = subset.partition(":")
    if kind not in KINDS:
        raise UnknownNameError("subset kind", kind, [*KINDS])
    if kind == "ids":
        ids = read_id_file(Path(rest))
        return _by_ids(ds, ids, f"ids:{Path(rest).name}:{len(ids)}@{_digest(ids)}")
    parts = rest.split(":")
    try:
        n = int(parts[0])
        seed = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    except ValueError:
        raise DataError(f"bad subset {subset!r}: expected first:N, balanced:N or balanced:N:SEED") from None
    if n <= 0 or n > len(ds) or (kind in ("first", "spread") and len(parts) > 1) or len(parts) > 2:
        raise DataError(f"bad subset {subset!r}: N must be in 1..{len(ds)} (the split's size)")
    if kind == "first":
        return ds.select(range(n)), f"first:{n}"
    if kind == "spread":
        return ds.select(spread_positions(len(ds), n)), f"spread:{n}"
    if n % num_classes:
        raise DataError(
            f"balanced:{n} needs a multiple of the {num_classes} classes (e.g. "
            f"{max(1, n // num_classes) * num_classes})"
        )
    per_class = n // num_classes
    rng = np.random.default_rng(seed)
    labels = ds.labels.numpy()
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise DataError(
                f"balanced:{n} needs {per_class} examples of class {c}, the split has {len(members)}"
            )
        chosen.append(members[rng.permutation(len(members))[:per_class]])
    positions = np.concatenate(chosen)
    positions = positions[np.argsort(ds.example_ids.numpy()[positions], kind="stable")]
    return ds.select(positions), f"balanced:{n}:{seed}"


def spread_positions(total: int, n: int) -> list[int]:
    """``n`` evenly spaced positions of ``range(total)``: ``floor(i * total / n)``, starting at 0."""
    return [i * total // n for i in range(n)]


def is_class_sorted(labels: Sequence[int] | np.ndarray) -> bool:
    """Whether examples come grouped by class (labels never decrease and more than one class is present):
    then the first N examples are a few classes only."""
    arr = np.asarray(labels)
    return len(arr) > 1 and bool((np.diff(arr) >= 0).all()) and arr[0] != arr[-1]


def _by_ids(ds: ImageDataset, ids: list[int], description: str) -> tuple[ImageDataset, str]:
    if not ids:
        raise DataError(f"subset {description} is empty")
    if len(set(ids)) != len(ids):
        raise DataError(f"subset {description} lists an example id twice")
    where = {int(e): p for p, e in enumerate(ds.example_ids.tolist())}
    missing = [i for i in ids if i not in where]
    if missing:
        raise DataError(f"subset {description}: {len(missing)} id(s) not in this split, e.g. {missing[:5]}")
    return ds.select([where[i] for i in ids]), description
