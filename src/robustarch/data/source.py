"""What the evaluation engine evaluates on: an ordered list of examples with stable ids.

A :class:`DataSource` comes from a dataset of the table (:func:`load_source`, through
:func:`robustarch.data.load`), from any ``torch.utils.data.Dataset`` of ``(image, label)``
(:func:`source_from_dataset`), or from a pair of tensors (:func:`source_from_tensors`); :func:`as_source`
accepts any of them. Images are float (C, H, W) in
[0, 1]; the engine refuses anything else before it attacks.

Identity. Results are keyed by ``(dataset, subset)``: for a dataset of the table that is its id and the
subset's description (two copies of CIFAR-10 are the same examples). Data given in Python has no such name,
so its ``subset`` carries a sha256 of every image and label (``tensors:N@<digest>``): other data never
resumes or overwrites these results.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from robustarch.data.errors import DataError
from robustarch.data.subsets import is_class_sorted


@dataclass
class DataSource:
    """An ordered example list: a torch Dataset of ([0,1] image, label) with stable example ids."""

    dataset: str  # dataset id (robustarch.data), or the name given to data from Python
    label: str  # how reports name it
    subset: str  # names the ordered list, e.g. "test/first:1000"
    data: Any  # torch Dataset
    example_ids: list[int]
    num_classes: int | None  # None: data given in Python without it; the model's output count decides
    info: dict[str, Any] = field(default_factory=dict)
    labels: Tensor | None = None  # every example's label, where known without reading the images

    def __len__(self) -> int:
        return len(self.example_ids)

    @property
    def image_size(self) -> tuple[int, ...]:
        """(C, H, W) of the images (read off the first example)."""
        return tuple(self.batch(0, 1)[0].shape[1:]) if len(self) else ()

    @property
    def budget_dataset(self) -> str:
        """The dataset id whose standard attacks apply (``robustarch.data.budget_dataset``)."""
        from robustarch.data._spec import budget_dataset

        return budget_dataset(self.dataset, self.image_size)

    @property
    def class_sorted(self) -> bool:
        """Whether the examples come grouped by class (then the first N are a few classes only)."""
        return self.labels is not None and is_class_sorted(self.labels.numpy())

    def classes_in(self, start: int, stop: int) -> int | None:
        """How many classes positions [start, stop) hold (None where labels are not known up front)."""
        return None if self.labels is None else len(torch.unique(self.labels[start:stop]))

    def batch(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Images (float32 in [0,1]) and labels of positions [start, stop)."""
        ds = self.data
        if isinstance(ds, _Tensors):
            return ds.x[start:stop].float(), ds.y[start:stop].clone()
        if hasattr(ds, "uint8_item") and hasattr(ds, "labels"):
            if getattr(ds, "is_decoded", False):
                u8 = ds.uint8()[start:stop]  # a slice of the in-memory / memory-mapped tensor
            else:
                u8 = torch.stack([ds.uint8_item(i) for i in range(start, stop)])
            return u8.float().div_(255.0), ds.labels[start:stop].clone()
        items = [ds[i] for i in range(start, stop)]
        return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.as_tensor(
            [int(y) for _, y in items], dtype=torch.int64
        )


@dataclass
class _Tensors:
    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.x[i], int(self.y[i])


def load_source(
    dataset: str,
    root: str | os.PathLike[str] | None,
    *,
    split: str = "test",
    limit: int | None = None,
    subset: Any = None,
    **options: Any,
) -> DataSource:
    """A :class:`DataSource` of a dataset of the table, through :func:`robustarch.data.load` (``options``:
    cache, ground_truth, allow_partial, verify, image_size, ...)."""
    from robustarch import data as rdata

    ds, spec = rdata.load(dataset, root, split=split, limit=limit, subset=subset, **options)
    ids = [int(i) for i in ds.example_ids] if hasattr(ds, "example_ids") else list(range(len(ds)))
    classes = "" if spec.classes == "all" else f"classes:{spec.classes}/"
    subset_name = f"{spec.split}/{classes}{spec.subset or 'all'}"
    info = {"root": str(root), "preprocessing": spec.preprocessing, "split": spec.split}
    labels = ds.labels.clone() if hasattr(ds, "labels") else None
    return DataSource(dataset, spec.label, subset_name, ds, ids, int(spec.num_classes), info, labels)


def source_from_tensors(
    images: Tensor,
    labels: Tensor | Sequence[int],
    *,
    name: str = "tensors",
    label: str | None = None,
    num_classes: int | None = None,
) -> DataSource:
    """A :class:`DataSource` of images (N, C, H, W) in [0, 1] and integer labels (N,), ids 0..N-1."""
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise DataError(f"images must be a float tensor (N, C, H, W) in [0, 1], got {got}")
    y = torch.as_tensor(labels)
    if y.dim() != 1 or len(y) != len(images) or y.is_floating_point():
        raise DataError(
            f"labels must be N = {len(images)} integer class indices, got {y.dtype} {tuple(y.shape)}"
        )
    x, y = images.detach().cpu().contiguous(), y.to(torch.int64).cpu().contiguous()
    _check_pixels(x, "images")
    digest = hashlib.sha256(x.float().numpy().tobytes())
    digest.update(y.numpy().tobytes())
    n_cls = _num_classes(y, num_classes)
    subset = f"tensors:{len(y)}@{digest.hexdigest()[:16]}"
    return DataSource(
        name,
        label or f"{name} ({len(y)} examples)",
        subset,
        _Tensors(x, y),
        list(range(len(y))),
        n_cls,
        {"source": "tensors"},
        y,
    )


def source_from_dataset(
    dataset: Any, *, name: str | None = None, label: str | None = None, num_classes: int | None = None
) -> DataSource:
    """A :class:`DataSource` of any map-style ``torch.utils.data.Dataset`` whose items are ``(image,
    label)`` with the image a float tensor (C, H, W) in [0, 1]; ids 0..N-1. Reads every item once, to
    identify the data (sha256) and learn its labels."""
    try:
        n = len(dataset)
    except TypeError:
        raise DataError(
            f"data must be a map-style Dataset with len() (got {type(dataset).__name__}); "
            "an iterable dataset has no stable example order"
        ) from None
    if n == 0:
        raise DataError(f"{type(dataset).__name__} holds no examples")
    digest, labels, shape = hashlib.sha256(), [], None
    for i in range(n):
        item = dataset[i]
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise DataError(f"item {i} of {type(dataset).__name__} is not an (image, label) pair")
        image = torch.as_tensor(item[0])
        if image.dim() != 3 or not image.is_floating_point():
            raise DataError(
                f"item {i}: the image must be a float tensor (C, H, W) in [0, 1], got {image.dtype} "
                f"{tuple(image.shape)} (convert PIL images with torchvision's ToTensor, without Normalize)"
            )
        shape = shape or tuple(image.shape)
        if tuple(image.shape) != shape:
            raise DataError(f"item {i} has shape {tuple(image.shape)}, the first had {shape}")
        _check_pixels(image, f"item {i}")
        digest.update(image.detach().cpu().float().contiguous().numpy().tobytes())
        labels.append(int(item[1]))
    y = torch.tensor(labels, dtype=torch.int64)
    digest.update(y.numpy().tobytes())
    name = name or type(dataset).__name__.lower()
    return DataSource(
        name,
        label or f"{name} ({n} examples)",
        f"dataset:{n}@{digest.hexdigest()[:16]}",
        dataset,
        list(range(n)),
        _num_classes(y, num_classes),
        {"source": type(dataset).__name__},
        y,
    )


def as_source(data: Any, **options: Any) -> DataSource:
    """Any accepted form of data as a :class:`DataSource`: a DataSource, ``(dataset_id, root)``, a pair of
    tensors ``(x, y)`` or a torch Dataset. ``options`` go to the constructor (split, limit, subset, ... for a
    dataset id; name, label, num_classes for data from Python)."""
    if isinstance(data, DataSource):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        first, second = data
        if isinstance(first, str):
            return load_source(first, second, **options)
        if isinstance(first, Tensor):
            return source_from_tensors(first, second, **options)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (str, tuple, list)):
        return source_from_dataset(data, **options)
    raise DataError(
        f"data must be (dataset_id, root), a pair of tensors (x, y) or a torch Dataset of (image, label); "
        f"got {type(data).__name__}"
    )


def _check_pixels(x: Tensor, what: str) -> None:
    if x.numel() and (not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1):
        raise DataError(
            f"{what} must lie in [0, 1] (got min {float(x.min()):.4g}, max {float(x.max()):.4g}): give "
            "pixels, not normalized tensors; pass the model's mean/std to robustarch.evaluate instead"
        )


def _num_classes(y: Tensor, given: int | None) -> int | None:
    """``given`` after checking the labels against it; None (decided by the model's outputs) if not given:
    the labels alone only bound it."""
    if len(y) and int(y.min()) < 0:
        raise DataError("labels must be non-negative class indices")
    seen = int(y.max()) + 1 if len(y) else 0
    if given is not None and given < seen:
        raise DataError(f"num_classes={given} but a label is {seen - 1}")
    return given
