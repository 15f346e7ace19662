"""Fashion-MNIST (Xiao et al., 2017) from its idx files, gzipped or raw.

Debian's ``dataset-fashion-mnist`` package installs them in ``/usr/share/datasets/fashion-mnist`` (the default
root). Debian recompresses the ``.gz`` files, so the upstream md5 sums of the archives do not apply; instead
the idx headers, the published counts (60,000 / 10,000, 6,000 / 1,000 per class) and the label range are
checked.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from robustarch.data._dataset import ImageDataset
from robustarch.data._files import file_fingerprint
from robustarch.data.errors import CorruptFileError, DataLayoutError

PREFIX = {"train": "train", "test": "t10k"}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (LeCun's MNIST format): 2 zero bytes, a dtype code, the number of dims, big-endian sizes"""
    raw = path.read_bytes()
    try:
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError) as err:
        raise CorruptFileError(f"cannot decompress {path}: {err}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise CorruptFileError(f"{path} is not an idx file (bad magic {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[data[2]])
    if len(data) != header + int(np.prod(shape)) * dtype.itemsize:
        raise CorruptFileError(
            f"{path}: header says shape {shape} but the file holds {len(data) - header} "
            "data bytes (truncated?)"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


LAYOUT = (
    "expected ROOT/{train,t10k}-images-idx3-ubyte[.gz] and ROOT/{train,t10k}-labels-idx1-ubyte[.gz] "
    "(Debian: apt install dataset-fashion-mnist, root /usr/share/datasets/fashion-mnist)"
)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataLayoutError(f"{root / stem}[.gz] is missing; {LAYOUT}")


def load_fashion_mnist(root: Path, split: str) -> tuple[ImageDataset, str]:
    img_path = _find(root, f"{PREFIX[split]}-images-idx3-ubyte")
    lab_path = _find(root, f"{PREFIX[split]}-labels-idx1-ubyte")
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise CorruptFileError(f"{img_path}: expected uint8 images of shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise CorruptFileError(f"{lab_path}: {labels.shape} labels for {len(images)} images in {img_path}")
    if len(labels) and labels.max() > 9:
        raise CorruptFileError(f"{lab_path}: labels outside 0..9")
    ds = ImageDataset(
        labels.astype(np.int64),
        np.arange(len(labels)),
        (1, 28, 28),
        images=torch.from_numpy(images.copy()).unsqueeze(1),
    )
    return ds, f"{file_fingerprint(img_path)};{file_fingerprint(lab_path)}"
