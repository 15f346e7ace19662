"""The real CIFAR-10 JPEG copy in ../shared (skipped when absent): counts, shapes, label order, pixels."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import robustarch.data as rdata
from conftest import shared_path
from robustarch.data import _images
from robustarch.data._spec import CIFAR10_CLASSES, CIFAR10_MEAN

pytestmark = pytest.mark.needs_shared


def test_cifar10_jpeg_test_split():
    root = shared_path("data", "cifar10-jpeg")
    ds, spec = rdata.load("cifar10-jpeg", root)
    assert (spec.name, spec.label, spec.split, spec.n) == (
        "cifar10-jpeg",
        "CIFAR-10 (JPEG q75)",
        "test",
        10000,
    )
    assert spec.class_names == CIFAR10_CLASSES and spec.image_size == (3, 32, 32) and spec.num_classes == 10
    assert ds.class_counts(10) == [1000] * 10
    # zip order test/<class>/<NNNN>.jpg sorted: class-major, so labels are 0 x1000, 1 x1000, ...
    assert ds.labels.tolist() == np.repeat(np.arange(10), 1000).tolist()
    assert ds.example_ids.tolist() == list(range(10000))
    images = ds.uint8()
    assert images.shape == (10000, 3, 32, 32) and images.dtype == torch.uint8
    with zipfile.ZipFile(root / "test.zip") as zf:
        for i, member in (
            (0, "test/airplane/0000.jpg"),
            (3999, "test/cat/0999.jpg"),
            (9999, "test/truck/0999.jpg"),
        ):
            ref = np.asarray(Image.open(zf.open(member)).convert("RGB")).transpose(2, 0, 1)
            assert torch.equal(images[i], torch.from_numpy(ref.copy())), member
            assert ds.location(i).endswith(member)
    x, y = ds[4321]
    assert x.shape == (3, 32, 32) and y == 4 and torch.equal(x, images[4321].float() / 255)
    # real CIFAR-10 content: channel means within JPEG noise of the published training-set statistics
    mean = (images.double() / 255).mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(CIFAR10_MEAN, dtype=torch.float64), atol=0.015)


def test_cifar10_jpeg_cached_second_pass_decodes_nothing(tmp_path, monkeypatch):
    root = shared_path("data", "cifar10-jpeg")
    direct, _ = rdata.load("cifar10-jpeg", root, subset="balanced:500:3")
    expected = direct.uint8()
    calls = []
    real = _images.decode
    monkeypatch.setattr(_images, "decode", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    first, spec = rdata.load("cifar10-jpeg", root, subset="balanced:500:3", cache=tmp_path)
    assert len(calls) == 500 and spec.subset == "balanced:500:3" and spec.label == "CIFAR-10 (JPEG q75)"
    calls.clear()
    second, _ = rdata.load("cifar10-jpeg", root, subset="balanced:500:3", cache=tmp_path)
    assert calls == [] and torch.equal(second.uint8(), expected) and torch.equal(first.uint8(), expected)
    assert second.class_counts(10) == [50] * 10


def test_cifar10_jpeg_train_split_counts():
    ds, spec, _ = rdata.load_split("cifar10-jpeg", shared_path("data", "cifar10-jpeg"), "train")
    assert spec.n == 50000 and ds.class_counts(10) == [5000] * 10 and not ds.is_decoded
    assert ds.location(0).endswith("train.zip:train/airplane/0000.jpg")
