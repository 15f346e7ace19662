"""The model registry: one :class:`ModelSpec` per (architecture, dataset family).

Every architecture file registers its entries with :func:`register_model`. ``robustarch.zoo.build`` /
``load`` / ``list_models`` are the only doors in; nothing else looks models up by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from robustarch.errors import RobustarchError, UnknownNameError

DatasetFamily = Literal["cifar", "imagenet"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetShape:
    """What a network must know about a dataset to be built for it."""

    name: str
    family: DatasetFamily  # which registry entries apply (CIFAR-style 32x32 nets or ImageNet-style nets)
    num_classes: int
    in_channels: int
    input_size: int  # H = W the published networks expect
    label: str  # how results on it are labelled in reports


# Datasets the zoo can build for. Any dataset with CIFAR-10's shape is "cifar" family.
DATASETS: dict[str, DatasetShape] = {
    d.name: d
    for d in (
        DatasetShape("cifar10", "cifar", 10, 3, 32, "CIFAR-10"),
        DatasetShape("cifar100", "cifar", 100, 3, 32, "CIFAR-100"),
        DatasetShape("cifar10-jpeg", "cifar", 10, 3, 32, "CIFAR-10 (JPEG q75)"),
        DatasetShape("fashion-mnist", "cifar", 10, 1, 28, "Fashion-MNIST"),
        DatasetShape("imagenet", "imagenet", 1000, 3, 224, "ImageNet"),
    )
}


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
    # mean/std the published weights were trained with, per dataset name; "*" is the fallback
    normalization: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = field(default_factory=dict)
    # architecture defaults per dataset name ("*" = all), overridable by build(**overrides)
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: str = ""

    @property
    def key(self) -> tuple[str, DatasetFamily]:
        return (self.name, self.dataset_family)

    def arch_kwargs(self, dataset: str) -> dict[str, Any]:
        return {**self.defaults.get("*", {}), **self.defaults.get(dataset, {})}

    def mean_std(self, dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def get_spec(name: str, dataset: str) -> ModelSpec:
    shape = dataset_shape(dataset)
    try:
        return _REGISTRY[(name, shape.family)]
    except KeyError:
        names = [n for (n, fam) in _REGISTRY if fam == shape.family]
        raise UnknownNameError(f"model for dataset {dataset!r}", name, names) from None


def all_specs() -> list[ModelSpec]:
    return list(_REGISTRY.values())
