"""Images/s of decode + preprocess versus reads from the preprocessed-tensor cache.

Two workloads: the real CIFAR-10 JPEG test split (../shared/data/cifar10-jpeg, 32x32, no resize) and a
generated folder of ImageNet-size JPEGs (500x375 and 375x500, quality 90, smooth content) through the
ImageNet evaluation transform (resize 256, center crop 224). For each: decoding with 1 thread and with all
threads, building the cache, and reading the whole set back from the cache in batches of 256
as uint8 batches (what is sent to a GPU) and as float32 batches in [0, 1], first as a new process
would (sha256 verified) and then again. Every cached pass includes load()'s index of the files (the key).

    python benchmarks/data.py [--imagenet-n 1000] [--threads N] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import robustarch.data as rdata
from _machine import SHARED, cpu_name  # benchmarks/_machine.py (scripts run from this folder)
from robustarch.data import cache
from robustarch.data._dataset import default_threads


def make_imagenet_like(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = folder / f"n{i % 10:08d}"
        cls.mkdir(parents=True, exist_ok=True)
        w, h = (500, 375) if i % 3 else (375, 500)
        # low-frequency content upsampled: compresses and decodes like a photo, unlike white noise
        small = rng.integers(0, 256, (h // 25, w // 25, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        img.save(cls / f"ILSVRC2012_val_{i + 1:08d}.JPEG", "JPEG", quality=90)


def read_all(ds: rdata.ImageDataset, as_float: bool, batch: int = 256) -> int:
    """Read every image once in batches: uint8 copies (what is sent to a GPU) or float32 in [0, 1]."""
    images, touched = ds.uint8(), 0
    for start in range(0, len(ds), batch):
        part = images[start : start + batch].clone()
        touched += part.float().div_(255).numel() if as_float else part.numel()
    return touched


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench(name: str, loader, threads: int, rows: list[tuple[str, str, int, float]]) -> None:
    ds, _ = loader(cache=None)
    n = len(ds)
    t, _ = timed(lambda: ds.uint8(threads=1))
    rows.append((name, "decode + preprocess, 1 thread", n, n / t))
    if threads > 1:
        t, _ = timed(lambda: ds.uint8(threads=threads))
        rows.append((name, f"decode + preprocess, {threads} threads", n, n / t))
    with tempfile.TemporaryDirectory() as tmp:
        t, _ = timed(lambda: loader(cache=tmp, threads=threads))
        rows.append((name, f"cache build ({threads} threads, incl. fsync + sha256)", n, n / t))
        cache._verified.clear()  # as in a new process: the first open checks the images' sha256
        t, _ = timed(lambda: read_all(loader(cache=tmp)[0], False))
        rows.append((name, "cached read -> uint8 batches, first open (sha256 check)", n, n / t))
        t, _ = timed(lambda: read_all(loader(cache=tmp)[0], False))
        rows.append((name, "cached read -> uint8 batches, again", n, n / t))
        t, _ = timed(lambda: read_all(loader(cache=tmp)[0], True))
        rows.append((name, "cached read -> float32 batches in [0, 1], again", n, n / t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imagenet-n", type=int, default=1000, help="generated ImageNet-size JPEGs")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--markdown", action="store_true", help="print a markdown table for docs/benchmarks.md")
    args = ap.parse_args()
    # The float conversion of the cached batches runs single-threaded: on a small shared machine torch's
    # intra-op thread pool waits for descheduled workers (10x slower here), which would measure the
    # scheduler rather than the data path. Decoding uses its own Python threads (--threads).
    torch.set_num_threads(1)
    rows: list[tuple[str, str, int, float]] = []
    load0 = os.getloadavg()[0]
    root = SHARED / "data" / "cifar10-jpeg"
    if root.is_dir():
        bench(
            "cifar10-jpeg test (32x32 JPEG)",
            lambda **kw: rdata.load("cifar10-jpeg", root, **kw),
            args.threads,
            rows,
        )
    else:
        print(f"skipping cifar10-jpeg: {root} is absent")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "val"
        make_imagenet_like(folder, args.imagenet_n)
        bench(
            f"{args.imagenet_n} ImageNet-size JPEGs -> 224",
            lambda **kw: rdata.load("imagefolder", folder, image_size=224, resize=256, **kw),
            args.threads,
            rows,
        )
    header = (
        f"CPU: {cpu_name()}; {os.cpu_count()} logical CPUs, {len(os.sched_getaffinity(0))} usable; "
        f"decoding threads {args.threads}, torch threads 1; load average before/after {load0:.1f}/"
        f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}, Pillow {Image.__version__}"
    )
    if args.markdown:
        print(header + "\n")
        print("| workload | step | images | images/s |\n| --- | --- | ---: | ---: |")
        for wl, step, n, ips in rows:
            print(f"| {wl} | {step} | {n} | {ips:,.0f} |")
    else:
        print(header)
        for wl, step, n, ips in rows:
            print(f"{wl:<38} {step:<58} {n:>6} {ips:>10,.0f} img/s")


if __name__ == "__main__":
    main()
