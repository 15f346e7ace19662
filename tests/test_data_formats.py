"""CIFAR-10/100 pickles and archives, Fashion-MNIST idx files, image folders and subsets, on files generated
in the exact release formats: images and labels come back exactly, and bad input says what is wrong."""

from __future__ import annotations

import dataclasses
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import robustarch.data as rdata
from robustarch.data import cifar
from robustarch.errors import RobustarchError, UnknownNameError
from test_data_helpers import encode, random_image, tar_gz, write_cifar, write_idx


@pytest.fixture(scope="module")
def c10(tmp_path_factory):
    root = tmp_path_factory.mktemp("c10")
    return root, write_cifar(root, "cifar10")


@pytest.fixture(scope="module")
def c100(tmp_path_factory):
    root = tmp_path_factory.mktemp("c100")
    return root, write_cifar(root, "cifar100")


def test_dataset_ids_agree_with_the_zoo_table():
    from robustarch.zoo._registry import DATASETS

    assert set(DATASETS) == set(rdata.list_datasets()) - {"imagefolder"}
    for name, shape in DATASETS.items():
        info = rdata.dataset_info(name)
        assert (info.label, info.num_classes, info.image_size) == (
            shape.label,
            shape.num_classes,
            (shape.in_channels, shape.input_size, shape.input_size),
        )


def test_unknown_dataset_suggests_close_names(tmp_path):
    with pytest.raises(UnknownNameError, match="cifar10-jpeg"):
        rdata.load("cifar10-jpg", tmp_path)
    with pytest.raises(UnknownNameError, match="split"):
        rdata.load("cifar10", tmp_path, split="tset")


def test_cifar10_folder_comes_back_exactly(c10):
    root, gen = c10
    ds, spec = rdata.load("cifar10", root, md5=gen["md5"])
    assert (spec.name, spec.label, spec.n, spec.num_classes, spec.image_size) == (
        "cifar10",
        "CIFAR-10",
        10000,
        10,
        (3, 32, 32),
    )
    assert spec.class_names[:2] == ("airplane", "automobile")
    assert torch.equal(ds.uint8(), torch.from_numpy(gen["test_images"]))
    assert ds.labels.tolist() == gen["test_labels"].tolist()
    assert ds.example_ids.tolist() == list(range(10000))
    x, y = ds[17]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and x.min() >= 0 and x.max() <= 1
    assert (
        torch.equal(x, torch.from_numpy(gen["test_images"][17]).float() / 255) and y == gen["test_labels"][17]
    )


def test_cifar10_train_split_is_the_five_batches_in_order_and_counts_are_checked(c10):
    root, gen = c10
    with pytest.raises(rdata.ClassCountError, match="5000 examples of each"):
        rdata.load("cifar10", root, split="train", md5=gen["md5"])
    ds, spec = rdata.load("cifar10", root, split="train", md5=gen["md5"], allow_partial=True)
    assert spec.n == 100
    assert torch.equal(ds.uint8(), torch.from_numpy(gen["train_images"]))
    assert ds.labels.tolist() == gen["train_labels"].tolist()


def test_cifar_md5_mismatch_names_the_file_and_the_official_sums_are_used_by_default(c10, monkeypatch):
    root, gen = c10
    with pytest.raises(
        rdata.ChecksumError, match=r"test_batch.*official md5 is 40351d587109b95175f43aff81a1287e"
    ):
        rdata.load("cifar10", root)
    # The official-sum path: with the table holding these files' sums, the default call passes.
    release = cifar.RELEASES["cifar10"]
    monkeypatch.setitem(cifar.RELEASES, "cifar10", dataclasses.replace(release, md5=gen["md5"]))
    ds, _ = rdata.load("cifar10", root, limit=5)
    assert len(ds) == 5
    monkeypatch.undo()
    bad = {**gen["md5"], "test_batch": "0" * 32}
    with pytest.raises(rdata.ChecksumError, match="expected md5 is 0000"):
        rdata.load("cifar10", root, md5=bad)
    ds, _ = rdata.load("cifar10", root, verify=False, limit=3)
    assert torch.equal(ds.uint8(), torch.from_numpy(gen["test_images"][:3]))


def test_official_cifar_sums_are_the_published_ones():
    # Guards against an edit of the table; values as published with the release and listed by torchvision.
    assert cifar.RELEASES["cifar10"].archive_md5 == "c58f30108f718f92721af3b95e74349a"
    assert cifar.RELEASES["cifar100"].archive_md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert cifar.RELEASES["cifar100"].md5["test"] == "f0ef6b0ae62326f3e7ffdfab6717acfc"
    assert len(cifar.RELEASES["cifar10"].md5) == 7


def test_cifar10_tar_gz_reads_without_extracting(c10, tmp_path):
    root, gen = c10
    archive = tar_gz(root / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(
        rdata.ChecksumError, match=r"cifar-10-python.tar.gz.*c58f30108f718f92721af3b95e74349a"
    ):
        rdata.load("cifar10", tmp_path)
    from test_data_helpers import md5

    ds, _ = rdata.load("cifar10", tmp_path, md5={"cifar-10-python.tar.gz": md5(archive)})
    assert torch.equal(ds.uint8(), torch.from_numpy(gen["test_images"]))
    assert ds.labels.tolist() == gen["test_labels"].tolist()


def test_cifar100_uses_fine_labels(c100):
    root, gen = c100
    ds, spec = rdata.load("cifar100", root, md5=gen["md5"])
    assert spec.num_classes == 100 and spec.class_names[7] == "fine07" and spec.label == "CIFAR-100"
    assert ds.labels.tolist() == gen["test_labels"].tolist()
    assert torch.equal(ds.uint8(), torch.from_numpy(gen["test_images"]))
    assert ds.class_counts(100) == [100] * 100


def test_cifar_bad_input_names_file_and_layout(c10, tmp_path):
    with pytest.raises(rdata.DataLayoutError, match="cifar-10-batches-py"):
        rdata.load("cifar10", tmp_path)
    root, _ = c10
    broken = tmp_path / "cifar-10-batches-py"
    broken.mkdir()
    for f in (root / "cifar-10-batches-py").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "test_batch").write_bytes((root / "cifar-10-batches-py" / "test_batch").read_bytes()[:5000])
    with pytest.raises(rdata.CorruptFileError, match="test_batch"):
        rdata.load("cifar10", tmp_path, verify=False)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (broken / "test_batch").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(
        rdata.CorruptFileError, match=r"test_batch.*refusing to load global (__builtin__|builtins)\.print"
    ):
        rdata.load("cifar10", tmp_path, verify=False)
    (broken / "batches.meta").unlink()
    with pytest.raises(
        rdata.DataLayoutError, match=r"batches.meta is missing; expected ROOT/cifar-10-batches-py"
    ):
        rdata.load("cifar10", tmp_path, verify=False)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_files_come_back_exactly(tmp_path, gz):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (1000 * 10, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(10), 1000)
    sfx = ".gz" if gz else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", images, gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", labels, gz)
    ds, spec = rdata.load("fashion-mnist", tmp_path)
    assert spec.image_size == (1, 28, 28) and spec.class_names[9] == "Ankle boot"
    assert torch.equal(ds.uint8(), torch.from_numpy(images)[:, None])
    assert ds.labels.tolist() == labels.tolist()
    with pytest.raises(rdata.DataLayoutError, match="train-images-idx3-ubyte"):
        rdata.load("fashion-mnist", tmp_path, split="train")
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", labels[:-1], gz)
    with pytest.raises(rdata.CorruptFileError, match="t10k-labels"):
        rdata.load("fashion-mnist", tmp_path)
    raw = tmp_path / f"t10k-images-idx3-ubyte{sfx}"
    raw.write_bytes(raw.read_bytes()[:-100])
    with pytest.raises(rdata.CorruptFileError, match="t10k-images"):
        rdata.load("fashion-mnist", tmp_path)


def test_fashion_mnist_from_debian_package():
    root = "/usr/share/datasets/fashion-mnist"
    if not (rdata.dataset_info("fashion-mnist").default_root and __import__("os").path.isdir(root)):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    ds, spec = rdata.load("fashion-mnist")
    assert spec.n == 10000 and ds.class_counts(10) == [1000] * 10
    train, _ = rdata.load("fashion-mnist", split="train")
    x = train.uint8().double() / 255
    assert x.mean().item() == pytest.approx(spec.mean[0], abs=1e-6)
    assert x.std(unbiased=False).item() == pytest.approx(spec.std[0], abs=1e-6)


def _folder(tmp_path, sizes):
    rng = np.random.default_rng(2)
    truth = {}
    for cls, n in (("cats", 3), ("dogs", 2), ("emus", 2)):
        (tmp_path / cls).mkdir(parents=True)
        for i in range(n):
            w, h = sizes[(i + len(cls)) % len(sizes)]
            img = random_image(rng, w, h)
            path = tmp_path / cls / f"{i:03d}.png"
            img.save(path)
            truth[f"{cls}/{path.name}"] = img
    return truth


def test_imagefolder_exact_and_resize_crop(tmp_path):
    truth = _folder(tmp_path, [(40, 30), (30, 47), (33, 33)])
    with pytest.raises(RobustarchError, match="image_size"):
        rdata.load("imagefolder", tmp_path)
    with pytest.raises(rdata.DataLayoutError, match=r"cats/000.png is \d+x\d+ \(WxH\), expected 32x32"):
        rdata.load("imagefolder", tmp_path, image_size=32)[0].uint8()
    ds, spec = rdata.load("imagefolder", tmp_path, image_size=32, resize=36, label="pets")
    assert spec.class_names == ("cats", "dogs", "emus") and spec.label == "pets" and spec.num_classes == 3
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    names = sorted(truth)
    for i, name in enumerate(names):
        img = truth[name]
        w, h = img.size
        s = min(w, h)
        nw, nh = (36, int(36 * h / w)) if w <= h else (int(36 * w / h), 36)
        ref = img.resize((nw, nh), Image.BILINEAR) if (nw, nh) != (w, h) else img
        left, top = round((nw - 32) / 2), round((nh - 32) / 2)  # Python rounds half to even
        ref = np.asarray(ref.crop((left, top, left + 32, top + 32))).transpose(2, 0, 1)
        assert s > 0 and torch.equal(ds.uint8_item(i), torch.from_numpy(ref.copy())), name


def test_imagefolder_bad_files_are_errors_not_skipped(tmp_path):
    _folder(tmp_path, [(32, 32)])
    (tmp_path / "dogs" / "notes.txt").write_text("hi")
    with pytest.raises(rdata.DataLayoutError, match=r"notes\.txt"):
        rdata.load("imagefolder", tmp_path, image_size=32)
    (tmp_path / "dogs" / "notes.txt").unlink()
    (tmp_path / "dogs" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds, _ = rdata.load("imagefolder", tmp_path, image_size=32)
    with pytest.raises(rdata.CorruptFileError, match=r"dogs/001.png"):
        ds.uint8()
    with pytest.raises(rdata.CorruptFileError, match=r"dogs/001.png"):
        ds[4]


def _cifar10_jpeg_zip(tmp_path, per_class=3):
    rng = np.random.default_rng(3)
    zpath = tmp_path / "test.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as zf:
        for cls in rdata._spec.CIFAR10_CLASSES:
            for i in range(per_class):
                zf.writestr(f"test/{cls}/{i:04d}.jpg", encode(random_image(rng, 32, 32)))
    return zpath


def test_cifar10_jpeg_zip_and_extracted_folder_agree(tmp_path):
    zpath = _cifar10_jpeg_zip(tmp_path / "z" if (tmp_path / "z").mkdir() is None else tmp_path)
    with pytest.raises(rdata.ClassCountError, match="1000 examples of each"):
        rdata.load("cifar10-jpeg", zpath.parent)
    ds_zip, spec = rdata.load("cifar10-jpeg", zpath.parent, allow_partial=True)
    assert spec.label == "CIFAR-10 (JPEG q75)" and spec.name == "cifar10-jpeg"
    with zipfile.ZipFile(zpath) as zf:
        zf.extractall(tmp_path / "x")
    ds_dir, _ = rdata.load("cifar10-jpeg", tmp_path / "x", allow_partial=True)
    assert torch.equal(ds_zip.uint8(), ds_dir.uint8())
    assert ds_zip.labels.tolist() == ds_dir.labels.tolist() == np.repeat(np.arange(10), 3).tolist()
    with zipfile.ZipFile(zpath) as zf:
        ref = np.asarray(Image.open(zf.open("test/cat/0002.jpg")).convert("RGB")).transpose(2, 0, 1)
    assert torch.equal(ds_zip.uint8_item(3 * 3 + 2), torch.from_numpy(ref.copy()))
    (tmp_path / "x" / "test" / "cat").rename(tmp_path / "x" / "test" / "kitty")
    with pytest.raises(rdata.DataLayoutError, match=r"not the CIFAR-10 classes.*airplane automobile"):
        rdata.load("cifar10-jpeg", tmp_path / "x", allow_partial=True)


def test_subsets_first_balanced_ids_and_limit(c10, tmp_path):
    from robustarch.data.subsets import select

    root, gen = c10
    full, _ = rdata.load("cifar10", root, md5=gen["md5"])
    ds, desc = select(full, "first:50", 10)
    assert desc == "first:50" and ds.example_ids.tolist() == list(range(50))
    a, desc_a = select(full, "balanced:100:7", 10)
    b, _ = select(full, "balanced:100:7", 10)
    c, _ = select(full, "balanced:100:8", 10)
    assert desc_a == "balanced:100:7" and len(a) == 100
    assert a.example_ids.tolist() == b.example_ids.tolist() != c.example_ids.tolist()
    assert a.class_counts(10) == [10] * 10 and a.example_ids.tolist() == sorted(a.example_ids.tolist())
    assert torch.equal(a.uint8(), full.uint8()[a.example_ids])
    assert a.labels.tolist() == full.labels[a.example_ids].tolist()
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# chosen\n42\n7\n9999\n")
    d, spec_d = rdata.load("cifar10", root, md5=gen["md5"], subset=f"ids:{ids_file}", limit=2)
    assert d.example_ids.tolist() == [42, 7] and spec_d.subset.startswith("ids:ids.txt:3@")
    assert spec_d.subset.endswith("+first:2") and spec_d.n == 2
    assert torch.equal(d.uint8(), full.uint8()[[42, 7]])
    e, desc_e = select(full, [3, 1], 10)
    assert e.example_ids.tolist() == [3, 1] and desc_e.startswith("ids:2@")
    for bad, err in (
        ("balanced:15", "multiple of the 10"),
        ("first:0", "1..10000"),
        ("ids:/nonexistent", "exist"),
    ):
        with pytest.raises(RobustarchError, match=err):
            select(full, bad, 10)
    with pytest.raises(UnknownNameError, match="balanced"):
        select(full, "balance:10", 10)
    ids_file.write_text("10000\n")
    with pytest.raises(RobustarchError, match=r"not in this split, e.g. \[10000\]"):
        select(full, ids_file, 10)
    ids_file.write_text("5\n5\n")
    with pytest.raises(RobustarchError, match="twice"):
        select(full, ids_file, 10)


def test_dataloader_workers_and_pickling(tmp_path):
    zpath = _cifar10_jpeg_zip(tmp_path, per_class=2)
    ds, _ = rdata.load("cifar10-jpeg", zpath.parent, allow_partial=True)
    ds[0]  # opens the zip in this process; a worker must reopen it
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)
    x = torch.cat([b[0] for b in loader])
    assert torch.equal((x * 255).round().to(torch.uint8), ds.uint8())


def test_options_that_do_not_apply_are_errors(tmp_path):
    for kw in ({"label": "CIFAR-10"}, {"image_size": 32}, {"ground_truth": "x.csv"}, {"download": True}):
        with pytest.raises(RobustarchError, match=r"option\(s\) \w+ not applicable to cifar10-jpeg"):
            rdata.load("cifar10-jpeg", tmp_path, **kw)
    with pytest.raises(RobustarchError, match=r"md5 not applicable to fashion-mnist"):
        rdata.load("fashion-mnist", tmp_path, md5={})


def test_opt_in_download_fetches_and_checks_the_archive(c10, tmp_path, monkeypatch):
    """The download path on a local file:// URL (tests never touch the network)."""
    from test_data_helpers import md5

    root, gen = c10
    archive = tar_gz(root / "cifar-10-batches-py", tmp_path / "served.tar.gz")
    release = cifar.RELEASES["cifar10"]
    fake = dataclasses.replace(release, url=archive.as_uri(), archive_md5=md5(archive))
    monkeypatch.setitem(cifar.RELEASES, "cifar10", fake)
    target = tmp_path / "fresh"
    with pytest.raises(rdata.DataLayoutError, match="download=True"):
        rdata.load("cifar10", target)
    ds, _ = rdata.load("cifar10", target, download=True)
    assert (target / "cifar-10-python.tar.gz").is_file()
    assert torch.equal(ds.uint8(), torch.from_numpy(gen["test_images"]))
    monkeypatch.setitem(cifar.RELEASES, "cifar10", dataclasses.replace(fake, archive_md5="1" * 32))
    with pytest.raises(rdata.ChecksumError, match="official md5 is 1111"):
        rdata.load("cifar10", tmp_path / "other", download=True)
    assert not (tmp_path / "other" / "cifar-10-python.tar.gz").exists()
