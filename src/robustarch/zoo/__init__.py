"""The model zoo: every architecture of the study, built to be provably identical to its authors' code.

``build`` returns the bare network (reference ``state_dict`` keys, float32, train mode);
``load`` returns it wrapped with its input normalization, in eval mode, taking images in [0, 1], optionally
with weights from a checkpoint file, a URL, or a published source by name (:mod:`robustarch.zoo.weights`).
Each family file (``vgg.py``, ``darts.py``, ...) registers its entries with
:func:`robustarch.zoo._registry.register_model`; adding a model is one file plus one registration.

Importing this package costs no torch: the family files are imported the first time the registry is read,
and :class:`Normalized` and the checkpoint helpers when first used, so the dataset table
(:data:`DATASETS`, :func:`dataset_shape`) is free to read.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from robustarch.errors import RobustarchError, UnknownNameError
from robustarch.lazy import lazy_exports
from robustarch.zoo._registry import (
    DATASETS,
    FAMILY_MODULES,
    PARAMETER_COUNTS_FILE,
    ModelSpec,
    all_specs,
    dataset_shape,
    get_spec,
    stored_parameter_counts,
)

if TYPE_CHECKING:
    from torch import nn

    from robustarch.zoo._normalize import Normalized

log = logging.getLogger(__name__)

# public names defined in torch-importing submodules, imported when first read
_LAZY = {
    "Normalized": "_normalize",
    "check_weight_file": "_checkpoint",
    "file_sha256": "_checkpoint",
    "load_state_dict_strict": "_checkpoint",
    "read_checkpoint": "_checkpoint",
    "remap_keys": "_checkpoint",
    "save_checkpoint": "_checkpoint",
    "save_safetensors": "_checkpoint",
    "looks_like_source": "weights",  # and the registry module itself: robustarch.zoo.weights
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = [
    "DATASETS",
    "FAMILY_MODULES",
    "ModelSpec",
    "Normalized",
    "build",
    "build_kwargs",
    "check_weight_file",
    "count_parameters",
    "dataset_shape",
    "file_sha256",
    "get_spec",
    "list_models",
    "list_specs",
    "load",
    "load_state_dict_strict",
    "measure_parameter_counts",
    "parameter_count",
    "read_checkpoint",
    "remap_keys",
    "save_checkpoint",
    "save_safetensors",
    "unwrap",
    "weights",
    "write_parameter_counts",
]


def _builder_params(spec: ModelSpec) -> tuple[set[str], bool]:
    params = inspect.signature(spec.builder).parameters.values()
    names = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def build_kwargs(name: str, dataset: str, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments ``build`` passes to the spec's builder: dataset shape, registered defaults,
    then ``overrides``. Unknown override names raise :class:`UnknownNameError` with close names."""
    spec = get_spec(name, dataset)
    shape = dataset_shape(dataset)
    kwargs: dict[str, Any] = {"num_classes": shape.num_classes, "in_channels": shape.in_channels}
    kwargs.update(spec.arch_kwargs(dataset))
    accepted, any_kw = _builder_params(spec)
    for key in overrides:
        if key not in accepted and not any_kw:
            raise UnknownNameError(f"argument of model {name!r}", key, accepted)
    kwargs.update(overrides)
    return kwargs


def build(name: str, dataset: str, **overrides: Any) -> nn.Module:
    """The bare network ``name`` for ``dataset`` (float32, train mode, reference ``state_dict`` keys).

    ``overrides`` replace architecture arguments (e.g. ``width=16`` for a small handcrafted net, ``C`` and
    ``layers`` for DARTS-family nets, ``num_classes`` / ``in_channels``); the defaults are the published
    ones. The network expects ``spec.input_size`` inputs, already normalized; use :func:`load` for the
    [0, 1]-input model.
    """
    spec = get_spec(name, dataset)
    return spec.builder(**build_kwargs(name, dataset, **overrides))


def load(
    name: str,
    dataset: str,
    weights: str | os.PathLike[str] | bool | None = None,
    *,
    allow_pickle: bool = False,
    download: bool = True,
    **overrides: Any,
) -> Normalized:
    """The network with its input normalization inside, in eval mode, taking images in [0, 1].

    ``weights`` is a published source by name (``"torchvision"``, ``"authors"``, an alias such as
    ``"IMAGENET1K_V1"``; ``True`` = the registry's default source for ``name`` on ``dataset``), downloaded
    and verified by :mod:`robustarch.zoo.weights` (``download=False`` or ``ROBUSTARCH_OFFLINE=1``: cached
    files only); an ``http(s)`` URL; or a checkpoint path (see :mod:`robustarch.zoo._checkpoint` for the
    accepted forms). ``name`` may also be a registry weight-set id of a generic zoo entry (``densenas_r3``).
    Weights are loaded strictly and any key mismatch raises :class:`RobustarchError` with the full report. A
    source's build overrides and input normalization (e.g. a CIFAR ResNet without its stem max-pool) are
    applied; a file written by :func:`save_checkpoint` whose metadata records ``overrides`` is rebuilt with
    them unless the caller passes overrides. ``allow_pickle=True`` lets ``torch.load`` unpickle arbitrary
    objects: only for trusted files. Without ``weights`` the network keeps its random initialisation.
    """
    from robustarch.zoo import weights as registry
    from robustarch.zoo._checkpoint import load_state_dict_strict, read_checkpoint, remap_keys
    from robustarch.zoo._normalize import Normalized

    if "pretrained" in overrides:
        raise RobustarchError(
            "load() has no pretrained= argument: pass weights=True for the registry's default source, a "
            f"source name (see `robustarch weights list --dataset {dataset}`), or a checkpoint path"
        )
    if weights is False:
        weights = None
    if weights is not None and not isinstance(weights, (str, os.PathLike, bool)):
        raise RobustarchError(
            f"weights must be a source name, True, a path or a URL; got {type(weights).__name__}"
        )
    entry = None
    path = None
    if weights is True or (weights is not None and registry.looks_like_source(weights)):
        entry = registry.lookup(name, dataset, weights)  # type: ignore[arg-type]
        path = registry.fetch(entry, download=download).path
        name = entry.zoo_name
        overrides = {**entry.build_overrides(path), **overrides}
    elif weights is not None:
        path = registry.resolve(name, dataset, weights, download=download)
    spec = get_spec(name, dataset)
    shape = dataset_shape(dataset)
    state = None
    metadata: dict[str, Any] = {}
    if path is not None:
        state, metadata = read_checkpoint(path, allow_pickle=allow_pickle)
        recorded = metadata.get("model")
        if recorded and recorded != name:
            log.warning("%s records model %r, loading it as %r", path, recorded, name)
        if not overrides and isinstance(metadata.get("overrides"), dict) and metadata["overrides"]:
            overrides = dict(metadata["overrides"])
            log.info("rebuilding %s with the overrides recorded in %s: %s", name, path, overrides)
    net = build(name, dataset, **overrides)
    if state is not None:
        own = net.state_dict()
        state = remap_keys(state, own, spec.checkpoint_prefix, spec.key_rewrites)
        load_state_dict_strict(net, state, source=str(path))
    mean, std = (entry.normalization() if entry else None) or spec.mean_std(dataset)
    pad_to = spec.input_size if shape.input_size < spec.input_size else None
    model = Normalized(net, mean, std, pad_to=pad_to)
    model.spec = spec
    model.checkpoint_metadata = metadata
    model.weights_entry = entry
    return model.eval()


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside ``model``: removes robustarch's :class:`Normalized`, ``nn.DataParallel`` /
    ``DistributedDataParallel`` (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    from torch import nn

    from robustarch.zoo._normalize import Normalized

    while True:
        if isinstance(model, Normalized):
            model = model.net
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def list_specs(dataset: str | None = None, *, variants: bool = True) -> list[ModelSpec]:
    """Registered specs, for ``dataset``'s family if given; ``variants=False`` keeps the study's models."""
    specs = all_specs()
    if dataset is not None:
        family = dataset_shape(dataset).family
        specs = [s for s in specs if s.dataset_family == family]
    if not variants:
        specs = [s for s in specs if not s.variant_of]
    return sorted(specs, key=lambda s: (s.dataset_family, s.name))


def list_models(dataset: str | None = None, *, variants: bool = True) -> list[str]:
    """Sorted model names available for ``dataset`` (any dataset when ``None``)."""
    return sorted({s.name for s in list_specs(dataset, variants=variants)})


def count_parameters(model: nn.Module, *, exclude_auxiliary: bool = False) -> int:
    """Elements over ``model.parameters()`` (buffers excluded), optionally without parameters whose name
    contains ``auxiliary`` (the DARTS-family training-only head), as the conformance fixtures count them."""
    return sum(
        p.numel() for n, p in unwrap(model).named_parameters() if not (exclude_auxiliary and "auxiliary" in n)
    )


def parameter_count(name: str, dataset: str) -> int | None:
    """Parameters of ``build(name, dataset)`` with the registered defaults, read from
    ``configs/parameter_counts.json`` instead of building the network; None for an entry that cannot be
    built without arguments (the generic ``densenas`` needs a net_config). An entry the file does not list
    (registered after it was written) is counted on the meta device, which allocates nothing."""
    get_spec(name, dataset)  # unknown names raise UnknownNameError with close names
    stored = stored_parameter_counts().get(dataset, {})
    if name in stored:
        return stored[name]
    log.debug("no stored parameter count for %s/%s; counting it", name, dataset)
    return _count_on_meta(name, dataset)


def _count_on_meta(name: str, dataset: str) -> int | None:
    import torch

    from robustarch.errors import RobustarchError

    try:
        with torch.device("meta"):  # shapes only: even VGG16's 138M parameters cost nothing
            return count_parameters(build(name, dataset))
    except RobustarchError:  # an entry that needs arguments
        return None


def measure_parameter_counts() -> dict[str, dict[str, int | None]]:
    """``{dataset: {model name: count}}`` for every registered entry and every dataset of its family,
    counted by building each network on the meta device: what ``configs/parameter_counts.json`` holds."""
    counts: dict[str, dict[str, int | None]] = {}
    for dataset in DATASETS:
        counts[dataset] = {s.name: _count_on_meta(s.name, dataset) for s in list_specs(dataset)}
    return counts


def write_parameter_counts() -> None:
    """Rewrite ``configs/parameter_counts.json`` from :func:`measure_parameter_counts` (after adding or
    changing a registry entry; ``tests/test_zoo_registry.py`` fails until then)."""
    data: dict[str, Any] = {
        "_format": (
            "elements of robustarch.zoo.build(name, dataset).parameters() with the registered defaults "
            "(auxiliary heads included, buffers excluded), per dataset and model name; null: the entry "
            "needs arguments to build. Written by robustarch.zoo.write_parameter_counts()."
        ),
        **measure_parameter_counts(),
    }
    PARAMETER_COUNTS_FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    stored_parameter_counts.cache_clear()
