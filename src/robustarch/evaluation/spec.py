"""The evaluation spec: one frozen record of everything an evaluation runs, built by the three front ends
(CLI flags, study files, the Python API) and run by the one engine (``docs/api.md``, ``docs/study.md``).

- :class:`ModelRef`: which model: a zoo entry (with weights, or its random initialisation only when asked
  for), a factory ``package.module:function`` returning an ``nn.Module``, or an ``nn.Module`` given in
  Python. Every model takes [0, 1] images; given ``mean``/``std``, the normalization is put inside it.
- :class:`DataRef`: which examples: a dataset of the table with its root, split, subset and limit, or data
  given in Python (a ``DataSource``).
- attacks: :class:`~robustarch.evaluation.engine.AttackPlan` s with every parameter resolved, each attack
  built once (:func:`resolve_attacks`, :func:`apply_overrides`).
- :class:`EvaluationSpec`: model, data, attacks, batch size, device, dtype, seed, checks and store.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from robustarch.errors import RobustarchError, UnknownNameError, close_names

log = logging.getLogger(__name__)

MODEL_KINDS = ("zoo", "factory", "module")
DTYPES = ("float32", "amp-bfloat16", "amp-float16")
# shorter names for the mixed-precision dtypes (runs record the long ones, so both name the same runs)
DTYPE_ALIASES = {"bf16": "amp-bfloat16", "fp16": "amp-float16", "fp32": "float32"}


def canonical_dtype(dtype: str) -> str:
    """``float32``, ``amp-bfloat16`` or ``amp-float16`` (``bf16``, ``fp16``, ``fp32`` are accepted too)."""
    dtype = DTYPE_ALIASES.get(dtype, dtype)
    if dtype not in DTYPES:
        raise UnknownNameError("dtype", str(dtype), (*DTYPES, *DTYPE_ALIASES))
    return dtype


@dataclass(frozen=True)
class ModelRef:
    """Which model to evaluate (see the module docstring). ``arch`` holds a zoo entry's architecture
    overrides or a factory's keyword arguments; ``id`` is how results name the model."""

    kind: str
    name: str
    id: str
    weights: str | bool | None = None  # a file, a URL, a published source ("torchvision"), or True
    arch: Mapping[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    allow_pickle: bool = False
    random_init: bool = False
    module: nn.Module | None = field(default=None, compare=False, repr=False)
    # whether published weights may be downloaded now (False: only the cache; study run --no-download)
    download: bool = field(default=True, compare=False)

    @classmethod
    def zoo(
        cls,
        name: str,
        *,
        weights: str | bool | None = None,
        overrides: Mapping[str, Any] | None = None,
        id: str | None = None,
        allow_pickle: bool = False,
        random_init: bool = False,
    ) -> ModelRef:
        return cls(
            "zoo", name, id or name, weights, dict(overrides or {}), None, None, allow_pickle, random_init
        )

    @classmethod
    def factory(
        cls,
        target: str,
        *,
        kwargs: Mapping[str, Any] | None = None,
        weights: str | bool | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        id: str | None = None,
        allow_pickle: bool = False,
    ) -> ModelRef:
        """A function ``package.module:function`` (importable, or a file ``path/to/file.py:function``)
        that returns an ``nn.Module``, called with ``kwargs``."""
        default_id = target.rpartition(":")[2] or target
        return cls(
            "factory", target, id or default_id, weights, dict(kwargs or {}), _stats(mean), _stats(std),
            allow_pickle,
        )  # fmt: skip

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        id: str | None = None,
    ) -> ModelRef:
        if not isinstance(module, nn.Module):
            raise RobustarchError(f"model must be a zoo id or a torch.nn.Module, got {type(module).__name__}")
        name = type(module).__name__
        return cls("module", name, id or name.lower(), None, {}, _stats(mean), _stats(std), module=module)

    # -- checks and building -------------------------------------------------------------------------
    def validate(self, dataset: str, *, check_files: bool = True) -> None:
        """Everything that can be checked without building the model (raises RobustarchError)."""
        if (self.mean is None) != (self.std is None):
            raise RobustarchError(f"model {self.id}: give both mean and std (or neither)")
        if self.kind == "zoo":
            from robustarch import zoo

            zoo.get_spec(self.name, dataset)
            zoo.build_kwargs(self.name, dataset, **self.arch)
            if self.mean is not None:
                raise RobustarchError(
                    f"zoo model {self.name} normalizes inside itself with its published statistics; "
                    "mean/std are for models from a factory or from Python"
                )
            if self.weights is None and not self.random_init:
                raise RobustarchError(
                    f"zoo model {self.name} has no weights: give weights (a checkpoint file) to evaluate the "
                    "trained network, or random_init (--random-init) to evaluate its random "
                    "initialisation on purpose (such runs are marked as such)"
                )
            if self.weights is not None and self.random_init:
                raise RobustarchError(f"model {self.id}: weights and random_init exclude each other")
            if self.published:
                zoo.weights.lookup(self.registry_name(dataset), dataset, self.weights)  # type: ignore[arg-type]
                return
        elif self.kind == "factory":
            _import_factory(self.name)
            if self.weights is True or self.published:
                raise RobustarchError(
                    f"model {self.id}: published weights by name are for zoo models; give a factory's "
                    "weights as a file or URL"
                )
        local = self.weights is not None and not _is_url(self.weights)
        if check_files and local and not Path(str(self.weights)).exists():
            raise RobustarchError(f"model {self.id}: weights file {self.weights} does not exist")

    @property
    def published(self) -> bool:
        """Whether ``weights`` names published weights of the registry (a source name, or True)."""
        from robustarch.zoo import weights as registry

        return self.weights is True or (
            isinstance(self.weights, str) and registry.looks_like_source(self.weights)
        )

    def registry_name(self, dataset: str) -> str:
        """The name the weights registry knows this model by: its id where the registry has that id (the
        generic ``densenas`` entry's ``densenas_large``, ...), else its zoo name."""
        from robustarch.zoo import weights as registry

        return self.id if registry.entries(dataset, model=self.id) else self.name

    def weights_file(self, dataset: str) -> Path | None:
        """The local file of the weights: fetched (and verified) for published weights or a URL, where
        ``download`` allows; None without weights."""
        from robustarch.zoo import weights as registry

        if self.weights is None:
            return None
        if self.published:
            return registry.resolve(
                self.registry_name(dataset), dataset, self.weights, download=self.download
            )
        return registry.resolve(self.name, dataset, str(self.weights), download=self.download)

    def build(self, dataset: str, seed: int) -> nn.Module:
        """The model in eval mode, taking [0, 1] images (a random initialisation depends on ``seed``)."""
        import torch

        from robustarch import zoo

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.kind == "zoo":
                name = self.registry_name(dataset) if self.published else self.name
                return zoo.load(
                    name, dataset, self.weights, allow_pickle=self.allow_pickle, download=self.download,
                    **dict(self.arch),
                )  # fmt: skip
            net = self.module if self.kind == "module" else _call_factory(self.name, self.arch)
        path = self.weights_file(dataset)
        if path is not None:
            state, _ = zoo.read_checkpoint(path, allow_pickle=self.allow_pickle)
            state = zoo.remap_keys(state, net.state_dict())
            zoo.load_state_dict_strict(net, state, source=str(path))
        if self.mean is not None:
            net = zoo.Normalized(net, self.mean, self.std)  # type: ignore[arg-type]
        return net.eval()

    def family_method(self, dataset: str) -> tuple[str, str]:
        """(architecture family, method) as reports group models: the zoo's, or ``custom`` and the class or
        factory name for any other model."""
        if self.kind == "zoo":
            from robustarch import zoo

            spec = zoo.get_spec(self.name, dataset)
            return spec.family, spec.method
        return "custom", self.name

    @property
    def normalization(self) -> str:
        """Where the model's input normalization is: in the zoo entry, put inside by robustarch, or assumed
        to be part of the user's model (it takes [0, 1] images)."""
        if self.kind == "zoo":
            return "zoo"
        return "added" if self.mean is not None else "assumed-inside"

    def describe(self) -> dict[str, Any]:
        """What run metadata records about the model (``docs/store.md``)."""
        return {
            "model_kind": self.kind,
            "model_name": self.name,
            "weights": self.weights,
            "overrides": dict(self.arch),
            "random_init": self.random_init,
            "normalization": self.normalization,
            **({"mean": list(self.mean), "std": list(self.std or ())} if self.mean is not None else {}),
        }


def _is_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _stats(values: Sequence[float] | None) -> tuple[float, ...] | None:
    if values is None:
        return None
    out = tuple(float(v) for v in values)
    if not out:
        raise RobustarchError("mean/std need at least one value")
    return out


def _import_factory(target: str) -> Any:
    """The function named by ``package.module:function`` or ``path/to/file.py:function``."""
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise RobustarchError(
            f"model {target!r} is neither a zoo name nor a factory: write package.module:function "
            "(or path/to/file.py:function) for a function that returns an nn.Module"
        )
    try:
        if module_name.endswith(".py"):
            module = _import_file(Path(module_name))
        else:
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise RobustarchError(f"cannot import {module_name!r} for model {target!r}: {err}") from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = close_names(attr, names)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise RobustarchError(f"{module_name} has no function {attr!r}.{hint}")
    return fn


def _import_file(path: Path) -> Any:
    import importlib.util

    if not path.is_file():
        raise ImportError(f"no file {path}")
    spec = importlib.util.spec_from_file_location(f"robustarch_user_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _call_factory(target: str, kwargs: Mapping[str, Any]) -> nn.Module:
    fn = _import_factory(target)
    try:
        net = fn(**dict(kwargs))
    except TypeError as err:
        raise RobustarchError(f"factory {target} does not accept {dict(kwargs)}: {err}") from err
    if not isinstance(net, nn.Module):
        raise RobustarchError(f"factory {target} returned {type(net).__name__}, not a torch.nn.Module")
    return net


@dataclass(frozen=True)
class DataRef:
    """Which examples to evaluate: a dataset of the table (``dataset``, ``root``, ``split``, ``limit``,
    ``subset``, loader ``options``), or data given in Python (``source``)."""

    dataset: str
    root: str | None = None
    split: str = "test"
    limit: int | None = None
    subset: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    num_classes: int | None = None  # an image folder's model outputs (labels are the folders' indices)
    source: Any = field(default=None, compare=False, repr=False)  # a robustarch.data.DataSource

    @classmethod
    def given(cls, source: Any) -> DataRef:
        return cls(source.dataset, None, "given", None, source.subset, source=source)

    @property
    def budget_dataset(self) -> str:
        """The dataset whose standard attack configuration applies (data given in Python: the family
        its image size suggests, ``robustarch.data.budget_dataset``)."""
        if self.source is not None:
            return self.source.budget_dataset
        from robustarch.data import budget_dataset

        size = dict(self.options).get("image_size")
        return budget_dataset(self.dataset, (size, size) if isinstance(size, int) else size)

    def load(self) -> Any:
        """The :class:`robustarch.data.DataSource` (loaded from disk for a dataset of the table)."""
        if self.source is not None:
            return self.source
        from robustarch.data import load_source

        source = load_source(
            self.dataset, self.root, split=self.split, limit=self.limit, subset=self.subset,
            **dict(self.options),
        )  # fmt: skip
        if self.num_classes is not None:
            if self.num_classes < source.num_classes:
                raise RobustarchError(
                    f"num_classes {self.num_classes} is less than the {source.num_classes} classes of "
                    f"{self.root}"
                )
            source.num_classes = self.num_classes
        return source


@dataclass(frozen=True)
class EvaluationSpec:
    """One model on one example list under a list of attacks, and how to run it."""

    model: ModelRef
    data: DataRef
    attacks: tuple[Any, ...]  # AttackPlan
    batch_size: int = 128
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    checks: bool = True
    recheck: int = 64
    store: str | None = None  # a results store file; None: in memory
    prepare: bool = True  # attack robustarch.runtime.prepare_for_attack's faster copy of the model
    meta: Mapping[str, Any] = field(default_factory=dict)  # recorded with every run (e.g. the study)

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise RobustarchError(f"batch size must be an integer >= 1, got {self.batch_size!r}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))  # frozen: normalize once
        if not self.attacks:
            raise RobustarchError(f"no attacks to run on {self.model.id} ({self.data.dataset})")


# -- attacks ------------------------------------------------------------------------------------------------
def resolve_attacks(
    entries: Sequence[Any], dataset: str, defs: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Any]:
    """Attack list entries -> configured attacks (:class:`~robustarch.evaluation.engine.AttackPlan`):
    ``preset:NAME``, a key of ``defs`` (a study's ``[attacks]`` table), an attack id (standard profile, as
    the standard preset configures it on ``dataset``: the same budget), or ``(id, {params})``."""
    from robustarch import attacks as ra
    from robustarch.evaluation.engine import AttackPlan

    defs = defs or {}
    plans: list[AttackPlan] = []
    for entry in entries:
        if isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[1], Mapping):
            name, params = str(entry[0]), dict(entry[1])
            plans.append(AttackPlan(name, _named_attack(name, dataset, params)))
        elif not isinstance(entry, str):
            raise RobustarchError(f"an attack is a name or (name, {{params}}), got {entry!r}")
        elif entry.startswith("preset:"):
            for label, attack in ra.preset(entry.removeprefix("preset:"), dataset).items():
                plans.append(AttackPlan(label, attack))
        elif entry in defs:
            d = dict(defs[entry])
            name, profile = d.pop("attack", entry), d.pop("profile", "standard")
            plans.append(AttackPlan(entry, ra.create(name, profile, **d)))
        elif entry in ra.list_attacks():
            plans.append(AttackPlan(entry, ra.standard_attack(entry, dataset)))
        else:
            known = [*ra.list_attacks(), *defs, *(f"preset:{p}" for p in ra.PRESETS)]
            raise UnknownNameError("attack", entry, known)
    if not plans:
        raise RobustarchError(f"no attacks for dataset {dataset!r}")
    return plans


def _named_attack(name: str, dataset: str, params: dict[str, Any]) -> Any:
    from robustarch import attacks as ra

    profile = params.pop("profile", "standard")
    if profile == "standard":
        return ra.standard_attack(name, dataset, **params)
    return ra.create(name, profile, **params)


@dataclass(frozen=True)
class AttackOverrides:
    """Parameters given for every attack (``eps``, ``alpha``, ``steps``, ``restarts``; each applies to the
    attacks that have it, and must apply to at least one) or for one (``per_attack``: label -> params)."""

    eps: float | None = None
    alpha: float | None = None
    steps: int | None = None
    restarts: int | None = None
    per_attack: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def common(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in (("alpha", self.alpha), ("steps", self.steps), ("restarts", self.restarts))
            if v is not None
        }

    def __bool__(self) -> bool:
        return self.eps is not None or bool(self.common) or bool(self.per_attack)


def apply_overrides(plans: Sequence[Any], overrides: AttackOverrides) -> list[Any]:
    """The plans with ``overrides`` applied, each attack rebuilt once with its final parameters. ``eps``
    changes every attack's budget (and, in the standard profile, the step sizes that scale with it)."""
    from robustarch import attacks as ra
    from robustarch.evaluation.engine import AttackPlan

    if not overrides:
        return list(plans)
    labels = [p.label for p in plans]
    for label in overrides.per_attack:
        if label not in labels:
            raise UnknownNameError(
                "attack in this evaluation (--attack-param LABEL.KEY=VALUE)", label, labels
            )
    used: set[str] = set()
    out = []
    for plan in plans:
        attack = plan.attack
        own = ra.own_params(attack)
        given = {k: v for k, v in overrides.common.items() if k in own}
        used.update(given)
        given.update(overrides.per_attack.get(plan.label, {}))
        if overrides.eps is not None and "eps" in own:
            attack = ra.rescale(attack, overrides.eps, keep=set(given))
        if given:
            attack = ra.create(attack.name, attack.profile, **{**ra.own_params(attack), **given})
        out.append(AttackPlan(plan.label, attack))
    unused = sorted(set(overrides.common) - used)
    if unused:
        raise RobustarchError(
            f"{', '.join('--' + k for k in unused)} applies to none of the attacks ({', '.join(labels)})"
        )
    return out
