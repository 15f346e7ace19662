"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the original python release.

Accepted under ``root``: the extracted folder (``cifar-10-batches-py/``, ``cifar-100-python/``), the archive
(``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``), or ``root`` being the extracted folder itself.
Files are checked against the official md5 sums (the archive's when reading the archive, each member's when
reading the folder). CIFAR-100 uses the 100 fine labels. ``download=True`` fetches the official archive.
"""

from __future__ import annotations

import logging
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustarch.data._dataset import ImageDataset
from robustarch.data._files import check_md5, file_fingerprint, load_pickle, md5_bytes, md5_file
from robustarch.data.errors import ClassCountError, CorruptFileError, DataLayoutError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CifarRelease:
    folder: str
    archive: str
    url: str
    archive_md5: str
    splits: dict[str, tuple[str, ...]]
    meta: str
    label_key: str
    names_key: str
    md5: dict[str, str]  # official md5 of every member (torchvision lists the same sums)


RELEASES = {
    "cifar10": CifarRelease(
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        "batches.meta",
        "labels",
        "label_names",
        {
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
    ),
    "cifar100": CifarRelease(
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        {"train": ("train",), "test": ("test",)},
        "meta",
        "fine_labels",
        "fine_label_names",
        {
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
    ),
}


def expected_layout(dataset: str) -> str:
    r = RELEASES[dataset]
    files = ", ".join([*r.splits["train"], *r.splits["test"], r.meta])
    return (
        f"expected ROOT/{r.folder}/ with {files} (the official python release, extracted), "
        f"or ROOT/{r.archive} (download it with download=True / --download)"
    )


def download(dataset: str, root: Path) -> Path:
    """Fetch the official archive into ``root`` (opt-in; never called by tests) and check its md5."""
    r = RELEASES[dataset]
    root.mkdir(parents=True, exist_ok=True)
    target = root / r.archive
    if target.exists() and md5_file(target) == r.archive_md5:
        return target
    tmp = target.with_suffix(".part")
    log.info("downloading %s to %s", r.url, target)
    with urllib.request.urlopen(r.url, timeout=60) as resp, open(tmp, "wb") as out:
        while block := resp.read(1 << 20):
            out.write(block)
    check_md5(str(tmp), md5_file(tmp), r.archive_md5, "official")
    tmp.replace(target)
    return target


def _members(
    dataset: str, root: Path, names: list[str], verify: bool, md5: dict[str, str] | None
) -> tuple[dict[str, bytes], str]:
    """Raw bytes of the named members, from the folder or the archive, checksum-checked."""
    r = RELEASES[dataset]
    folder = root if (root / r.meta).is_file() and root.name == r.folder else root / r.folder
    table, kind = (md5, "expected") if md5 is not None else ({**r.md5, r.archive: r.archive_md5}, "official")
    if folder.is_dir():
        out = {}
        for name in names:
            path = folder / name
            if not path.is_file():
                raise DataLayoutError(f"{path} is missing; {expected_layout(dataset)}")
            data = path.read_bytes()
            if verify:
                check_md5(str(path), md5_bytes(data), table.get(name), kind)
            out[name] = data
        return out, ";".join(file_fingerprint(folder / n) for n in names)
    archive = root / r.archive if root.is_dir() else root
    if not archive.is_file() or not archive.name.endswith((".tar.gz", ".tgz")):
        raise DataLayoutError(f"no CIFAR files under {root}; {expected_layout(dataset)}")
    if verify:
        check_md5(str(archive), md5_file(archive), table.get(r.archive), kind)
    out = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in names:
                try:
                    f = tar.extractfile(f"{r.folder}/{name}")
                except KeyError:
                    f = None
                if f is None:
                    raise DataLayoutError(
                        f"{archive} has no member {r.folder}/{name}; {expected_layout(dataset)}"
                    )
                out[name] = f.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise CorruptFileError(f"cannot read archive {archive}: {err}") from err
    return out, file_fingerprint(archive)


def load_cifar(
    dataset: str,
    root: Path,
    split: str,
    *,
    verify: bool = True,
    md5: dict[str, str] | None = None,
    download_missing: bool = False,
) -> tuple[ImageDataset, tuple[str, ...], str]:
    """The split as an in-memory uint8 dataset, its class names and a fingerprint of the files read."""
    r = RELEASES[dataset]
    if download_missing and not (root / r.folder).is_dir() and not (root / r.archive).is_file():
        download(dataset, root)
    names = [*r.splits[split], r.meta]
    raw, fingerprint = _members(dataset, root, names, verify, md5)
    meta = load_pickle(raw[r.meta], r.meta)
    if not isinstance(meta, dict) or r.names_key not in meta:
        raise CorruptFileError(f"{r.meta} has no {r.names_key!r} entry: not a {dataset} release meta file")
    class_names = tuple(str(c) for c in meta[r.names_key])
    images, labels = [], []
    for name in r.splits[split]:
        batch = load_pickle(raw[name], name)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            lab = np.asarray(batch[r.label_key], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptFileError(
                f"{name} lacks 'data'/{r.label_key!r} arrays of the CIFAR format: {err}"
            ) from err
        if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise CorruptFileError(
                f"{name}: data has shape {data.shape} and {len(lab)} labels; expected "
                "(N, 3072) uint8 rows (3x32x32, channel-major) and N labels"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    labels_all = np.concatenate(labels)
    if labels_all.min() < 0 or labels_all.max() >= len(class_names):
        raise ClassCountError(f"{dataset} {split}: labels outside 0..{len(class_names) - 1}")
    ds = ImageDataset(
        labels_all, np.arange(len(labels_all)), (3, 32, 32), images=torch.from_numpy(np.concatenate(images))
    )
    return ds, class_names, fingerprint
