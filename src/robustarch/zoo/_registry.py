"""The model registry: one :class:`ModelSpec` per (architecture, dataset family).

Every architecture file of :data:`FAMILY_MODULES` registers its entries with :func:`register_model`; they are
imported the first time the registry is read (:func:`get_spec`, :func:`all_specs`), so the dataset table and
the stored parameter counts (``configs/parameter_counts.json``) need no torch. ``robustarch.zoo.build`` /
``load`` / ``list_models`` are the only doors in; nothing else looks models up by name.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from robustarch.errors import RobustarchError, UnknownNameError

if TYPE_CHECKING:
    from torch import nn

# The architecture files; each registers its models when imported.
FAMILY_MODULES = ("vgg", "resnet", "densenet", "darts", "nsga_net", "densenas")
# Parameter counts of every (entry, dataset) with the registered defaults, as data: listing the zoo must
# not build every network. tests/test_zoo_registry.py recomputes each one.
PARAMETER_COUNTS_FILE = Path(__file__).with_name("configs") / "parameter_counts.json"

DatasetFamily = Literal["cifar", "imagenet"]

Stats = tuple[tuple[float, ...], tuple[float, ...]]

# torchvision's ImageNet statistics, used by every published ImageNet checkpoint in the zoo
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_STATS: Stats = (IMAGENET_MEAN, IMAGENET_STD)
# huyvnphan/PyTorch_CIFAR10 (cifar10_module.py, 2019): the stats its published CIFAR-10 weights were trained
# with (the std is the widely copied per-image value, not the dataset's pixel std)
CIFAR10_HUYVNPHAN_STATS: Stats = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
# where huyvnphan/PyTorch_CIFAR10 publishes its 2019 CIFAR-10 weights (raw state_dicts, keys unprefixed)
HUYVNPHAN_CIFAR10_WEIGHTS = (
    "huyvnphan/PyTorch_CIFAR10 2019 release, CIFAR-10 only: Google Drive folder "
    "15jBlLkOFg0eK-pwsmXoSesNDyDb_HOeV (linked from the README at ff9ada1), file {name}.pt"
)
# CIFAR-100 training-set per-channel pixel mean/std (no published weights to match; our own choice)
CIFAR100_STATS: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
# Fashion-MNIST training-set pixel mean/std, computed from the 60,000 training images (0.28604, 0.35302)
FASHION_MNIST_STATS: Stats = ((0.2860,), (0.3530,))


def cifar_normalization(cifar10_stats: Stats) -> dict[str, Stats]:
    """Per-dataset mean/std for a CIFAR-family entry whose published CIFAR-10 weights used ``cifar10_stats``.

    CIFAR-10 as JPEG holds the same images, so it keeps the CIFAR-10 stats; CIFAR-100 and Fashion-MNIST have
    no published weights of these layouts, so they get their own training-set statistics.
    """
    return {
        "cifar10": cifar10_stats,
        "cifar10-jpeg": cifar10_stats,
        "cifar100": CIFAR100_STATS,
        "fashion-mnist": FASHION_MNIST_STATS,
    }


@dataclass(frozen=True)
class DatasetShape:
    """What a network must know about a dataset to be built for it (read off ``robustarch.data.DATASETS``)."""

    name: str
    family: DatasetFamily  # which registry entries apply (CIFAR-style 32x32 nets or ImageNet-style nets)
    num_classes: int
    in_channels: int
    input_size: int  # H = W the published networks expect
    label: str  # how results on it are labelled in reports


def _shapes() -> dict[str, DatasetShape]:
    from robustarch.data import DATASETS as TABLE

    return {
        d.name: DatasetShape(d.name, d.family, d.num_classes, d.image_size[0], d.image_size[1], d.label)  # type: ignore[arg-type]
        for d in TABLE.values()
        if d.family is not None and d.num_classes is not None and d.image_size is not None
    }


# The datasets with a fixed shape the zoo can build for (the data table's, less image folders, whose shape
# the files give).
DATASETS: dict[str, DatasetShape] = _shapes()


def dataset_shape(dataset: str) -> DatasetShape:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise UnknownNameError("dataset", dataset, DATASETS) from None


@dataclass(frozen=True)
class ModelSpec:
    """A registered network: how to build it and the facts a report or a checkpoint loader needs.

    ``builder(num_classes=..., in_channels=..., **arch_kwargs)`` returns the bare network whose
    ``state_dict()`` keys/shapes equal the reference implementation's.
    """

    name: str
    dataset_family: DatasetFamily
    family: Literal["handcrafted", "nas"]
    method: str  # e.g. "DARTS", "ResNet"
    paper: str  # citation of the architecture's paper
    builder: Callable[..., nn.Module]
    reference: str  # reference implementation: repo @ commit, file, class
    weights: str  # where the authors publish weights (or "none published")
    checkpoint_prefix: str = ""  # key prefix the authors' / the study's checkpoints carry, e.g. "module."
    # (regex, replacement) pairs applied to every checkpoint key before strict loading, for published weight
    # files whose keys predate the current layout (torchvision's DenseNet files: "norm.1" -> "norm1")
    key_rewrites: tuple[tuple[str, str], ...] = ()
    # mean/std the published weights were trained with, per dataset name; "*" is the fallback
    normalization: dict[str, Stats] = field(default_factory=dict)
    # architecture defaults per dataset name ("*" = all), overridable by build(**overrides)
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: str = ""
    # name of the study model this entry is an alternative of (e.g. a later revision of the reference code);
    # "" for the models the study itself evaluated
    variant_of: str = ""
    # build() overrides giving a small, fast instance of the same layout family, for tests and smoke runs
    # (e.g. {"width": 8}); must also supply any argument the builder cannot do without (the generic
    # "densenas" entry's net_config). Tests over the registry build every entry with these.
    quick_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, DatasetFamily]:
        return (self.name, self.dataset_family)

    @property
    def input_size(self) -> int:
        """H = W the network was designed for (32 for the CIFAR family, 224 for ImageNet)."""
        return 32 if self.dataset_family == "cifar" else 224

    def arch_kwargs(self, dataset: str) -> dict[str, Any]:
        return {**self.defaults.get("*", {}), **self.defaults.get(dataset, {})}

    def mean_std(self, dataset: str) -> Stats:
        if dataset in self.normalization:
            return self.normalization[dataset]
        if "*" in self.normalization:
            return self.normalization["*"]
        raise RobustarchError(f"model {self.name!r} records no input normalization for dataset {dataset!r}")


_REGISTRY: dict[tuple[str, DatasetFamily], ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.key in _REGISTRY:
        raise RuntimeError(f"model {spec.name!r} registered twice for {spec.dataset_family}")
    _REGISTRY[spec.key] = spec
    return spec


def register_cifar_and_torchvision(
    name: str,
    *,
    method: str,
    paper: str,
    builder: Callable[..., nn.Module],
    source: str,
    architecture: dict[str, Any],
    torchvision_file: str,
    quick_overrides: dict[str, Any],
    key_rewrites: tuple[tuple[str, str], ...] = (),
) -> None:
    """Register a handcrafted network the way the study used it: huyvnphan/PyTorch_CIFAR10's 2019 adaptation
    (``stem="cifar"``) for CIFAR-family data and torchvision's layout (``stem="imagenet"``) for ImageNet.
    ``source`` names the file and class in both repositories, e.g. ``"resnet.py ResNet"``."""
    for dataset_family, stem, reference, weights, normalization in (
        (
            "cifar",
            "cifar",
            f"huyvnphan/PyTorch_CIFAR10@ff9ada1 cifar10_models/{source} ({name})",
            HUYVNPHAN_CIFAR10_WEIGHTS.format(name=name),
            cifar_normalization(CIFAR10_HUYVNPHAN_STATS),
        ),
        (
            "imagenet",
            "imagenet",
            f"pytorch/vision@f122815 (0.29.2) torchvision/models/{source} ({name})",
            f"torchvision IMAGENET1K_V1: https://download.pytorch.org/models/{torchvision_file}",
            {"*": IMAGENET_STATS},
        ),
    ):
        register_model(
            ModelSpec(
                name=name,
                dataset_family=dataset_family,  # type: ignore[arg-type]
                family="handcrafted",
                method=method,
                paper=paper,
                builder=builder,
                reference=reference,
                weights=weights,
                normalization=normalization,
                defaults={"*": {**architecture, "stem": stem}},
                key_rewrites=key_rewrites,
                quick_overrides=dict(quick_overrides),
            )
        )


def _register_families() -> None:
    """Import every architecture file (each registers its entries); a no-op once they are imported."""
    for module in FAMILY_MODULES:
        importlib.import_module(f"robustarch.zoo.{module}")


def get_spec(name: str, dataset: str) -> ModelSpec:
    shape = dataset_shape(dataset)
    _register_families()
    try:
        return _REGISTRY[(name, shape.family)]
    except KeyError:
        names = [n for (n, fam) in _REGISTRY if fam == shape.family]
        raise UnknownNameError(f"model for dataset {dataset!r}", name, names) from None


def all_specs() -> list[ModelSpec]:
    _register_families()
    return list(_REGISTRY.values())


@cache
def stored_parameter_counts() -> dict[str, dict[str, int | None]]:
    """``{dataset: {model name: count}}`` from :data:`PARAMETER_COUNTS_FILE` (None: the entry needs
    arguments to build); keys starting with ``_`` document the format."""
    data = json.loads(PARAMETER_COUNTS_FILE.read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}
