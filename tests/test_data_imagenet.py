"""ImageNet val in the class-folder layout and the flat layout with each accepted ground-truth file; the
evaluation transform (resize 256 -> center crop 224) against a direct PIL computation."""

from __future__ import annotations

import csv
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import robustarch.data as rdata
from robustarch.data._images import center_crop, resize_shorter
from robustarch.data.folders import IMAGENET_PREPROCESS, imagenet_wnids
from test_data_helpers import random_image

N_CLASSES = 1000


def direct_pil(img: Image.Image) -> np.ndarray:
    """Resize(256) + CenterCrop(224) written out: short side 256, long side floor(256 * long / short),
    bilinear, crop offsets rounded half to even."""
    img = img.convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = 256, math.floor(256 * h / w)
    else:
        nw, nh = math.floor(256 * w / h), 256
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample=Image.Resampling.BILINEAR)
    left, top = round((nw - 224) / 2), round((nh - 224) / 2)
    return np.asarray(img.crop((left, top, left + 224, top + 224))).transpose(2, 0, 1)


@pytest.mark.parametrize(
    "size",
    [
        (500, 375),
        (375, 500),
        (256, 256),
        (300, 257),
        (1024, 256),
        (200, 100),
        (257, 999),
        (224, 224),
        (333, 333),
    ],
)
def test_eval_transform_equals_direct_pil(size):
    rng = np.random.default_rng(size[0] * 7 + size[1])
    img = random_image(rng, *size)
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    out = IMAGENET_PREPROCESS(buf.getvalue(), "x.png")
    assert out.shape == (3, 224, 224) and out.dtype == np.uint8
    assert np.array_equal(out, direct_pil(img))


def test_transform_rounding_pinned():
    # 500x375 -> 341x256 (256*500/375 = 341.33 truncated), crop left = round(58.5) = 58 (half to even)
    img = Image.new("RGB", (500, 375))
    assert resize_shorter(img, 256).size == (341, 256)
    assert resize_shorter(Image.new("RGB", (375, 500)), 256).size == (256, 341)
    marked = Image.new("L", (341, 256))
    marked.putpixel((58, 16), 255)
    assert center_crop(marked, 224, 224).getpixel((0, 0)) == 255
    small = center_crop(Image.new("L", (3, 2), 9), 5, 6)  # pads with zeros like torchvision, image centred
    assert (
        small.size == (6, 5) and np.asarray(small)[1:3, 1:4].min() == 9 and np.asarray(small).sum() == 9 * 6
    )


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """1000 classes with one val image each; wnids and val numbers shuffled so order is really tested."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(5)
    wnids = [str(w) for w in rng.permutation(imagenet_wnids())]  # the real 1000, unsorted
    val_numbers = rng.permutation(N_CLASSES) + 1
    sizes = [(40, 30), (30, 41), (64, 64), (50, 33)]
    records = []
    for k, (wnid, number) in enumerate(zip(wnids, val_numbers, strict=True)):
        name = f"ILSVRC2012_val_{number:08d}.JPEG"
        (root / "val" / wnid).mkdir(parents=True)
        random_image(rng, *sizes[k % 4]).save(root / "val" / wnid / name, "JPEG", quality=90)
        records.append((int(number), wnid, name))
    flat = root / "flat"
    flat.mkdir()
    for _, wnid, name in records:
        shutil.copy(root / "val" / wnid / name, flat / name)
    return root, sorted(wnids), records


def test_class_folder_layout(imagenet):
    root, sorted_wnids, records = imagenet
    with pytest.raises(rdata.ClassCountError, match="50 examples of each of its 1000 classes"):
        rdata.load("imagenet", root)
    ds, spec = rdata.load("imagenet", root, split="test", allow_partial=True)
    assert (spec.split, spec.n, spec.num_classes, spec.image_size, spec.label) == (
        "val",
        1000,
        1000,
        (3, 224, 224),
        "ImageNet",
    )
    assert spec.preprocessing == "pil-decode-rgb+resize-shorter-256-bilinear+center-crop-224x224"
    assert list(spec.class_names) == sorted_wnids  # no synset-name file: names are the wnids
    by_id = {number - 1: (sorted_wnids.index(wnid), wnid, name) for number, wnid, name in records}
    assert sorted(ds.example_ids.tolist()) == list(range(1000))
    for i in (0, 1, 2, 500, 999):
        eid = int(ds.example_ids[i])
        label, wnid, name = by_id[eid]
        assert int(ds.labels[i]) == label
        ref = direct_pil(Image.open(root / "val" / wnid / name))
        assert torch.equal(ds.uint8_item(i), torch.from_numpy(ref.copy()))


def _by_example(ds):
    return {int(e): int(lab) for e, lab in zip(ds.example_ids, ds.labels, strict=True)}


def test_flat_layout_with_kaggle_csv_matches_class_folders(imagenet, tmp_path):
    root, _, records = imagenet
    folders, _ = rdata.load("imagenet", root, allow_partial=True)
    gt = root / "flat" / "LOC_val_solution.csv"
    with open(gt, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "PredictionString"])
        for number, wnid, _ in records:
            w.writerow([f"ILSVRC2012_val_{number:08d}", f"{wnid} 1 2 30 40 {wnid} 5 6 7 8"])
    names = root / "flat" / "LOC_synset_mapping.txt"  # Kaggle's wnid -> names file, beside the images
    names.write_text("".join(f"{w} name{k}, other\n" for k, w in enumerate(sorted({r[1] for r in records}))))
    try:
        flat, spec = rdata.load("imagenet", root / "flat", allow_partial=True)
    finally:
        gt.unlink()
        names.unlink()
    assert spec.class_names[:2] == ("name0", "name1")
    assert flat.example_ids.tolist() == list(range(1000))  # sorted by val number
    assert _by_example(flat) == _by_example(folders)
    i_f, i_c = 123, folders.example_ids.tolist().index(123)
    assert torch.equal(flat.uint8_item(i_f), folders.uint8_item(i_c))


def test_flat_layout_with_devkit_ground_truth_and_meta_mat(imagenet, tmp_path):
    sio = pytest.importorskip("scipy.io")
    root, sorted_wnids, records = imagenet
    folders, _ = rdata.load("imagenet", root, allow_partial=True)
    rng = np.random.default_rng(9)
    ilsvrc_id = {w: int(i) + 1 for w, i in zip(sorted_wnids, rng.permutation(N_CLASSES), strict=True)}
    fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ]
    synsets = np.zeros((N_CLASSES + 2,), dtype=[(f, "O") for f in fields])
    for k, w in enumerate(sorted_wnids):
        synsets[k] = (ilsvrc_id[w], w, f"thing {k}, other name", "gloss", 0, np.zeros(0), 0, 1300)
    synsets[N_CLASSES] = (1001, "n99999991", "inner node", "g", 2, np.array([1, 2]), 1, 0)
    synsets[N_CLASSES + 1] = (1002, "n99999992", "inner node", "g", 3, np.array([3, 4, 5]), 2, 0)
    devkit = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    sio.savemat(devkit / "meta.mat", {"synsets": synsets})
    by_number = {number: wnid for number, wnid, _ in records}
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{ilsvrc_id[by_number[n]]}\n" for n in range(1, N_CLASSES + 1))
    )
    flat, spec = rdata.load(
        "imagenet",
        root / "flat",
        allow_partial=True,
        ground_truth=devkit / "ILSVRC2012_validation_ground_truth.txt",
    )
    assert _by_example(flat) == _by_example(folders)
    assert spec.class_names[0] == "thing 0"


def test_flat_layout_with_pairs_file_and_missing_ground_truth(imagenet, tmp_path):
    root, _, records = imagenet
    with pytest.raises(rdata.DataLayoutError, match=r"no ground-truth file.*LOC_val_solution\.csv"):
        rdata.load("imagenet", root / "flat", allow_partial=True)
    pairs = tmp_path / "labels.txt"
    pairs.write_text("".join(f"ILSVRC2012_val_{n:08d}.JPEG {w}\n" for n, w, _ in records[:-1]))
    with pytest.raises(rdata.DataLayoutError, match="no label for 1 image"):
        rdata.load("imagenet", root / "flat", allow_partial=True, ground_truth=pairs)


def test_shipped_wnids_are_torchvisions_class_order():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 == len(set(wnids)) and list(wnids) == sorted(wnids)
    assert (wnids[0], wnids[1], wnids[999]) == ("n01440764", "n01443537", "n15075141")


IMAGENETTE = ("n01440764", "n02102040", "n03000684")  # tench, English springer, chain saw (Imagenette's)


def test_a_class_subset_keeps_the_1000_class_labels(tmp_path):
    """An Imagenette-style tree (a few of the 1000 class folders, file names not val names) loads with
    labels = the classes' indices among the 1000, and evaluates with a 1000-way model."""
    rng = np.random.default_rng(1)
    for w in IMAGENETTE:
        (tmp_path / "val" / w).mkdir(parents=True)
        for k in range(2):
            random_image(rng, 48, 40).save(tmp_path / "val" / w / f"{w}_{k}.JPEG", "JPEG")
    ds, spec = rdata.load("imagenet", tmp_path)
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    assert sorted(set(ds.labels.tolist())) == sorted(index[w] for w in IMAGENETTE) == [0, 217, 491]
    assert spec.num_classes == 1000 and spec.label == "ImageNet (3-class subset)"
    assert spec.classes.startswith("3-of-1000@")
    source = rdata.load_source("imagenet", tmp_path)
    assert source.subset.startswith("val/classes:3-of-1000@")  # another subset is another example list
    import robustarch

    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1000))
    res = robustarch.evaluate(net, source, attacks=["fgsm"], checks=False)
    assert res.records()[1]["eps"] == pytest.approx(4 / 255) and res.records()[0]["n"] == 6
    (tmp_path / "val" / "n99999999").mkdir()
    random_image(rng, 20, 20).save(tmp_path / "val" / "n99999999" / "x.JPEG", "JPEG")
    with pytest.raises(rdata.DataLayoutError, match=r"\['n99999999'\] are not ImageNet-1k wnids"):
        rdata.load("imagenet", tmp_path)


def test_imagenet_bad_layouts(tmp_path):
    rng = np.random.default_rng(0)
    for w in IMAGENETTE:
        (tmp_path / "val" / w).mkdir(parents=True)
        random_image(rng, 20, 20).save(tmp_path / "val" / w / "ILSVRC2012_val_00000001.JPEG", "JPEG")
    (tmp_path / "val" / "misc").mkdir()
    with pytest.raises(rdata.DataLayoutError, match=r"mixes class folders with \['misc'\]"):
        rdata.load("imagenet", tmp_path)
    with pytest.raises(rdata.DataLayoutError, match=r"ROOT/val/<wnid>/\*.JPEG"):
        rdata.load("imagenet", tmp_path / "nothing-here")


def test_robustbench_style_id_list_selects_val_images(imagenet, tmp_path):
    root, _, records = imagenet
    chosen = records[10:15]
    ids = tmp_path / "imagenet_subset.txt"
    ids.write_text("".join(f"{w}/{name}\n" for _, w, name in chosen))
    ds, spec = rdata.load("imagenet", root, allow_partial=True, subset=ids)
    assert ds.example_ids.tolist() == [n - 1 for n, _, _ in chosen]
    assert spec.subset.startswith("ids:imagenet_subset.txt:5@") and spec.n == 5


def test_corrupt_jpeg_names_the_file(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    random_image(rng, 40, 40).save(tmp_path / "a" / "good.jpg", "JPEG")
    data = (tmp_path / "a" / "good.jpg").read_bytes()
    (tmp_path / "a" / "bad.jpg").write_bytes(data[: len(data) // 2])
    ds, _ = rdata.load("imagefolder", tmp_path, image_size=32, resize=32)
    with pytest.raises(rdata.CorruptFileError, match=r"a/bad\.jpg"):
        ds.uint8()
