"""Study files: a TOML grid of datasets x models x attacks, validated in full before any work starts, run
into the results store chunk by chunk (only what is missing), resumable and shardable (``docs/study.md``).

The format (every key is checked; unknown keys, datasets, models, attacks and missing paths are errors)::

    [study]
    name = "paper"
    store = "paper.sqlite"          # relative to this file; `--store` overrides
    device = "auto"                 # auto | cpu | cuda | cuda:N
    batch_size = 128                # = chunk size: the unit of commit and of the per-chunk seed
    seed = 0
    dtype = "float32"               # or amp-bfloat16 / amp-float16 (GPU; re-checked in float32)
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
      { name = "darts", overrides = { C = 16, layers = 8 } },     # no weights: seeded random init
    ]

A model table may also give ``id`` (how results name it; default: the zoo name) and ``allow_pickle``;
e.g. the authors' DenseNAS-R3 folder is ``{ name = "densenas", id = "densenas_r3", weights =
"{weights}/R3/weights.pt", overrides = { net_config = "{weights}/R3" } }`` (TOML inline tables stay on
one line).
"""

from __future__ import annotations

import dataclasses
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
from robustarch.evaluation.engine import (
    DTYPES,
    AttackPlan,
    DataSource,
    Engine,
    ModelJob,
    ModelSource,
    load_data,
    resolve_device,
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
MODEL_KEYS = {"name", "id", "weights", "overrides", "allow_pickle"}
ATTACK_KEYS = {"attack", "profile"}  # plus the attack's own parameters
TOP_KEYS = {"study", "paths", "attacks", "datasets"}
PRESET_STUDIES = ("paper",)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class StudyError(RobustarchError):
    """A study file that cannot be run; lists every problem found."""


@dataclass
class StudyModel:
    id: str  # how results name it (the zoo name unless given, e.g. densenas_large)
    name: str  # zoo entry
    weights: str | None
    overrides: dict[str, Any] = field(default_factory=dict)
    allow_pickle: bool = False

    def source(self) -> ModelSource:
        return ModelSource(self.name, self.weights, dict(self.overrides), self.allow_pickle, self.id)


@dataclass
class StudyDataset:
    name: str
    root: str
    split: str
    limit: int | None
    subset: str | None
    attacks: list[str]
    models: list[StudyModel]
    options: dict[str, Any] = field(default_factory=dict)

    def load(self) -> DataSource:
        return load_data(
            self.name, self.root, split=self.split, limit=self.limit, subset=self.subset, **self.options
        )


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
    attack_defs: dict[str, dict[str, Any]]

    def attack_plans(self, ds: StudyDataset) -> list[AttackPlan]:
        return resolve_attacks(ds.attacks, ds.name, self.attack_defs)

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


def _unknown(kind: str, name: str, known: Sequence[str]) -> str:
    close = close_names(name, known)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Known: {', '.join(sorted(known)) or '(none)'}"


def preset_study_path(name: str) -> Path:
    """The packaged study file of a preset (``paper``: the study's Tables 1-4)."""
    if name not in PRESET_STUDIES:
        raise StudyError(_unknown("preset study", name, PRESET_STUDIES))
    return Path(str(resources.files("robustarch").joinpath("configs", "studies", f"{name}.toml")))


def resolve_attacks(
    entries: Sequence[str], dataset: str, defs: dict[str, dict[str, Any]]
) -> list[AttackPlan]:
    """Attack list entries -> configured attacks: ``preset:NAME``, a key of ``[attacks]`` or an attack id."""
    from robustarch import attacks as ra

    plans: list[AttackPlan] = []
    for entry in entries:
        if entry.startswith("preset:"):
            for label, attack in ra.preset(entry.removeprefix("preset:"), dataset).items():
                plans.append(AttackPlan(label, attack))
        elif entry in defs:
            d = dict(defs[entry])
            name, profile = d.pop("attack", entry), d.pop("profile", "standard")
            plans.append(AttackPlan(entry, ra.create(name, profile, **d)))
        elif entry in ra.list_attacks():
            plans.append(AttackPlan(entry, ra.create(entry)))
        else:
            known = [*ra.list_attacks(), *defs, *(f"preset:{p}" for p in ra.PRESETS)]
            raise RobustarchError(_unknown("attack", entry, known))
    if not plans:
        raise RobustarchError(
            f"no attacks for dataset {dataset!r} (give [study].attacks or the dataset's attacks)"
        )
    return plans


# -- loading and validation -------------------------------------------------------------------------------
class _Problems:
    def __init__(self, source: str):
        self.source, self.items = source, []

    def add(self, where: str, msg: str) -> None:
        self.items.append(f"{where}: {msg}")

    def check_keys(self, where: str, table: dict[str, Any], allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                self.add(where, _unknown("key", key, sorted(allowed)))

    def raise_if_any(self) -> None:
        if self.items:
            lines = "\n  - ".join(self.items)
            raise StudyError(f"study file {self.source} has {len(self.items)} problem(s):\n  - {lines}")


def _typed(
    problems: _Problems,
    where: str,
    table: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    default: Any,
) -> Any:
    value = table.get(key, default)
    if value is default:
        return value
    if (
        isinstance(value, bool)
        and kind is not bool
        and bool not in (kind if isinstance(kind, tuple) else (kind,))
    ):
        problems.add(where, f"{key} must be {getattr(kind, '__name__', kind)}, got {value!r}")
        return default
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        problems.add(where, f"{key} must be {names}, got {value!r}")
        return default
    return value


def load_study(
    source: str | os.PathLike[str], *, paths: dict[str, str] | None = None, check_files: bool = True
) -> Study:
    """Read and validate a study file (or a preset study name such as ``paper``). Every problem is collected
    and reported together; nothing is run. ``paths`` overrides ``[paths]`` entries (``--path NAME=DIR``)."""
    from robustarch import attacks as ra
    from robustarch import data as rdata
    from robustarch import zoo

    path = Path(source)
    preset = not path.exists() and str(source) in PRESET_STUDIES
    if preset:
        path = preset_study_path(str(source))
    if not path.is_file():
        hint = f" (preset studies: {', '.join(PRESET_STUDIES)})"
        raise StudyError(f"study file {source} does not exist{hint}")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise StudyError(f"study file {path} is not valid TOML: {err}") from err
    # a packaged preset's relative paths (store, [paths]) mean the current folder, not the package's
    base = Path.cwd() if preset else path.resolve().parent
    problems = _Problems(str(path))
    problems.check_keys("top level", raw, TOP_KEYS)
    head = raw.get("study", {})
    if not isinstance(head, dict):
        problems.add("[study]", "must be a table")
        head = {}
    problems.check_keys("[study]", head, STUDY_KEYS)

    path_table = raw.get("paths", {})
    if not isinstance(path_table, dict) or not all(isinstance(v, str) for v in path_table.values()):
        problems.add("[paths]", 'must be a table of NAME = "folder" strings')
        path_table = {}
    placeholders = {k: str((base / Path(v).expanduser()).resolve()) for k, v in path_table.items()}
    for k, v in (paths or {}).items():
        if k not in placeholders:
            problems.add("--path", _unknown("path name", k, list(placeholders)))
        placeholders[k] = str(Path(v).expanduser().resolve())

    def expand(where: str, value: str) -> str:
        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in placeholders:
                problems.add(where, _unknown("placeholder", "{" + m.group(1) + "}", list(placeholders)))
                return m.group(0)
            return placeholders[m.group(1)]

        out = _PLACEHOLDER.sub(sub, value)
        return (
            str((base / Path(out).expanduser()).resolve())
            if out and not out.lstrip().startswith("[")
            else out
        )

    name = _typed(problems, "[study]", head, "name", str, path.stem)
    store = _typed(problems, "[study]", head, "store", str, DEFAULT_STORE)
    store = str((base / Path(store).expanduser()).resolve())
    device = _typed(problems, "[study]", head, "device", str, "auto")
    try:
        resolve_device(device)
    except RobustarchError as err:
        problems.add("[study] device", str(err))
    batch_size = _typed(problems, "[study]", head, "batch_size", int, 128)
    if batch_size < 1:
        problems.add("[study]", f"batch_size must be >= 1, got {batch_size}")
    seed = _typed(problems, "[study]", head, "seed", int, 0)
    recheck = _typed(problems, "[study]", head, "recheck", int, 64)
    dtype = _typed(problems, "[study]", head, "dtype", str, "float32")
    if dtype not in DTYPES:
        problems.add("[study]", _unknown("dtype", dtype, DTYPES))
    checks = _typed(problems, "[study]", head, "checks", bool, True)
    default_attacks = _typed(problems, "[study]", head, "attacks", list, [])

    attack_defs: dict[str, dict[str, Any]] = {}
    defs_raw = raw.get("attacks", {})
    if not isinstance(defs_raw, dict):
        problems.add("[attacks]", "must be a table of named attacks ([attacks.NAME])")
        defs_raw = {}
    for key, d in defs_raw.items():
        if not isinstance(d, dict):
            problems.add(f"[attacks.{key}]", "must be a table")
            continue
        d = dict(d)
        d.setdefault("attack", key)
        if d["attack"] not in ra.list_attacks():
            problems.add(f"[attacks.{key}]", _unknown("attack", str(d["attack"]), ra.list_attacks()))
            continue
        try:  # parameters and profile are checked by building the attack
            ra.create(
                d["attack"],
                d.get("profile", "standard"),
                **{k: v for k, v in d.items() if k not in ATTACK_KEYS},
            )
        except RobustarchError as err:
            problems.add(f"[attacks.{key}]", str(err))
            continue
        attack_defs[key] = d

    datasets: list[StudyDataset] = []
    ds_raw = raw.get("datasets", [])
    if not isinstance(ds_raw, list) or not ds_raw:
        problems.add("[[datasets]]", "the study names no datasets (add [[datasets]] tables)")
        ds_raw = []
    seen_ds: set[tuple[str, str]] = set()
    for i, d in enumerate(ds_raw):
        where = f"[[datasets]] #{i + 1}"
        if not isinstance(d, dict):
            problems.add(where, "must be a table")
            continue
        problems.check_keys(where, d, DATASET_KEYS)
        ds_name = _typed(problems, where, d, "name", str, None)
        if ds_name is None:
            problems.add(where, 'needs name = "<dataset id>"')
            continue
        where = f"[[datasets]] {ds_name}"
        if ds_name not in rdata.list_datasets():
            problems.add(where, _unknown("dataset", ds_name, rdata.list_datasets()))
            continue
        root = _typed(problems, where, d, "root", str, None)
        if root is None:
            problems.add(where, 'needs root = "<folder with the data>"')
            continue
        root = expand(where + " root", root)
        if check_files and not Path(root).exists():
            problems.add(where, f"data root {root} does not exist")
        split = _typed(problems, where, d, "split", str, "test")
        limit = _typed(problems, where, d, "limit", int, None)
        if limit is not None and limit < 1:
            problems.add(where, f"limit must be >= 1, got {limit}")
        subset = _typed(problems, where, d, "subset", str, None)
        if subset is not None and subset.startswith("ids:"):
            subset = "ids:" + expand(where + " subset", subset.removeprefix("ids:"))
        if (ds_name, split) in seen_ds:
            problems.add(where, f"dataset {ds_name} ({split}) appears twice; merge its models into one table")
        seen_ds.add((ds_name, split))
        options: dict[str, Any] = {}
        cache = d.get("cache")
        if cache is not None:
            if isinstance(cache, bool):
                options["cache"] = cache
            elif isinstance(cache, str):
                options["cache"] = expand(where + " cache", cache)
            else:
                problems.add(where, f"cache must be true/false or a folder, got {cache!r}")
        if "ground_truth" in d:
            options["ground_truth"] = expand(where + " ground_truth", str(d["ground_truth"]))
        for flag in ("allow_partial", "verify"):  # a partial copy; skip the official checksums
            if flag in d:
                options[flag] = _typed(problems, where, d, flag, bool, flag == "verify")
        attack_entries = _typed(problems, where, d, "attacks", list, default_attacks)
        try:
            resolve_attacks([str(a) for a in attack_entries], ds_name, attack_defs)
        except RobustarchError as err:
            problems.add(where + " attacks", str(err))
        models: list[StudyModel] = []
        seen_ids: set[str] = set()
        models_raw = _typed(problems, where, d, "models", list, [])
        if not models_raw:
            problems.add(where, 'names no models (models = [{ name = "resnet18", weights = "..." }, ...])')
        for j, m in enumerate(models_raw):
            mwhere = f"{where} model #{j + 1}"
            if isinstance(m, str):
                m = {"name": m}
            if not isinstance(m, dict) or "name" not in m:
                problems.add(mwhere, 'must be a model name or a table with name = "<zoo model>"')
                continue
            problems.check_keys(mwhere, m, MODEL_KEYS)
            mname = str(m["name"])
            mwhere = f"{where} model {mname}"
            try:
                zoo.get_spec(mname, ds_name)
            except RobustarchError as err:
                problems.add(mwhere, str(err))
                continue
            overrides = _typed(problems, mwhere, m, "overrides", dict, {})
            overrides = {
                k: expand(f"{mwhere} overrides.{k}", v) if isinstance(v, str) and k == "net_config" else v
                for k, v in overrides.items()
            }
            try:
                zoo.build_kwargs(mname, ds_name, **overrides)
            except RobustarchError as err:
                problems.add(mwhere, str(err))
            net_config = str(overrides.get("net_config", "["))
            if check_files and not net_config.startswith("[") and not Path(net_config).exists():
                problems.add(mwhere, f"net_config {overrides['net_config']} does not exist")
            weights = _typed(problems, mwhere, m, "weights", str, None)
            if weights is not None:
                weights = expand(mwhere + " weights", weights)
                if check_files and not Path(weights).is_file():
                    problems.add(mwhere, f"weights file {weights} does not exist")
            mid = _typed(problems, mwhere, m, "id", str, mname)
            if mid in seen_ids:
                problems.add(
                    mwhere, f'model id {mid!r} appears twice for {ds_name}; give one of them id = "..."'
                )
            seen_ids.add(mid)
            models.append(
                StudyModel(
                    mid, mname, weights, overrides, _typed(problems, mwhere, m, "allow_pickle", bool, False)
                )
            )
        datasets.append(
            StudyDataset(
                ds_name, root, split, limit, subset, [str(a) for a in attack_entries], models, options
            )
        )
    problems.raise_if_any()
    return Study(path, name, store, device, batch_size, seed, dtype, checks, recheck, datasets, attack_defs)


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


def _engine(
    study: Study,
    store: Store,
    rank: int = 0,
    world: int = 1,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Engine:
    return Engine(
        store,
        device=device or study.device,
        batch_size=study.batch_size,
        seed=study.seed,
        dtype=study.dtype,
        recheck=study.recheck,
        rank=rank,
        world_size=world,
        progress=progress,
    )


def study_status(study: Study, store_path: str | None = None) -> list[JobStatus]:
    """What is done: per (dataset, model, attack) the committed chunks of its run. Loads data listings and
    models (to identify their weights) but computes nothing."""
    path = Path(store_path or study.store)
    store = Store(path if path.exists() else ":memory:")  # status creates no store file
    engine = _engine(study, store)  # the device type the run would use: it is part of the run ids
    rows = []
    for ds in study.datasets:
        data = ds.load()
        for m in ds.models:
            job = engine.plan(data, m.source(), study.attack_plans(ds), register=False, load=False)
            for r in job.runs:
                done = len(store.committed_chunks(r.run_id))
                complete = bool(store.results(run_id=r.run_id, complete=True))
                rows.append(
                    JobStatus(
                        ds.name,
                        m.id,
                        r.plan.label if r.plan else "clean",
                        r.run_id,
                        done,
                        r.key.n_chunks,
                        complete,
                    )
                )
            del job
    store.close()
    return rows


def run_study(study: Study, store_path: str | None = None, *, progress: bool = True) -> list[str]:
    """Run everything the store lacks; returns the run ids of the study. Under ``torchrun`` (WORLD_SIZE > 1)
    each rank computes the chunks ``c % world_size == rank`` and rank 0 finishes runs and runs the checks."""
    from robustarch.evaluation import distributed
    from robustarch.evaluation.checks import model_checks, store_checks

    ctx = distributed.init(study.device)
    store = Store(store_path or study.store)
    bar = _progress_bar(progress and ctx.rank == 0)
    engine = _engine(study, store, ctx.rank, ctx.world_size, str(ctx.device), bar.update if bar else None)
    run_ids: list[str] = []
    try:
        loaded: list[tuple[StudyDataset, DataSource]] = [(ds, ds.load()) for ds in study.datasets]
        if bar is not None:
            # the whole study's remaining work up front, so the ETA covers it (a weights file is hashed,
            # not loaded; a random initialisation is built to be identified)
            bar.total = sum(
                engine.work_units(engine.plan(data, m.source(), plans, register=False, load=False))
                for ds, data in loaded
                for plans in [study.attack_plans(ds)]
                for m in ds.models
            )
            bar.refresh()
        for ds, data in loaded:
            plans = study.attack_plans(ds)
            for m in ds.models:
                job: ModelJob = engine.plan(data, m.source(), plans, extra_meta={"study": study.name})
                run_ids += [r.run_id for r in job.runs]
                if bar is not None:
                    bar.set_description(f"{ds.name}/{m.id}")
                engine.run(job)
                ctx.barrier()
                if ctx.rank == 0:
                    incomplete = engine.finish(job)
                    if incomplete:
                        raise RobustarchError(f"runs {incomplete} are incomplete after all ranks finished")
                    if study.checks:
                        model_checks(engine, job)
                ctx.barrier()
                job.model.cpu()
                del job
        if ctx.rank == 0 and study.checks:
            store_checks(store, run_ids)
        ctx.barrier()
    finally:
        if bar is not None:
            bar.close()
        store.close()
        ctx.close()
    return run_ids


def _progress_bar(enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        total=0,
        unit="ex",
        unit_scale=True,
        dynamic_ncols=True,
        smoothing=0.1,
        desc="study",
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]",
    )
