"""Generators of dataset files in their exact on-disk formats, shared by the tests/test_data_*.py modules."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from robustarch.data._spec import CIFAR10_CLASSES


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def py2_style_pickle(obj: object) -> bytes:
    """Protocol 2 with numpy's pre-2.0 module path, as in the release files (Python 2's cPickle)."""
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def balanced_labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def write_cifar(
    root: Path,
    dataset: str = "cifar10",
    n_test_per_class: int | None = None,
    n_train_per_batch: int = 20,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The python release of CIFAR-10/100 (pickles of dicts holding an (N, 3072) uint8 array and label
    lists). Returns the images (N, 3, 32, 32) and labels of each split as written."""
    rng = np.random.default_rng(seed)
    c10 = dataset == "cifar10"
    k = 10 if c10 else 100
    folder = root / ("cifar-10-batches-py" if c10 else "cifar-100-python")
    folder.mkdir(parents=True)
    per_class = n_test_per_class or (1000 if c10 else 100)
    out = {}

    def batch(name: str, labels: np.ndarray) -> np.ndarray:
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        d = {
            "batch_label": f"{name} of generated",
            "data": data,
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
        }
        if c10:
            d["labels"] = labels.tolist()
        else:
            d["fine_labels"] = labels.tolist()
            d["coarse_labels"] = (labels // 5).tolist()  # differs from the fine labels: must not be read
        (folder / name).write_bytes(py2_style_pickle(d))
        return data.reshape(-1, 3, 32, 32)

    test_labels = balanced_labels(k, per_class, rng)
    out["test_images"] = batch("test_batch" if c10 else "test", test_labels)
    out["test_labels"] = test_labels
    train_names = [f"data_batch_{i}" for i in range(1, 6)] if c10 else ["train"]
    imgs, labs = [], []
    for name in train_names:
        lab = rng.integers(0, k, n_train_per_batch)
        imgs.append(batch(name, lab))
        labs.append(lab)
    out["train_images"], out["train_labels"] = np.concatenate(imgs), np.concatenate(labs)
    if c10:
        meta = {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": 10000, "num_vis": 3072}
        (folder / "batches.meta").write_bytes(py2_style_pickle(meta))
    else:
        meta = {
            "fine_label_names": [f"fine{i:02d}" for i in range(100)],
            "coarse_label_names": [f"coarse{i:02d}" for i in range(20)],
        }
        (folder / "meta").write_bytes(py2_style_pickle(meta))
    out["md5"] = {p.name: md5(p) for p in folder.iterdir()}
    return out


def tar_gz(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz", compresslevel=0) as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def random_image(rng: np.random.Generator, w: int, h: int, mode: str = "RGB") -> Image.Image:
    # smooth content so JPEG artefacts stay moderate; exact values are compared after decoding anyway
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, quality=90) if fmt == "JPEG" else img.save(buf, fmt)
    return buf.getvalue()
