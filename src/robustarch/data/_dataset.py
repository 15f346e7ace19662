"""The torch Dataset every loader returns: uint8 images in memory, memory-mapped, or decoded on access."""

from __future__ import annotations

import logging
import os
import threading
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from robustarch.data._images import Preprocess
from robustarch.data.errors import CorruptFileError

log = logging.getLogger(__name__)


class EncodedImages:
    """Encoded image files (a folder tree or members of a zip) plus the preprocessing that decodes them.

    Reading is thread-safe (zip reads are serialized, decoding is not) and fork-safe (a worker process
    reopens the zip), so it works with DataLoader workers and with the threaded bulk decode.
    """

    def __init__(
        self,
        names: Sequence[str],
        preprocess: Preprocess,
        *,
        base: Path | None = None,
        zip_path: Path | None = None,
        opened: zipfile.ZipFile | None = None,
    ) -> None:
        """``opened``: ``zip_path`` already opened by the caller (reading a large zip's directory again costs
        ~0.1 s for CIFAR-10's 10,000 test images); it is then owned here."""
        if (base is None) == (zip_path is None):
            raise ValueError("give exactly one of base (a folder) or zip_path")
        self.names, self.preprocess, self.base, self.zip_path = list(names), preprocess, base, zip_path
        self._zip: zipfile.ZipFile | None = opened
        self._zip_pid = os.getpid() if opened is not None else -1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.names)

    def location(self, k: int) -> str:
        if self.zip_path is not None:
            return f"{self.zip_path}:{self.names[k]}"
        return str(self.base / self.names[k])

    def read_bytes(self, k: int) -> bytes:
        if self.zip_path is None:
            try:
                return (self.base / self.names[k]).read_bytes()
            except OSError as err:
                raise CorruptFileError(f"cannot read {self.location(k)}: {err}") from err
        with self._lock:
            if self._zip is None or self._zip_pid != os.getpid():
                self._zip, self._zip_pid = zipfile.ZipFile(self.zip_path), os.getpid()
            try:
                return self._zip.read(self.names[k])
            except (OSError, zipfile.BadZipFile, KeyError) as err:
                raise CorruptFileError(f"cannot read {self.location(k)}: {err}") from err

    def read(self, k: int) -> np.ndarray:
        """Decoded, preprocessed uint8 array (C, H, W) of item ``k``."""
        return self.preprocess(self.read_bytes(k), self.location(k))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_zip"], state["_zip_pid"], state["_lock"] = None, -1, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def default_threads() -> int:
    return max(
        1, min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    )


class ImageDataset(Dataset):
    """Examples ``(image, label)``: ``image`` a float tensor (C, H, W) in [0, 1], ``label`` an int.

    Backed either by a uint8 tensor (N, C, H, W) (in memory or memory-mapped from the cache) or by encoded
    files decoded on access. ``example_ids[i]`` is example i's index within its full split (for ImageNet val,
    the number in its file name minus one), the stable id the results store keys outcomes by.
    ``uint8()`` returns the whole set as one uint8 tensor, decoding (threaded) if needed.
    """

    def __init__(
        self,
        labels: Sequence[int] | torch.Tensor,
        example_ids: Sequence[int] | torch.Tensor,
        image_size: tuple[int, int, int],
        *,
        images: torch.Tensor | None = None,
        source: EncodedImages | None = None,
        source_index: Sequence[int] | None = None,
    ) -> None:
        self.labels = torch.as_tensor(labels, dtype=torch.int64).clone()
        self.example_ids = torch.as_tensor(example_ids, dtype=torch.int64).clone()
        self.image_size = tuple(image_size)
        if (images is None) == (source is None):
            raise ValueError("give exactly one of images or source")
        n = len(self.labels)
        if len(self.example_ids) != n:
            raise ValueError("labels and example_ids differ in length")
        want = (n, *self.image_size)
        if images is not None and (images.dtype != torch.uint8 or tuple(images.shape) != want):
            raise ValueError(f"images must be uint8 {want}, got {images.dtype} {tuple(images.shape)}")
        self._images = images
        self._source = source
        self._source_index = (
            None
            if source is None
            else np.asarray(range(n) if source_index is None else source_index, dtype=np.int64)
        )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def is_decoded(self) -> bool:
        """True when images are a uint8 tensor (memory or memory-map) rather than files to decode."""
        return self._images is not None

    def location(self, i: int) -> str:
        """Where example ``i`` comes from (a file, a zip member, or an index into a tensor)."""
        if self._source is not None:
            return self._source.location(int(self._source_index[i]))
        return f"example {int(self.example_ids[i])}"

    def uint8_item(self, i: int) -> torch.Tensor:
        if self._images is not None:
            return self._images[i]
        return torch.from_numpy(np.ascontiguousarray(self._source.read(int(self._source_index[i]))))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} examples")
        return self.uint8_item(i).float().div_(255.0), int(self.labels[i])

    def uint8(
        self, threads: int | None = None, progress: Callable[[int], None] | None = None
    ) -> torch.Tensor:
        """All images as one uint8 tensor (N, C, H, W), decoding with ``threads`` threads if needed."""
        if self._images is not None:
            return self._images
        out = torch.empty((len(self), *self.image_size), dtype=torch.uint8)
        self.decode_into(out.numpy(), threads=threads, progress=progress)
        return out

    def decode_into(
        self, out: np.ndarray, threads: int | None = None, progress: Callable[[int], None] | None = None
    ) -> None:
        """Decode every example into ``out`` (a (N, C, H, W) uint8 array, e.g. a memmap)."""
        n = len(self)
        if self._images is not None:
            out[...] = self._images.numpy()
            return
        threads = threads or default_threads()
        chunk = 256

        def work(start: int) -> int:
            stop = min(start + chunk, n)
            for i in range(start, stop):
                out[i] = self._source.read(int(self._source_index[i]))
            return stop - start

        if threads <= 1:
            for start in range(0, n, chunk):
                done = work(start)
                if progress:
                    progress(done)
            return
        with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding and resampling
            for done in pool.map(work, range(0, n, chunk)):
                if progress:
                    progress(done)

    def select(self, positions: Sequence[int]) -> ImageDataset:
        """A new dataset of the examples at ``positions`` (in that order)."""
        pos = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        if self._images is not None:
            return ImageDataset(
                self.labels[pos], self.example_ids[pos], self.image_size, images=self._images[pos]
            )
        return ImageDataset(
            self.labels[pos],
            self.example_ids[pos],
            self.image_size,
            source=self._source,
            source_index=self._source_index[pos.numpy()],
        )

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()
