"""Image-folder datasets: the CIFAR-10 JPEG copy, ImageNet (class folders or flat + ground truth), user data.

Class-folder trees are indexed like torchvision's ``ImageFolder``: classes are the sorted folder names and
examples are sorted by (class, relative path), so example ids equal ``ImageFolder`` indices. The exception is
ImageNet val, whose example id is the number in the file name minus one (``ILSVRC2012_val_00000293.JPEG`` ->
292) in both layouts, so ids (and RobustBench-style id lists) do not depend on how a copy is laid out.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import os
import re
import tarfile
import zipfile
from importlib import resources
from pathlib import Path, PurePosixPath

import numpy as np

from robustarch.data._dataset import EncodedImages, ImageDataset
from robustarch.data._files import file_fingerprint
from robustarch.data._images import IMAGE_EXTENSIONS, Preprocess
from robustarch.data._spec import CIFAR10_CLASSES
from robustarch.data.errors import CorruptFileError, DataLayoutError

log = logging.getLogger(__name__)

WNID_RE = re.compile(r"n\d{8}")
VAL_NAME_RE = re.compile(r"ILSVRC2012_val_(\d{8})(\.[A-Za-z]+)?")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _check_names(rel_paths: list[str], where: str, layout: str) -> list[str]:
    """Image files among ``rel_paths``; hidden files are ignored (logged), anything else is an error."""
    # a component starting with "." (not "." itself) is hidden; split, not PurePosixPath: 5x faster on
    # CIFAR-10's 10,000 names
    hidden = [p for p in rel_paths if any(s.startswith(".") and s != "." for s in p.split("/"))]
    if hidden:
        log.warning("ignoring %d hidden file(s) under %s, e.g. %s", len(hidden), where, hidden[0])
    skip = set(hidden)
    rest = [p for p in rel_paths if p not in skip]
    odd = [p for p in rest if not _is_image(p)]
    if odd:
        raise DataLayoutError(f"{len(odd)} non-image file(s) under {where}, e.g. {odd[:3]}; {layout}")
    return rest


def _walk(folder: Path) -> list[str]:
    """Relative POSIX paths of every file under ``folder`` (following links, as ImageFolder does)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        rel = Path(dirpath).relative_to(folder)
        out.extend((rel / f).as_posix() for f in filenames)
    return sorted(out)


def index_class_tree(files: list[str], where: str, layout: str) -> tuple[list[str], list[str], list[int]]:
    """(classes, relative paths, labels) from paths ``class/.../file``, sorted like ImageFolder."""
    top = [f for f in files if "/" not in f and not f.startswith(".")]
    if top:
        raise DataLayoutError(f"files directly in {where} (not in a class folder), e.g. {top[:3]}; {layout}")
    files = _check_names([f for f in files if "/" in f], where, layout)
    classes = sorted({f.split("/", 1)[0] for f in files})
    if not classes:
        raise DataLayoutError(f"no class folders with images in {where}; {layout}")
    index = {c: i for i, c in enumerate(classes)}
    items = sorted(files, key=lambda f: (index[f.split("/", 1)[0]], f))
    return classes, items, [index[f.split("/", 1)[0]] for f in items]


# --------------------------------------------------------------------------------------------- cifar10-jpeg

CIFAR10_JPEG_LAYOUT = (
    "expected ROOT/{split}.zip holding {split}/<class>/<NNNN>.jpg, or the extracted folder "
    "ROOT/{split}/<class>/<NNNN>.jpg, with the 10 CIFAR-10 classes " + " ".join(CIFAR10_CLASSES)
)


def load_cifar10_jpeg(root: Path, split: str) -> tuple[ImageDataset, str]:
    layout = CIFAR10_JPEG_LAYOUT.format(split=split)
    preprocess = Preprocess(3, 32, 32)
    zip_path = root if root.is_file() else root / f"{split}.zip"
    folder = root / split
    if folder.is_dir():
        files = _walk(folder)
        classes, items, labels = index_class_tree(files, str(folder), layout)
        source = EncodedImages(items, preprocess, base=folder)
        fingerprint = _tree_fingerprint(folder, items)
    elif zip_path.is_file():
        try:
            zf = zipfile.ZipFile(zip_path)  # kept open: the images are read from it
        except (zipfile.BadZipFile, OSError) as err:
            raise CorruptFileError(f"cannot open zip {zip_path}: {err}") from err
        prefix = f"{split}/"
        try:
            members = [n for n in zf.namelist() if not n.endswith("/")]
            outside = [m for m in members if not m.startswith(prefix)]
            if outside:
                raise DataLayoutError(f"{zip_path} holds {outside[:3]} outside {prefix}; {layout}")
            inside = [m[len(prefix) :] for m in members]
            classes, rel, labels = index_class_tree(inside, str(zip_path), layout)
        except DataLayoutError:
            zf.close()
            raise
        items = [prefix + r for r in rel]
        source = EncodedImages(items, preprocess, zip_path=zip_path, opened=zf)
        fingerprint = file_fingerprint(zip_path)
    else:
        raise DataLayoutError(f"neither {zip_path} nor {folder} exists; {layout}")
    if tuple(classes) != CIFAR10_CLASSES:
        raise DataLayoutError(f"class folders {classes} are not the CIFAR-10 classes; {layout}")
    ds = ImageDataset(labels, np.arange(len(labels)), preprocess.image_size, source=source)
    return ds, fingerprint


def _tree_fingerprint(folder: Path, items: list[str]) -> str:
    # Path + count + total size + newest mtime: changes whenever a file is added, removed, or rewritten.
    size = mtime = 0
    for item in items:
        st = (folder / item).stat()
        size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
    return f"{folder.resolve()}:{len(items)}:{size}:{mtime}"


# --------------------------------------------------------------------------------------------- imagefolder

IMAGEFOLDER_LAYOUT = "expected ROOT/<class>/<image> (or ROOT/<split>/<class>/<image>), one folder per class"


def load_imagefolder(root: Path, split: str, preprocess: Preprocess) -> tuple[ImageDataset, list[str], str]:
    folder = root / split if (root / split).is_dir() else root
    if not folder.is_dir():
        raise DataLayoutError(f"{folder} is not a folder; {IMAGEFOLDER_LAYOUT}")
    classes, items, labels = index_class_tree(_walk(folder), str(folder), IMAGEFOLDER_LAYOUT)
    source = EncodedImages(items, preprocess, base=folder)
    ds = ImageDataset(labels, np.arange(len(labels)), preprocess.image_size, source=source)
    return ds, classes, _tree_fingerprint(folder, items)


# --------------------------------------------------------------------------------------------- imagenet

IMAGENET_PREPROCESS = Preprocess(3, 224, 224, resize=256, crop=True)
IMAGENET_LAYOUT = (
    "expected the validation images either in class folders, ROOT/val/<wnid>/*.JPEG (1000 folders n01440764 "
    "... n15075141, as torchvision's ImageNet/ImageFolder read them), or flat, ROOT/val/ILSVRC2012_val_"
    "00000001.JPEG ... with a ground-truth file: LOC_val_solution.csv (Kaggle), or the devkit's "
    "ILSVRC2012_validation_ground_truth.txt with its meta.mat (or ILSVRC2012_devkit_t12.tar.gz), or "
    "ground_truth=FILE with lines '<file name> <wnid>'"
)
GT_CSV, GT_TXT, DEVKIT_TGZ = (
    "LOC_val_solution.csv",
    "ILSVRC2012_validation_ground_truth.txt",
    "ILSVRC2012_devkit_t12.tar.gz",
)
SYNSET_NAME_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order (``imagenet_wnids.txt``, shipped with robustarch)."""
    text = resources.files("robustarch.data").joinpath("imagenet_wnids.txt").read_text()
    wnids = tuple(w for w in (line.strip() for line in text.splitlines()) if w and not w.startswith("#"))
    if len(wnids) != 1000 or list(wnids) != sorted(set(wnids)):
        raise RuntimeError("imagenet_wnids.txt must list 1000 distinct wnids in sorted order")
    return wnids


def _imagenet_labels(classes: list[str], labels: list[int], where: str) -> list[int]:
    """Labels re-expressed as indices among the 1000 ImageNet wnids, so that a folder holding a subset of the
    classes (Imagenette, ImageNet-100) is evaluated with the 1000-way models; a folder that is not an
    ImageNet-1k wnid is an error naming it."""
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise DataLayoutError(
            f"{where}: class folder(s) {unknown[:5]} are not ImageNet-1k wnids (the 1000 ILSVRC2012 classes, "
            f"n01440764 ... n15075141); {len(unknown)} of {len(classes)} folders are unknown"
        )
    if len(classes) < 1000:
        log.info(
            "%s holds %d of the 1000 ImageNet classes (e.g. %s): labels are their indices among the 1000",
            where, len(classes), ", ".join(classes[:3]),
        )  # fmt: skip
    return [index[classes[label]] for label in labels]


def _val_id(name: str) -> int | None:
    m = VAL_NAME_RE.fullmatch(PurePosixPath(name).name)
    return int(m.group(1)) - 1 if m else None


def _parse_meta_mat(data: bytes, name: str) -> tuple[dict[int, str], dict[str, str]]:
    """ILSVRC2012_ID -> wnid and wnid -> words of the 1000 leaf synsets in the devkit's meta.mat."""
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise DataLayoutError(
            f"reading {name} needs scipy (pip install scipy), or use LOC_val_solution.csv "
            "or the class-folder layout"
        ) from err
    try:
        synsets = loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
        leaves = [s for s in synsets if int(s["num_children"]) == 0]
        ids = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}
        words = {str(s["WNID"]): str(s["words"]).split(",")[0].strip() for s in leaves}
    except Exception as err:  # any parse failure means it is not the devkit's meta.mat
        raise CorruptFileError(f"cannot read the synsets of {name}: {type(err).__name__}: {err}") from err
    return ids, words


def _read_ground_truth(
    candidates: list[Path], explicit: Path | None
) -> tuple[dict[int, str], dict[str, str], str]:
    """val id -> wnid, wnid -> human name (may be empty), and the file it came from."""
    if explicit is not None:
        if not explicit.is_file():
            raise DataLayoutError(f"ground-truth file {explicit} does not exist; {IMAGENET_LAYOUT}")
        if explicit.name.endswith(".csv"):
            return _read_loc_csv(explicit), {}, str(explicit)
        if explicit.name == GT_TXT:
            return _read_devkit_txt(explicit, [*candidates, explicit.parent])
        return _read_pairs(explicit), {}, str(explicit)
    for folder in candidates:
        if (folder / GT_CSV).is_file():
            return _read_loc_csv(folder / GT_CSV), {}, str(folder / GT_CSV)
    for folder in candidates:
        for path in (folder / GT_TXT, folder / "ILSVRC2012_devkit_t12" / "data" / GT_TXT):
            if path.is_file():
                return _read_devkit_txt(path, candidates)
        if (folder / DEVKIT_TGZ).is_file():
            return _read_devkit_tgz(folder / DEVKIT_TGZ)
    raise DataLayoutError(
        f"flat ImageNet val images but no ground-truth file in {[str(c) for c in candidates]}; "
        f"{IMAGENET_LAYOUT}"
    )


def _read_loc_csv(path: Path) -> dict[int, str]:
    out = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise CorruptFileError(
                f"{path}: expected the columns ImageId,PredictionString of LOC_val_solution.csv"
            )
        for row in reader:
            vid, tokens = _val_id(row["ImageId"]), (row["PredictionString"] or "").split()
            if vid is None or not tokens or not WNID_RE.fullmatch(tokens[0]):
                raise CorruptFileError(f"{path}: bad row {row}")
            out[vid] = tokens[0]
    return out


def _read_pairs(path: Path) -> dict[int, str]:
    out = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        vid = _val_id(parts[0]) if parts else None
        if len(parts) != 2 or vid is None or not WNID_RE.fullmatch(parts[1]):
            raise CorruptFileError(
                f"{path}:{lineno}: expected '<ILSVRC2012_val_NNNNNNNN.JPEG> <wnid>', got {line!r}"
            )
        out[vid] = parts[1]
    return out


def _devkit_ids(text: str, name: str) -> list[int]:
    try:
        return [int(t) for t in text.split()]
    except ValueError as err:
        raise CorruptFileError(f"{name}: expected one ILSVRC2012_ID (1..1000) per line: {err}") from err


def _read_devkit_txt(path: Path, candidates: list[Path]) -> tuple[dict[int, str], dict[str, str], str]:
    metas = [
        path.parent / "meta.mat",
        *(c / "meta.mat" for c in candidates),
        *(c / "ILSVRC2012_devkit_t12" / "data" / "meta.mat" for c in candidates),
    ]
    meta = next((m for m in metas if m.is_file()), None)
    if meta is None:
        raise DataLayoutError(
            f"{path} numbers classes by ILSVRC2012_ID; the devkit's meta.mat that maps them to "
            f"wnids must lie beside it (looked in {sorted({str(m.parent) for m in metas})})"
        )
    ids, words = _parse_meta_mat(meta.read_bytes(), str(meta))
    return _map_devkit(_devkit_ids(path.read_text(), str(path)), ids, str(path)), words, str(path)


def _read_devkit_tgz(path: Path) -> tuple[dict[int, str], dict[str, str], str]:
    try:
        with tarfile.open(path, "r:gz") as tar:
            gt = tar.extractfile(f"ILSVRC2012_devkit_t12/data/{GT_TXT}").read().decode()
            meta = tar.extractfile("ILSVRC2012_devkit_t12/data/meta.mat").read()
    except (KeyError, AttributeError, tarfile.TarError, OSError, EOFError) as err:
        raise CorruptFileError(f"{path} is not the ILSVRC2012 devkit archive: {err}") from err
    ids, words = _parse_meta_mat(meta, f"{path}:meta.mat")
    return _map_devkit(_devkit_ids(gt, str(path)), ids, str(path)), words, str(path)


def _map_devkit(class_ids: list[int], ids: dict[int, str], name: str) -> dict[int, str]:
    bad = sorted({c for c in class_ids if c not in ids})
    if bad:
        raise CorruptFileError(f"{name}: ILSVRC2012_IDs {bad[:5]} are not leaf synsets of meta.mat")
    return {i: ids[c] for i, c in enumerate(class_ids)}


def _synset_names(folders: list[Path]) -> dict[str, str]:
    for folder in folders:
        for fname in SYNSET_NAME_FILES:
            path = folder / fname
            if path.is_file():
                out = {}
                for line in path.read_text().splitlines():
                    wnid, _, words = line.strip().partition(" ")
                    if WNID_RE.fullmatch(wnid):
                        out[wnid] = words.split(",")[0].strip() or wnid
                return out
    return {}


def load_imagenet(
    root: Path, split: str, *, ground_truth: Path | None = None, preprocess: Preprocess = IMAGENET_PREPROCESS
) -> tuple[ImageDataset, list[str], list[str], str]:
    """(dataset, the wnids present, the 1000 class names, fingerprint) of an ImageNet split. Labels are
    indices among the 1000 ImageNet-1k wnids (:func:`imagenet_wnids`), also for a subset of the classes."""
    folder = root / split if (root / split).is_dir() else root
    if not folder.is_dir():
        raise DataLayoutError(f"{folder} is not a folder; {IMAGENET_LAYOUT}")
    entries = sorted(os.listdir(folder))
    wnid_dirs = [e for e in entries if WNID_RE.fullmatch(e) and (folder / e).is_dir()]
    flat = [e for e in entries if (folder / e).is_file()]  # hidden ones are logged by _check_names
    other_dirs = [
        e for e in entries if (folder / e).is_dir() and e not in wnid_dirs and not e.startswith(".")
    ]
    names: dict[str, str] = {}
    if not wnid_dirs and not any(_val_id(f) is not None for f in flat):
        looked = f"{root / split} nor {root}" if folder == root else str(folder)
        raise DataLayoutError(f"neither {looked} holds ImageNet images; {IMAGENET_LAYOUT}")
    if wnid_dirs:
        if other_dirs or [f for f in flat if _is_image(f) and not f.startswith(".")]:
            raise DataLayoutError(
                f"{folder} mixes class folders with {(other_dirs + flat)[:3]}; {IMAGENET_LAYOUT}"
            )
        classes, items, labels = index_class_tree(_walk(folder), str(folder), IMAGENET_LAYOUT)
        val_ids = [_val_id(i) for i in items]
        ids = (
            val_ids
            if split == "val" and None not in val_ids and len(set(val_ids)) == len(val_ids)
            else list(range(len(items)))
        )
        gt_source = "class folders"
    elif flat:
        if other_dirs:
            raise DataLayoutError(
                f"{folder} holds folders {other_dirs[:3]} that are not wnids; {IMAGENET_LAYOUT}"
            )
        # the ground-truth / synset files often sit beside the images: they are not stray files
        meta = {GT_CSV, GT_TXT, "meta.mat", DEVKIT_TGZ, *SYNSET_NAME_FILES}
        if ground_truth is not None:
            meta.add(ground_truth.name)
        files = _check_names([f for f in flat if f not in meta], str(folder), IMAGENET_LAYOUT)
        bad = [f for f in files if _val_id(f) is None]
        if bad:
            raise DataLayoutError(
                f"flat layout, but {bad[:3]} are not named ILSVRC2012_val_NNNNNNNN.JPEG; {IMAGENET_LAYOUT}"
            )
        gt, names, gt_source = _read_ground_truth([folder, root, root.parent], ground_truth)
        classes = sorted(set(gt.values()))
        index = {c: i for i, c in enumerate(classes)}
        items = sorted(files, key=_val_id)
        ids = [_val_id(f) for f in items]
        missing = [f for f, i in zip(items, ids, strict=True) if i not in gt]
        if missing:
            raise DataLayoutError(f"{gt_source} has no label for {len(missing)} image(s), e.g. {missing[:3]}")
        labels = [index[gt[i]] for i in ids]
    else:
        raise DataLayoutError(f"{folder} holds no images; {IMAGENET_LAYOUT}")
    bad_wnids = [c for c in classes if not WNID_RE.fullmatch(c)]
    if bad_wnids:
        raise DataLayoutError(f"class folders {bad_wnids[:3]} are not wnids (nXXXXXXXX); {IMAGENET_LAYOUT}")
    labels = _imagenet_labels(classes, labels, f"{folder} ({gt_source})")
    names = names or _synset_names([folder, root, root.parent])
    class_names = [names.get(c, c) for c in imagenet_wnids()]
    source = EncodedImages(items, preprocess, base=folder)
    ds = ImageDataset(labels, ids, preprocess.image_size, source=source)
    gt_print = file_fingerprint(Path(gt_source)) if Path(gt_source).is_file() else gt_source
    return ds, classes, class_names, f"{_tree_fingerprint(folder, items)};gt={gt_print}"
