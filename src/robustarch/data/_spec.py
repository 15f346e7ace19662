"""The one dataset table: what robustarch knows about each dataset before reading it (ids, report labels,
family, shapes, normalization statistics, class names, published counts and the standard attack budget).

The zoo builds its networks from it (``family`` picks the CIFAR- or ImageNet-style entries), the attack
presets take their budget from it, and ``robustarch data list`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from robustarch.errors import UnknownNameError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# Channel statistics of the training splits (informational: every model carries its own normalization).
# CIFAR values are the ones the DARTS code base (Liu et al., ICLR 2019) normalizes with.
CIFAR10_MEAN, CIFAR10_STD = (0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN, CIFAR100_STD = (0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Computed from the 60,000 training images of Debian's dataset-fashion-mnist (a test recomputes them).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.28604060,), (0.35302424,)


# The L-inf budgets the field reports robustness at (RobustBench's leaderboards: 8/255 on CIFAR-10/100,
# 4/255 on ImageNet); every CIFAR-like dataset (32x32 or smaller) takes CIFAR's.
BUDGET_LINF = {"cifar": 8 / 255, "imagenet": 4 / 255}


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts of a dataset id: how reports name it, its family and shape, and its published split
    sizes. ``family`` says which zoo entries build for it (``cifar``: the 32x32 networks, ``imagenet``: the
    224x224 ones; ``None``: given by the files, as for an image folder)."""

    name: str
    label: str
    num_classes: int | None  # None: read from the files (imagefolder)
    image_size: tuple[int, int, int] | None  # (C, H, W) of the preprocessed tensors
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    family: str | None = None
    # split -> examples per class of the published split (None: sizes vary, e.g. ImageNet train)
    per_class: dict[str, int | None] = field(default_factory=dict)
    class_names: tuple[str, ...] | None = None
    default_root: str | None = None
    split_aliases: dict[str, str] = field(default_factory=dict)

    @property
    def budget(self) -> float | None:
        """The standard L-inf budget on this dataset (``BUDGET_LINF`` of its family)."""
        return BUDGET_LINF.get(self.family) if self.family else None

    def canonical_split(self, split: str) -> str:
        split = self.split_aliases.get(split, split)
        if self.per_class and split not in self.per_class:
            raise UnknownNameError(f"split of {self.name}", split, [*self.per_class, *self.split_aliases])
        return split


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("cifar10", "CIFAR-10", 10, (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, "cifar",
                    {"train": 5000, "test": 1000}, CIFAR10_CLASSES),
        DatasetInfo("cifar100", "CIFAR-100", 100, (3, 32, 32), CIFAR100_MEAN, CIFAR100_STD, "cifar",
                    {"train": 500, "test": 100}),
        DatasetInfo("cifar10-jpeg", "CIFAR-10 (JPEG q75)", 10, (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD,
                    "cifar", {"train": 5000, "test": 1000}, CIFAR10_CLASSES),
        DatasetInfo("fashion-mnist", "Fashion-MNIST", 10, (1, 28, 28), FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                    "cifar", {"train": 6000, "test": 1000}, FASHION_MNIST_CLASSES,
                    default_root="/usr/share/datasets/fashion-mnist"),
        # ImageNet's test labels are not public: evaluation means the validation split, so "test" -> "val".
        DatasetInfo("imagenet", "ImageNet", 1000, (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, "imagenet",
                    {"val": 50, "train": None}, split_aliases={"test": "val", "validation": "val"}),
        DatasetInfo("imagefolder", "image folder", None, None, None, None),
    )
}  # fmt: skip
DATASET_INFO = DATASETS  # the name this table had before it also carried family and budget


def dataset_info(dataset: str) -> DatasetInfo:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise UnknownNameError("dataset", dataset, DATASETS) from None


def list_datasets() -> list[str]:
    return list(DATASETS)


# The dataset of the table whose standard budget and eps sweep apply to data of a family.
REPRESENTATIVE = {"cifar": "cifar10", "imagenet": "imagenet"}


def family_of_size(height: int, width: int) -> str:
    """The family data of this image size belong to, for data not in the table (given in Python, image
    folders): ``cifar`` up to 64 x 64 pixels (CIFAR, Fashion-MNIST, SVHN, Tiny-ImageNet), else
    ``imagenet``; it decides the standard budget (8/255 or 4/255)."""
    return "cifar" if max(height, width) <= 64 else "imagenet"


def budget_dataset(dataset: str, image_size: tuple[int, ...] | None = None) -> str:
    """The dataset id whose standard attack configuration applies: ``dataset`` itself where the table gives
    it a family, else the representative of the family of ``image_size`` ((C,) H, W)."""
    info = DATASETS.get(dataset)
    if info is not None and info.family is not None:
        return dataset
    if image_size is None:
        raise UnknownNameError("dataset (or give the images' size)", dataset, DATASETS)
    return REPRESENTATIVE[family_of_size(int(image_size[-2]), int(image_size[-1]))]


@dataclass(frozen=True)
class DatasetSpec:
    """A loaded dataset as reports and caches see it.

    ``label`` is how results are named (e.g. "CIFAR-10 (JPEG q75)", never "CIFAR-10" for that copy);
    ``mean``/``std`` are the dataset's channel statistics (informational, ``None`` when unknown);
    ``preprocessing`` identifies the decode/resize/crop pipeline and is part of the cache key; ``classes``
    says whether the copy holds every class or a subset of them.
    """

    name: str
    label: str
    num_classes: int
    class_names: tuple[str, ...]
    image_size: tuple[int, int, int]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    split: str
    n: int
    subset: str
    preprocessing: str
    root: str = ""
    # "all", or which classes a class-subset copy holds (ImageNet folders such as Imagenette:
    # "10-of-1000@<digest of the wnids>"); part of what identifies the examples
    classes: str = "all"
