"""Loading a dataset split from its standard on-disk files (``robustarch.data.load`` / ``load_split``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from robustarch.data._dataset import ImageDataset
from robustarch.data._images import Preprocess
from robustarch.data._spec import DatasetSpec, dataset_info
from robustarch.data.errors import ClassCountError, DataError, DataLayoutError
from robustarch.data.subsets import SubsetArg, is_class_sorted, select, spread_positions

log = logging.getLogger(__name__)


def _image_size(image_size: int | Sequence[int] | None) -> tuple[int, int, int]:
    if image_size is None:
        raise DataError("imagefolder needs image_size=S or (C, H, W) (the size the model takes)")
    if isinstance(image_size, int):
        return (3, image_size, image_size)
    size = tuple(int(s) for s in image_size)
    if len(size) == 2:
        return (3, *size)
    if len(size) != 3:
        raise DataError(f"image_size must be S, (H, W) or (C, H, W), not {image_size!r}")
    return size  # type: ignore[return-value]


def load_split(
    dataset: str,
    root: str | Path | None = None,
    split: str = "test",
    *,
    download: bool = False,
    verify: bool = True,
    md5: dict[str, str] | None = None,
    ground_truth: str | Path | None = None,
    image_size: int | Sequence[int] | None = None,
    resize: int | None = None,
    label: str | None = None,
    allow_partial: bool = False,
) -> tuple[ImageDataset, DatasetSpec, str]:
    """The whole split (no subset, no cache), its spec and a fingerprint of the files read.

    Checks the class count and the examples per class against the published split; ``allow_partial=True``
    turns a per-class count mismatch into a logged warning (e.g. for a copy holding only a subset).
    """
    from robustarch.data import cifar, folders, mnist

    info = dataset_info(dataset)
    split = info.canonical_split(split)
    misplaced = [
        name
        for name, value, owner in (
            ("ground_truth", ground_truth, ("imagenet",)),
            ("image_size", image_size, ("imagefolder",)),
            ("resize", resize, ("imagefolder",)),
            ("label", label, ("imagefolder",)),
            ("md5", md5, tuple(cifar.RELEASES)),
        )
        if value is not None and dataset not in owner
    ]
    if download and dataset not in cifar.RELEASES:
        misplaced.append("download")
    if misplaced:
        raise DataError(
            f"option(s) {', '.join(misplaced)} not applicable to {dataset} (its files and preprocessing are "
            "fixed, and results on it are always labelled as that dataset)"
        )
    root_str = root if root is not None else info.default_root
    if root_str is None:
        raise DataLayoutError(f"{dataset} needs a root folder (root=... / --data-root PATH)")
    root_path = Path(root_str).expanduser()
    if not root_path.exists() and not (download and dataset in cifar.RELEASES):
        raise DataLayoutError(f"{root_path} does not exist; {_layout(dataset, split)}")
    num_classes, image_size_out, class_names = info.num_classes, info.image_size, info.class_names
    preprocessing, report_label, classes = "uint8-as-released", info.label, "all"
    if dataset in cifar.RELEASES:
        ds, names, fingerprint = cifar.load_cifar(
            dataset, root_path, split, verify=verify, md5=md5, download_missing=download
        )
        if len(names) != num_classes:
            raise ClassCountError(f"{dataset} meta file names {len(names)} classes, expected {num_classes}")
        class_names = names
    elif dataset == "fashion-mnist":
        ds, fingerprint = mnist.load_fashion_mnist(root_path, split)
    elif dataset == "cifar10-jpeg":
        ds, fingerprint = folders.load_cifar10_jpeg(root_path, split)
        preprocessing = ds._source.preprocess.cache_id
    elif dataset == "imagenet":
        gt = Path(ground_truth).expanduser() if ground_truth is not None else None
        ds, present, class_names, fingerprint = folders.load_imagenet(root_path, split, ground_truth=gt)
        preprocessing = ds._source.preprocess.cache_id
        if len(present) < num_classes:  # a class subset such as Imagenette: labels index the 1000 classes
            classes = f"{len(present)}-of-{num_classes}@{_digest_names(present)}"
            report_label = f"{info.label} ({len(present)}-class subset)"
    else:  # imagefolder
        size = _image_size(image_size)
        pre = Preprocess(size[0], size[1], size[2], resize=resize, crop=resize is not None)
        ds, class_names, fingerprint = folders.load_imagefolder(root_path, split, pre)
        num_classes, image_size_out, preprocessing = len(class_names), size, pre.cache_id
        report_label = label or f"image folder {root_path.resolve().name}"
    if classes == "all":
        _check_counts(dataset, split, ds, num_classes, info.per_class.get(split), allow_partial)
    else:
        log.info("%s %s: a subset of the classes (%s); the published per-class counts are not checked",
                 dataset, split, classes)  # fmt: skip
    spec = DatasetSpec(
        name=dataset,
        label=report_label,
        num_classes=num_classes,
        class_names=tuple(class_names),
        image_size=tuple(image_size_out),
        mean=info.mean,
        std=info.std,
        split=split,
        n=len(ds),
        subset="all",
        preprocessing=preprocessing.split("@")[0],
        root=str(root_path),
        classes=classes,
    )
    return ds, spec, f"{fingerprint}|{preprocessing}"


def _digest_names(names: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:12]


def _layout(dataset: str, split: str) -> str:
    from robustarch.data import cifar, folders, mnist

    if dataset in cifar.RELEASES:
        return cifar.expected_layout(dataset)
    return {
        "cifar10-jpeg": folders.CIFAR10_JPEG_LAYOUT.format(split=split),
        "imagenet": folders.IMAGENET_LAYOUT,
        "fashion-mnist": mnist.LAYOUT,
    }.get(dataset, folders.IMAGEFOLDER_LAYOUT)


def _check_counts(
    dataset: str, split: str, ds: ImageDataset, num_classes: int, per_class: int | None, allow_partial: bool
) -> None:
    counts = ds.class_counts(num_classes)
    if len(counts) != num_classes:
        raise ClassCountError(f"{dataset} {split}: labels reach {len(counts) - 1}, expected < {num_classes}")
    empty = [c for c, n in enumerate(counts) if n == 0]
    if per_class is None:
        if empty:
            raise ClassCountError(f"{dataset} {split}: classes {empty[:5]} have no examples")
        return
    wrong = {c: n for c, n in enumerate(counts) if n != per_class}
    if wrong:
        msg = (
            f"{dataset} {split} should hold {per_class} examples of each of its {num_classes} classes "
            f"({per_class * num_classes} in all); found {len(ds)}, e.g. class {next(iter(wrong))} has "
            f"{next(iter(wrong.values()))} ({len(wrong)} classes differ)"
        )
        if not allow_partial:
            raise ClassCountError(msg + "; pass allow_partial=True (--allow-partial) for a partial copy")
        log.warning("%s (allowed: allow_partial)", msg)


def _limit(ds: ImageDataset, description: str, limit: int, where: str) -> tuple[ImageDataset, str]:
    """``limit`` examples of ``ds``: the first ones, or, where the files are sorted by class, ``limit``
    spread evenly over them (the first ones would be one or two classes)."""
    if limit <= 0:
        raise DataError(f"limit must be positive, not {limit}")
    if limit >= len(ds):
        return ds, description
    if is_class_sorted(ds.labels.numpy()):
        log.info(
            "%s is sorted by class: limit %d takes %d examples spread evenly over it (spread:%d), every "
            "class in proportion; subset first:%d gives the first ones",
            where, limit, limit, limit, limit,
        )  # fmt: skip
        ds, kind = ds.select(spread_positions(len(ds), limit)), f"spread:{limit}"
    else:
        ds, kind = ds.select(range(limit)), f"first:{limit}"
    return ds, kind if description == "all" else f"{description}+{kind}"


def load(
    dataset: str,
    root: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    subset: SubsetArg = None,
    *,
    cache: bool | str | Path | None = None,
    threads: int | None = None,
    progress: bool = False,
    **options,
) -> tuple[ImageDataset, DatasetSpec]:
    """Load a dataset split as ``(torch Dataset, DatasetSpec)``.

    ``dataset``: one of :func:`list_datasets` (cifar10, cifar100, cifar10-jpeg, fashion-mnist, imagenet,
    imagefolder). ``root``: where the files are (fashion-mnist defaults to Debian's folder). ``split``:
    "test" or "train" ("test" means val for ImageNet). ``subset``: see :mod:`robustarch.data.subsets`;
    ``limit``: keep ``limit`` examples after the subset: the first ones, or, on files sorted by class (the
    CIFAR-10 JPEG copy, ImageNet class folders), ``limit`` spread evenly over them (``spread:N``) so that
    every class is measured. ``cache``: True (default folder) or a folder
    to serve decoded uint8 tensors from the memory-mapped cache, building it once. ``options``: download,
    verify, md5 (CIFAR), ground_truth (ImageNet flat layout), image_size / resize / label (imagefolder),
    allow_partial.
    """
    ds, spec, fingerprint = load_split(dataset, root, split, **options)
    ds, description = select(ds, subset, spec.num_classes)
    if limit is not None:
        ds, description = _limit(ds, description, limit, f"{dataset} {spec.split}")
    if cache:
        fields = {"dataset": dataset, "split": spec.split, "files": fingerprint, "subset": description}
        from robustarch.data import cache as tensor_cache

        ds = tensor_cache.cached(
            ds, fields, None if cache is True else cache, threads=threads, progress=progress
        )
    spec = DatasetSpec(**{**spec.__dict__, "n": len(ds), "subset": description})
    return ds, spec
