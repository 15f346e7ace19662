"""Study files: a TOML grid of datasets x models x attacks, validated in full before any work starts and
turned into :class:`~robustarch.evaluation.spec.EvaluationSpec` s, run into the results store chunk by chunk
(only what is missing), resumable and shardable (``docs/study.md``).

The format (every key is checked; unknown keys, datasets, models, attacks and missing paths are errors)::

    [study]
    name = "paper"
    store = "paper.sqlite"          # relative to this file; `--store` overrides
    device = "auto"                 # auto | cpu | cuda | cuda:N
    batch_size = 128                # = chunk size: the unit of commit and of the per-chunk seed
    seed = 0
    dtype = "float32"               # or bf16 / fp16 autocast (bf16 also on CPU; re-checked in float32)
    checks = true                   # reliability checks, stored as flags
    attacks = ["preset:paper"]      # preset:NAME, a key of [attacks], or an attack id (standard profile)

    [paths]                         # {data} / {weights} in roots and weights; `--path data=DIR` overrides
    data = "data"
    weights = "weights"

    [attacks.pgd-strong]            # a named attack: its id, profile and parameters
    attack = "pgd"
    profile = "standard"
    eps = 0.0313

    [[datasets]]
    name = "cifar10"
    root = "{data}/cifar10"
    split = "test"                  # optional; also limit = N, subset = "balanced:1000", cache = true
    attacks = ["preset:paper", "pgd-strong"]   # optional: replaces [study].attacks for this dataset
    models = [
      { name = "resnet18", weights = "{weights}/cifar10/resnet18.pt" },
      { name = "darts", overrides = { C = 16, layers = 8 }, random_init = true },   # on purpose
      { factory = "mypkg.nets:wide_resnet", kwargs = { depth = 28 }, weights = "{weights}/wrn.pt",
        mean = [0.49, 0.48, 0.45], std = [0.25, 0.24, 0.26] },      # any model (one line in TOML)
    ]

A zoo model table takes ``name``, ``id`` (how results name it; default: the zoo name), ``weights``,
``overrides``, ``random_init`` and ``allow_pickle``; a factory table takes ``factory``, ``kwargs``,
``weights``, ``mean``, ``std``, ``id`` and ``allow_pickle``. E.g. the authors' DenseNAS-R3 folder is
``{ name = "densenas", id = "densenas_r3", weights = "{weights}/R3/weights.pt", overrides = { net_config =
"{weights}/R3" } }`` (TOML inline tables stay on one line).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from robustarch.errors import RobustarchError, close_names
from robustarch.evaluation.spec import (
    DataRef,
    EvaluationSpec,
    ModelRef,
    canonical_dtype,
    resolve_attacks,
)
from robustarch.store import DEFAULT_STORE, Store

log = logging.getLogger(__name__)

STUDY_KEYS = {"name", "store", "device", "batch_size", "seed", "dtype", "checks", "attacks", "recheck"}
DATASET_KEYS = {
    "name",
    "root",
    "split",
    "limit",
    "subset",
    "attacks",
    "models",
    "cache",
    "ground_truth",
    "allow_partial",
    "verify",
}
ZOO_MODEL_KEYS = {"name", "id", "weights", "overrides", "allow_pickle", "random_init"}
FACTORY_MODEL_KEYS = {"factory", "id", "weights", "kwargs", "mean", "std", "allow_pickle"}
ATTACK_KEYS = {"attack", "profile"}  # plus the attack's own parameters
TOP_KEYS = {"study", "paths", "attacks", "datasets"}
PRESET_STUDIES = ("paper",)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class StudyError(RobustarchError):
    """A study file that cannot be run; lists every problem found."""


@dataclass
class StudyDataset:
    name: str
    data: DataRef
    attacks: list[str]  # the entries as written
    plans: tuple[Any, ...]  # AttackPlan: the attacks, built once
    models: list[ModelRef]


@dataclass
class Study:
    path: Path
    name: str
    store: str
    device: str
    batch_size: int
    seed: int
    dtype: str
    checks: bool
    recheck: int
    datasets: list[StudyDataset]
    attack_defs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def attack_plans(self, ds: StudyDataset) -> list[Any]:
        return list(ds.plans)

    def specs(self, *, download: bool = True) -> list[EvaluationSpec]:
        """One evaluation spec per (dataset, model), in file order. ``download=False``: published weights
        come from the cache (or a mirror) only."""
        return [
            EvaluationSpec(
                model=m if download else dataclasses.replace(m, download=False),
                data=ds.data,
                attacks=ds.plans,
                batch_size=self.batch_size,
                device=self.device,
                dtype=self.dtype,
                seed=self.seed,
                checks=self.checks,
                recheck=self.recheck,
                store=self.store,
                meta={"study": self.name},
            )
            for ds in self.datasets
            for m in ds.models
        ]

    def select(self, datasets: Sequence[str] | None = None, models: Sequence[str] | None = None) -> Study:
        """The study restricted to some datasets / model ids (unknown names are errors)."""
        out = dataclasses.replace(self, datasets=list(self.datasets))
        if datasets:
            known = [d.name for d in self.datasets]
            for name in datasets:
                if name not in known:
                    raise StudyError(_unknown("dataset in this study", name, known))
            out.datasets = [d for d in out.datasets if d.name in datasets]
        if models:
            known = sorted({m.id for d in out.datasets for m in d.models})
            for name in models:
                if name not in known:
                    raise StudyError(_unknown("model in this study", name, known))
            out.datasets = [
                dataclasses.replace(d, models=[m for m in d.models if m.id in models]) for d in out.datasets
            ]
            out.datasets = [d for d in out.datasets if d.models]  # no data to load for a dataset left empty
        return out


def toml_value(v: Any) -> str:
    """``v`` (bool, number, string, list, dict) as a TOML value, for the study files robustarch writes (the
    demo's, ``robustarch compare``'s); dicts become inline tables."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is a JSON string
    return repr(v)


def _unknown(kind: str, name: str, known: Sequence[str]) -> str:
    close = close_names(name, known)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Known: {', '.join(sorted(known)) or '(none)'}"


def preset_study_path(name: str) -> Path:
    """The packaged study file of a preset (``paper``: the study's Tables 1-4)."""
    if name not in PRESET_STUDIES:
        raise StudyError(_unknown("preset study", name, PRESET_STUDIES))
    return Path(str(resources.files("robustarch").joinpath("configs", "studies", f"{name}.toml")))


# -- reading ------------------------------------------------------------------------------------------------
class _Reader:
    """Collects every problem of a study file (reported together) and expands path placeholders."""

    def __init__(self, source: str, base: Path, check_files: bool):
        self.source, self.base, self.check_files = source, base, check_files
        self.problems: list[str] = []
        self.placeholders: dict[str, str] = {}

    def add(self, where: str, msg: str) -> None:
        self.problems.append(f"{where}: {msg}")

    def check_keys(self, where: str, table: dict[str, Any], allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                self.add(where, _unknown("key", key, sorted(allowed)))

    def typed(
        self, where: str, table: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any
    ) -> Any:
        """``table[key]`` if of type ``kind`` (a bool is no int here), else a problem and ``default``."""
        value = table.get(key, default)
        if value is default:
            return value
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            self.add(where, f"{key} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
            return default
        return value

    def expand(self, where: str, value: str) -> str:
        """``{name}`` placeholders substituted; a relative path resolved against the study file's folder."""

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in self.placeholders:
                self.add(where, _unknown("placeholder", "{" + m.group(1) + "}", list(self.placeholders)))
                return m.group(0)
            return self.placeholders[m.group(1)]

        out = _PLACEHOLDER.sub(sub, value)
        return str((self.base / Path(out).expanduser()).resolve()) if out else out

    def must_exist(self, where: str, path: str, what: str) -> None:
        if self.check_files and not Path(path).exists():
            self.add(where, f"{what} {path} does not exist")

    def raise_if_any(self) -> None:
        if self.problems:
            lines = "\n  - ".join(self.problems)
            raise StudyError(f"study file {self.source} has {len(self.problems)} problem(s):\n  - {lines}")


def _read_toml(source: str | os.PathLike[str]) -> tuple[Path, dict[str, Any], bool]:
    path = Path(source)
    preset = not path.exists() and str(source) in PRESET_STUDIES
    if preset:
        path = preset_study_path(str(source))
    if not path.is_file():
        raise StudyError(f"study file {source} does not exist (preset studies: {', '.join(PRESET_STUDIES)})")
    try:
        return path, tomllib.loads(path.read_text()), preset
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise StudyError(f"study file {path} is not valid TOML: {err}") from err


def load_study(
    source: str | os.PathLike[str], *, paths: dict[str, str] | None = None, check_files: bool = True
) -> Study:
    """Read and validate a study file (or a preset study name such as ``paper``). Every problem is collected
    and reported together; nothing is run. ``paths`` overrides ``[paths]`` entries (``--path NAME=DIR``)."""
    path, raw, preset = _read_toml(source)
    # a packaged preset's relative paths (store, [paths]) mean the current folder, not the package's
    reader = _Reader(str(path), Path.cwd() if preset else path.resolve().parent, check_files)
    reader.check_keys("top level", raw, TOP_KEYS)
    head = _table(reader, raw, "study", "[study]")
    reader.check_keys("[study]", head, STUDY_KEYS)
    _read_paths(reader, raw, paths or {})
    settings = _read_settings(reader, head, path.stem)
    defs = _read_attack_defs(reader, raw)
    default_attacks = reader.typed("[study]", head, "attacks", list, [])
    datasets = _read_datasets(reader, raw, defs, default_attacks)
    reader.raise_if_any()
    return Study(path, datasets=datasets, attack_defs=defs, **settings)


def _table(reader: _Reader, raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        reader.add(where, "must be a table")
        return {}
    return value


def _read_paths(reader: _Reader, raw: dict[str, Any], given: dict[str, str]) -> None:
    table = raw.get("paths", {})
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        reader.add("[paths]", 'must be a table of NAME = "folder" strings')
        table = {}
    reader.placeholders = {k: str((reader.base / Path(v).expanduser()).resolve()) for k, v in table.items()}
    for k, v in given.items():
        if k not in reader.placeholders:
            reader.add("--path", _unknown("path name", k, list(reader.placeholders)))
        reader.placeholders[k] = str(Path(v).expanduser().resolve())


def _read_settings(reader: _Reader, head: dict[str, Any], default_name: str) -> dict[str, Any]:
    from robustarch.evaluation.engine import resolve_device

    w = "[study]"
    out = {
        "name": reader.typed(w, head, "name", str, default_name),
        "store": str((reader.base / Path(reader.typed(w, head, "store", str, DEFAULT_STORE))).resolve()),
        "device": reader.typed(w, head, "device", str, "auto"),
        "batch_size": reader.typed(w, head, "batch_size", int, 128),
        "seed": reader.typed(w, head, "seed", int, 0),
        "recheck": reader.typed(w, head, "recheck", int, 64),
        "dtype": reader.typed(w, head, "dtype", str, "float32"),
        "checks": reader.typed(w, head, "checks", bool, True),
    }
    try:
        resolve_device(out["device"])
    except RobustarchError as err:
        reader.add("[study] device", str(err))
    if out["batch_size"] < 1:
        reader.add(w, f"batch_size must be >= 1, got {out['batch_size']}")
        out["batch_size"] = 128
    try:
        out["dtype"] = canonical_dtype(out["dtype"])
    except RobustarchError as err:
        reader.add(w, str(err))
        out["dtype"] = "float32"
    return out


def _read_attack_defs(reader: _Reader, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``[attacks.NAME]`` tables, each checked by building its attack."""
    from robustarch import attacks as ra

    defs: dict[str, dict[str, Any]] = {}
    table = raw.get("attacks", {})
    if not isinstance(table, dict):
        reader.add("[attacks]", "must be a table of named attacks ([attacks.NAME])")
        return defs
    for key, d in table.items():
        where = f"[attacks.{key}]"
        if not isinstance(d, dict):
            reader.add(where, "must be a table")
            continue
        d = {"attack": key, **d}
        try:
            params = {k: v for k, v in d.items() if k not in ATTACK_KEYS}
            ra.create(d["attack"], d.get("profile", "standard"), **params)
        except RobustarchError as err:
            reader.add(where, str(err))
            continue
        defs[key] = d
    return defs


def _read_datasets(
    reader: _Reader, raw: dict[str, Any], defs: dict[str, dict[str, Any]], default_attacks: list[Any]
) -> list[StudyDataset]:
    tables = raw.get("datasets", [])
    if not isinstance(tables, list) or not tables:
        reader.add("[[datasets]]", "the study names no datasets (add [[datasets]] tables)")
        return []
    out: list[StudyDataset] = []
    seen: set[tuple[str, str]] = set()
    for i, d in enumerate(tables):
        ds = _read_dataset(reader, f"[[datasets]] #{i + 1}", d, defs, default_attacks)
        if ds is None:
            continue
        if (ds.name, ds.data.split) in seen:
            reader.add(
                f"[[datasets]] {ds.name}",
                f"dataset {ds.name} ({ds.data.split}) appears twice; merge its models into one table",
            )
        seen.add((ds.name, ds.data.split))
        out.append(ds)
    return out


def _read_dataset(
    reader: _Reader, where: str, d: Any, defs: dict[str, dict[str, Any]], default_attacks: list[Any]
) -> StudyDataset | None:
    from robustarch import data as rdata

    if not isinstance(d, dict):
        reader.add(where, "must be a table")
        return None
    reader.check_keys(where, d, DATASET_KEYS)
    name = reader.typed(where, d, "name", str, None)
    if name is None:
        reader.add(where, 'needs name = "<dataset id>"')
        return None
    where = f"[[datasets]] {name}"
    if name not in rdata.list_datasets():
        reader.add(where, _unknown("dataset", name, rdata.list_datasets()))
        return None
    root = reader.typed(where, d, "root", str, None)
    if root is None:
        reader.add(where, 'needs root = "<folder with the data>"')
        return None
    root = reader.expand(where + " root", root)
    reader.must_exist(where, root, "data root")
    data = DataRef(
        name,
        root,
        reader.typed(where, d, "split", str, "test"),
        _read_limit(reader, where, d),
        _read_subset(reader, where, d),
        tuple(sorted(_read_loader_options(reader, where, d).items())),
    )
    entries = [str(a) for a in reader.typed(where, d, "attacks", list, default_attacks)]
    plans: tuple[Any, ...] = ()
    try:
        plans = tuple(resolve_attacks(entries, name, defs))
    except RobustarchError as err:
        reader.add(where + " attacks", str(err))
    models = _read_models(reader, where, d, name)
    return StudyDataset(name, data, entries, plans, models)


def _read_limit(reader: _Reader, where: str, d: dict[str, Any]) -> int | None:
    limit = reader.typed(where, d, "limit", int, None)
    if limit is not None and limit < 1:
        reader.add(where, f"limit must be >= 1, got {limit}")
        return None
    return limit


def _read_subset(reader: _Reader, where: str, d: dict[str, Any]) -> str | None:
    subset = reader.typed(where, d, "subset", str, None)
    if subset is not None and subset.startswith("ids:"):
        subset = "ids:" + reader.expand(where + " subset", subset.removeprefix("ids:"))
    return subset


def _read_loader_options(reader: _Reader, where: str, d: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    cache = d.get("cache")
    if isinstance(cache, bool):
        options["cache"] = cache
    elif isinstance(cache, str):
        options["cache"] = reader.expand(where + " cache", cache)
    elif cache is not None:
        reader.add(where, f"cache must be true/false or a folder, got {cache!r}")
    if "ground_truth" in d:
        options["ground_truth"] = reader.expand(where + " ground_truth", str(d["ground_truth"]))
    for flag in ("allow_partial", "verify"):  # a partial copy; skip the official checksums
        if flag in d:
            options[flag] = reader.typed(where, d, flag, bool, flag == "verify")
    return options


def _read_models(reader: _Reader, where: str, d: dict[str, Any], dataset: str) -> list[ModelRef]:
    tables = reader.typed(where, d, "models", list, [])
    if not tables:
        reader.add(where, 'names no models (models = [{ name = "resnet18", weights = "..." }, ...])')
    out: list[ModelRef] = []
    seen: set[str] = set()
    for j, m in enumerate(tables):
        table = {"name": m} if isinstance(m, str) else m
        name = (table.get("name") or table.get("factory")) if isinstance(table, dict) else None
        ref = _read_model(reader, f"{where} model {name or f'#{j + 1}'}", table, dataset)
        if ref is None:
            continue
        if ref.id in seen:
            reader.add(
                f"{where} model {ref.id}",
                f'model id {ref.id!r} appears twice for {dataset}; give one of them id = "..."',
            )
        seen.add(ref.id)
        out.append(ref)
    return out


def _read_model(reader: _Reader, where: str, m: Any, dataset: str) -> ModelRef | None:
    if not isinstance(m, dict) or not ({"name", "factory"} & set(m)):
        reader.add(
            where, 'must be a model name or a table with name = "<zoo model>" or factory = "pkg.mod:fn"'
        )
        return None
    if "name" in m and "factory" in m:
        reader.add(where, "give either name (a zoo model) or factory (any model), not both")
        return None
    build: Callable[..., ModelRef | None] = _read_zoo_model if "name" in m else _read_factory_model
    try:
        ref = build(reader, where, m, dataset)
    except RobustarchError as err:
        reader.add(where, str(err))
        return None
    try:  # a model with a problem still takes its id, so a repeated id is found too
        ref.validate(dataset, check_files=reader.check_files)  # type: ignore[union-attr]
    except RobustarchError as err:
        reader.add(where, str(err))
    return ref


def _read_zoo_model(reader: _Reader, where: str, m: dict[str, Any], dataset: str) -> ModelRef | None:
    from robustarch import zoo

    name = str(m["name"])
    reader.check_keys(where, m, ZOO_MODEL_KEYS)
    zoo.get_spec(name, dataset)  # an unknown name is this model's one problem
    overrides = {
        k: reader.expand(f"{where} overrides.{k}", v) if k == "net_config" and isinstance(v, str) else v
        for k, v in reader.typed(where, m, "overrides", dict, {}).items()
    }
    if isinstance(overrides.get("net_config"), str) and not overrides["net_config"].startswith("["):
        reader.must_exist(where, overrides["net_config"], "net_config")
    return ModelRef.zoo(
        name,
        weights=_read_weights(reader, where, m),
        overrides=overrides,
        id=reader.typed(where, m, "id", str, None),
        allow_pickle=reader.typed(where, m, "allow_pickle", bool, False),
        random_init=reader.typed(where, m, "random_init", bool, False),
    )


def _read_factory_model(reader: _Reader, where: str, m: dict[str, Any], dataset: str) -> ModelRef | None:
    target = str(m["factory"])
    reader.check_keys(where, m, FACTORY_MODEL_KEYS)
    stats = {k: reader.typed(where, m, k, list, None) for k in ("mean", "std")}
    return ModelRef.factory(
        target,
        kwargs=reader.typed(where, m, "kwargs", dict, {}),
        weights=_read_weights(reader, where, m),
        id=reader.typed(where, m, "id", str, None),
        allow_pickle=reader.typed(where, m, "allow_pickle", bool, False),
        **stats,
    )


def _read_weights(reader: _Reader, where: str, m: dict[str, Any]) -> str | bool | None:
    """A file (placeholders expanded), a URL, a published source name (``"torchvision"``), or true (the
    registry's default source); ModelRef.validate checks that it exists."""
    from robustarch.zoo import weights as registry

    weights = reader.typed(where, m, "weights", (str, bool), None)
    if weights is None or weights is False:
        return None
    if weights is True or registry.looks_like_source(weights) or registry.is_url(weights):
        return weights
    return reader.expand(where + " weights", weights)


# -- running ------------------------------------------------------------------------------------------------
@dataclass
class JobStatus:
    dataset: str
    model: str
    attack: str  # label
    run_id: str
    done: int
    chunks: int
    complete: bool


def study_status(study: Study, store_path: str | None = None) -> list[JobStatus]:
    """What is done: per (dataset, model, attack) the committed chunks of its run. Loads data listings and
    identifies models (a zoo weights file by its hash; other models must be built) but computes nothing."""
    from robustarch.evaluation.engine import Engine

    path = Path(store_path or study.store)
    store = Store(path if path.exists() else ":memory:")  # status creates no store file
    engine = Engine(
        store, device=study.device, batch_size=study.batch_size, seed=study.seed, dtype=study.dtype
    )
    from robustarch.zoo.weights import WeightsError

    rows = []
    loaded: dict[DataRef, Any] = {}
    for spec in study.specs(download=False):  # status fetches nothing
        data = loaded.setdefault(spec.data, spec.data.load())
        try:
            job = engine.plan(data, spec.model, spec.attacks, register=False, load=False)
        except WeightsError as err:
            log.info("%s: %s", spec.model.id, err)
            label = "(weights not fetched)"
            rows.append(JobStatus(data.dataset, spec.model.id, label, "-", 0, 0, False))
            continue
        for r in job.runs:
            done = len(store.committed_chunks(r.run_id))
            complete = bool(store.results(run_id=r.run_id, complete=True))
            label = r.plan.label if r.plan else "clean"
            rows.append(
                JobStatus(data.dataset, spec.model.id, label, r.run_id, done, r.key.n_chunks, complete)
            )
    store.close()
    return rows


def run_study(
    study: Study, store_path: str | None = None, *, progress: bool = True, download: bool = True
) -> list[str]:
    """Run everything the store lacks; returns the run ids of the study. Published weights are fetched as
    needed unless ``download=False``. Under ``torchrun`` (WORLD_SIZE > 1) each rank computes the chunks
    ``c % world_size == rank`` and rank 0 finishes runs and runs the checks."""
    from robustarch.evaluation.runner import run_specs

    return run_specs(study.specs(download=download), store_path or study.store, progress=progress)
