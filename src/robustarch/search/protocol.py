"""Architectures under one protocol: train every listed architecture with the same (adversarial) recipe at a
matched parameter count, evaluate them all with the same attacks, seeds as replicates, and tabulate.

This is the comparison the robust-NAS literature converged on after the study (Huang et al., "Revisiting
Residual Networks for Adversarial Robustness", CVPR 2023: TRADES training and AutoAttack for handcrafted,
NAS and robust-NAS networks alike), run from one file (``configs/protocols/*.toml``, see docs/search.md):

1. each architecture's ``scale`` argument (``C`` for cell networks, ``width`` for handcrafted ones) is set so
   its parameter count (without an auxiliary head) is closest to ``params``;
2. every (architecture, seed) is trained by :func:`robustarch.train.train` (resumable; ``baseline = true``
   also trains the recipe's standard twin: the same recipe without its adversarial step);
3. an ordinary study file (``docs/study.md``) listing the trained weights is written and run with
   :func:`robustarch.evaluation.run_study` into the results store;
4. the table "architectures under one protocol" is read back from the store: parameters, clean, PGD and
   worst-case accuracy (an example counts only if it survives every attack), each the mean over seeds with a
   95% interval (Wilson over the examples for one seed, Student's t over the seeds for several), the store's
   reliability flags and the training's catastrophic-overfitting events.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomllib

from robustarch.errors import RobustarchError, UnknownNameError

log = logging.getLogger(__name__)

PROTOCOL_DIR = Path(__file__).resolve().parents[1] / "configs" / "protocols"
STUDY_NAME = "study.toml"
STORE_NAME = "results.sqlite"
TABLE_NAME = "one-protocol"
STANDARD = "standard"  # the variant name of a baseline run (the recipe without its adversarial step)
# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal 1.96)
T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)

_PROTOCOL_KEYS = {
    "name",
    "dataset",
    "root",
    "recipe",
    "epochs",
    "batch_size",
    "lr",
    "train_subset",
    "train_limit",
    "check_images",
    "on_overfit",
    "seeds",
    "params",
    "baseline",
    "attacks",
    "eval_subset",
    "eval_limit",
    "eval_batch_size",
    "device",
    "checks",
}
_ARCH_KEYS = {"id", "model", "scale", "scale_step", "scale_range", "overrides"}


@dataclass(frozen=True)
class Architecture:
    """One row of the comparison: a zoo model, its fixed overrides, and the argument scaled to ``params``."""

    id: str
    model: str
    overrides: dict[str, Any] = field(default_factory=dict)
    scale: str | None = None  # e.g. "C" or "width"; None keeps the size the overrides give
    scale_step: int = 1  # candidate values are multiples of this (DARTS cells need an even C)
    scale_range: tuple[int, int] = (2, 256)


@dataclass(frozen=True)
class Protocol:
    """A parsed protocol file (``configs/protocols/*.toml``)."""

    name: str
    dataset: str
    root: str
    recipe: str
    architectures: tuple[Architecture, ...]
    seeds: tuple[int, ...] = (0,)
    params: float | None = None
    baseline: bool = False
    train: dict[str, Any] = field(default_factory=dict)  # epochs, batch_size, lr, subsets, check settings
    attacks: tuple[str, ...] = ("preset:standard",)
    attack_tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval_subset: str | None = None
    eval_limit: int | None = None
    eval_batch_size: int = 128
    device: str = "auto"
    checks: bool = True
    source: str = ""

    def select(
        self, architectures: Sequence[str] | None = None, seeds: Sequence[int] | None = None
    ) -> Protocol:
        """A part of the protocol (``--architectures``, ``--seeds``)."""
        archs = self.architectures
        if architectures:
            known = [a.id for a in archs]
            for a in architectures:
                if a not in known:
                    raise UnknownNameError("architecture of the protocol", a, known)
            archs = tuple(a for a in archs if a.id in architectures)
        return replace(self, architectures=archs, seeds=tuple(seeds) if seeds else self.seeds)


def protocol_path(name_or_path: str | Path) -> Path:
    """A bundled protocol by name (``one-protocol``, ``cpu-evidence``) or a file path."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise RobustarchError(f"protocol file {path} does not exist")
        return path
    bundled = sorted(p.stem for p in PROTOCOL_DIR.glob("*.toml"))
    if str(name_or_path) not in bundled:
        raise UnknownNameError("bundled protocol", str(name_or_path), bundled)
    return PROTOCOL_DIR / f"{name_or_path}.toml"


def load_protocol(name_or_path: str | Path, paths: dict[str, str] | None = None) -> Protocol:
    """Parse and check a protocol file; ``{key}`` placeholders in ``root`` and in string overrides take their
    value from ``paths`` (``--path key=DIR``), else from the file's ``[paths]`` (relative to the file; for a
    bundled protocol, to the current folder)."""
    path = protocol_path(name_or_path)
    try:
        doc = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise RobustarchError(f"cannot read protocol file {path}: {err}") from None
    _check_keys(doc, {"protocol", "paths", "architectures", "attacks"}, str(path))
    head = doc.get("protocol", {})
    _check_keys(head, _PROTOCOL_KEYS, f"{path} [protocol]")
    missing = [k for k in ("name", "dataset", "root", "recipe") if k not in head]
    if missing or not doc.get("architectures"):
        raise RobustarchError(
            f"{path}: [protocol] needs {', '.join(missing) or 'its keys'} and at least one "
            "[[architectures]] table"
        )
    # [paths] are relative to the file, or for a bundled protocol to the current folder (like study presets)
    base = Path.cwd() if path.parent == PROTOCOL_DIR else path.parent
    values = {k: str((base / Path(v).expanduser()).resolve()) for k, v in doc.get("paths", {}).items()}
    values.update(paths or {})

    def expand(text: Any) -> Any:
        if not isinstance(text, str):
            return text
        return re.sub(r"\{(\w+)\}", lambda m: _placeholder(m[1], values, path), text)

    archs = tuple(
        _architecture(a, expand, f"{path} [[architectures]] #{i + 1}")
        for i, a in enumerate(doc["architectures"])
    )
    ids = [a.id for a in archs]
    if len(set(ids)) != len(ids):
        raise RobustarchError(f"{path}: architecture ids must be unique, got {ids}")
    train_keys = ("epochs", "batch_size", "lr", "train_subset", "train_limit", "check_images", "on_overfit")
    protocol = Protocol(
        name=str(head["name"]),
        dataset=str(head["dataset"]),
        root=expand(head["root"]),
        recipe=str(head["recipe"]),
        architectures=archs,
        seeds=tuple(int(s) for s in head.get("seeds", [0])),
        params=float(head["params"]) if "params" in head else None,
        baseline=bool(head.get("baseline", False)),
        train={k: head[k] for k in train_keys if k in head},
        attacks=tuple(head.get("attacks", ["preset:standard"])),
        attack_tables=dict(doc.get("attacks", {})),
        eval_subset=head.get("eval_subset"),
        eval_limit=head.get("eval_limit"),
        eval_batch_size=int(head.get("eval_batch_size", 128)),
        device=str(head.get("device", "auto")),
        checks=bool(head.get("checks", True)),
        source=str(path),
    )
    _validate(protocol)
    return protocol


def _placeholder(key: str, values: dict[str, str], path: Path) -> str:
    if key not in values:
        raise RobustarchError(
            f"{path}: placeholder {{{key}}} has no value: add it to [paths] or pass --path {key}=DIR"
        )
    return values[key]


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise UnknownNameError(f"key of {where}", key, sorted(allowed))


def _architecture(table: dict[str, Any], expand: Any, where: str) -> Architecture:
    _check_keys(table, _ARCH_KEYS, where)
    if "model" not in table:
        raise RobustarchError(f'{where}: needs model = "<zoo name>"')
    lo, hi = table.get("scale_range", (2, 256))
    return Architecture(
        id=str(table.get("id", table["model"])),
        model=str(table["model"]),
        overrides={k: expand(v) for k, v in table.get("overrides", {}).items()},
        scale=table.get("scale"),
        scale_step=int(table.get("scale_step", 1)),
        scale_range=(int(lo), int(hi)),
    )


def _validate(protocol: Protocol) -> None:
    from robustarch import zoo
    from robustarch.train import get_recipe

    get_recipe(protocol.recipe)
    for a in protocol.architectures:
        zoo.build_kwargs(a.model, protocol.dataset, **a.overrides)  # unknown models / arguments
        if a.scale is not None:
            zoo.build_kwargs(a.model, protocol.dataset, **{a.scale: a.scale_range[0]})
            if protocol.params is None:
                raise RobustarchError(f"architecture {a.id} scales {a.scale!r} but [protocol] sets no params")


# ------------------------------------------------------------------------------------- width matching


def count_parameters(model: str, dataset: str, **overrides: Any) -> int:
    """Parameters of the network without its auxiliary head, built on the meta device (no memory)."""
    import torch

    from robustarch import zoo

    with torch.device("meta"):
        return zoo.count_parameters(zoo.build(model, dataset, **overrides), exclude_auxiliary=True)


def match_parameters(arch: Architecture, dataset: str, target: float) -> tuple[dict[str, Any], int]:
    """(overrides with ``arch.scale`` set, parameter count): the candidate value whose count is closest to
    ``target``, by bisection (counts grow with the width)."""
    if arch.scale is None:
        return dict(arch.overrides), count_parameters(arch.model, dataset, **arch.overrides)
    lo, hi = arch.scale_range
    step = arch.scale_step
    values = list(range(-(-lo // step) * step, hi + 1, step))

    def count(v: int) -> int:
        return count_parameters(arch.model, dataset, **{**arch.overrides, arch.scale: v})  # type: ignore[dict-item]

    left, right = 0, len(values) - 1
    while left < right:  # the first value whose count reaches the target
        mid = (left + right) // 2
        if count(values[mid]) < target:
            left = mid + 1
        else:
            right = mid
    options = {values[i]: count(values[i]) for i in {max(0, left - 1), left}}
    best = min(options, key=lambda v: (abs(options[v] - target), v))
    if abs(options[best] - target) > 0.1 * target:
        log.warning(
            "%s: the closest %s=%d gives %d parameters, %.0f%% from the target %d",
            arch.id,
            arch.scale,
            best,
            options[best],
            100 * abs(options[best] / target - 1),
            target,
        )
    return {**arch.overrides, arch.scale: best}, options[best]


# ---------------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Job:
    """One training run of the protocol and the id its evaluation carries in the store."""

    arch: Architecture
    seed: int
    variant: str  # the recipe's name, or STANDARD for its non-adversarial twin
    overrides: dict[str, Any]
    params: int

    @property
    def model_id(self) -> str:
        return f"{self.arch.id}-s{self.seed}" + (f"-{STANDARD}" if self.variant == STANDARD else "")


def plan(protocol: Protocol) -> list[Job]:
    """Every training run, width-matched once per architecture."""
    from robustarch.train import get_recipe

    variants = [protocol.recipe]
    if protocol.baseline:
        if get_recipe(protocol.recipe).adversarial is None:
            raise RobustarchError(
                f"baseline = true needs an adversarial recipe; {protocol.recipe} is standard"
            )
        variants.append(STANDARD)
    jobs = []
    for arch in protocol.architectures:
        if protocol.params is not None and arch.scale is not None:
            overrides, params = match_parameters(arch, protocol.dataset, protocol.params)
        else:
            overrides, params = (
                dict(arch.overrides),
                count_parameters(arch.model, protocol.dataset, **arch.overrides),
            )
        jobs += [Job(arch, s, v, overrides, params) for v in variants for s in protocol.seeds]
    return jobs


def train_job(protocol: Protocol, job: Job, out: Path, *, device: str | None, progress: bool) -> Path:
    """Train (or resume, or find finished) one job; returns its model.pt."""
    from robustarch.train import TrainConfig, get_recipe, train

    recipe: Any = protocol.recipe
    if job.variant == STANDARD:
        recipe = standard_twin(get_recipe(protocol.recipe))
    t = protocol.train
    result = train(
        TrainConfig(
            model=job.arch.model,
            dataset=protocol.dataset,
            data_root=protocol.root,
            out=out / "train" / job.model_id,
            recipe=recipe,
            epochs=t.get("epochs"),
            batch_size=t.get("batch_size"),
            lr=t.get("lr"),
            seed=job.seed,
            device=device,
            train_subset=t.get("train_subset"),
            train_limit=t.get("train_limit"),
            arch=job.overrides,
            check_images=t.get("check_images"),
            on_overfit=t.get("on_overfit"),
            progress=progress,
        )
    )
    return result.path


def standard_twin(recipe: Any) -> Any:
    """The recipe without its adversarial step (``NAME/standard``): same schedule, data and check."""
    return replace(
        recipe,
        name=f"{recipe.name}/{STANDARD}",
        adversarial=None,
        source=f"{recipe.source}; without its adversarial step",
    )


def write_study(protocol: Protocol, jobs: Sequence[Job], weights: dict[str, Path], out: Path) -> Path:
    """The evaluation as an ordinary study file (docs/study.md format), next to its store."""
    from robustarch.evaluation import toml_value as q

    lines = [
        f"# written by robustarch compare from {protocol.source}",
        "[study]",
        f"name = {q(protocol.name)}",
        f"store = {q(STORE_NAME)}",
        f"device = {q(protocol.device)}",
        f"batch_size = {protocol.eval_batch_size}",
        "seed = 0",
        f"checks = {'true' if protocol.checks else 'false'}",
        f"attacks = [{', '.join(q(a) for a in protocol.attacks)}]",
        "",
    ]
    for key, table in protocol.attack_tables.items():
        lines.append(f"[attacks.{q(key)}]")
        lines += [f"{k} = {q(v)}" for k, v in table.items()]
        lines.append("")
    lines += ["[[datasets]]", f"name = {q(protocol.dataset)}", f"root = {q(protocol.root)}", 'split = "test"']
    if protocol.eval_subset:
        lines.append(f"subset = {q(protocol.eval_subset)}")
    if protocol.eval_limit:
        lines.append(f"limit = {int(protocol.eval_limit)}")
    lines.append("models = [")
    lines += [
        f"  {{ name = {q(j.arch.model)}, id = {q(j.model_id)}, weights = {q(str(weights[j.model_id]))} }},"
        for j in jobs
    ]
    lines.append("]")
    path = out / STUDY_NAME
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def run_protocol(
    protocol: Protocol, out: str | Path, *, device: str | None = None, progress: bool = True
) -> tuple[list[dict[str, Any]], Path]:
    """Train, evaluate and tabulate; returns the table rows and the folder holding study.toml, the store and
    the table files. Everything resumes: finished training runs and stored results are reused."""
    from robustarch.evaluation import load_study, run_study

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = plan(protocol)
    weights = {}
    for i, job in enumerate(jobs, 1):
        log.info(
            "[%d/%d] training %s (%s, %s, %d parameters)",
            i,
            len(jobs),
            job.model_id,
            job.arch.model,
            job.variant,
            job.params,
        )
        weights[job.model_id] = train_job(protocol, job, out, device=device, progress=progress)
    study_path = write_study(protocol, jobs, weights, out)
    run_ids = run_study(load_study(study_path), str(out / STORE_NAME), progress=progress)
    rows = protocol_table(out / STORE_NAME, run_ids, jobs, out / "train", protocol.dataset)
    write_table(rows, protocol, out)
    return rows, out


# ----------------------------------------------------------------------------------------------- table


def _interval(per_seed: Sequence[tuple[int, int]]) -> tuple[float, float, float]:
    """(mean accuracy, lo, hi) over seeds: Wilson for one seed, Student's t over seed means for several."""
    from robustarch.store import wilson_interval

    fractions = [k / n for k, n in per_seed if n]
    if not fractions:
        return float("nan"), float("nan"), float("nan")
    mean = statistics.fmean(fractions)
    if len(fractions) == 1:
        lo, hi = wilson_interval(*per_seed[0])
        return mean, lo, hi
    t = T975[len(fractions) - 2] if len(fractions) - 1 <= len(T975) else 1.96
    half = t * statistics.stdev(fractions) / len(fractions) ** 0.5
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def _seed_counts(store: Any, results: Sequence[Any], attack: str | None, budget: float) -> tuple[int, int]:
    """(correct, n) of one model id: clean (attack None), the run labelled ``attack`` (a preset key or
    attack id, e.g. ``pgd``: not an eps-sweep point), or the worst case over the attacks at the L-inf
    ``budget`` (attack "*": correct on the clean image and under each of them, per example; sweep points
    at other budgets are left out)."""
    clean = next(r for r in results if r.attack == "clean")
    if attack is None:
        return clean.clean_top1_count, clean.n
    if attack == "*":
        adv = [
            r
            for r in results
            if r.attack != "clean"
            and abs(r.attack_params.get("eps", -1.0) - budget) < 1e-9
            and (r.meta.get("traits") or {}).get("norm", "Linf") == "Linf"
        ]
    else:
        adv = [r for r in results if r.attack != "clean" and r.meta.get("label", r.attack) == attack]
    if not adv:
        return 0, 0
    if attack != "*":
        return adv[0].adv_top1_count, adv[0].n
    survived = {e.example_id: e.clean_correct1 for e in store.examples(clean.run_id)}
    for r in adv:
        for e in store.examples(r.run_id):
            survived[e.example_id] = survived.get(e.example_id, False) and bool(e.adv_correct1)
    return sum(survived.values()), len(survived)


def protocol_table(
    store_path: str | Path, run_ids: Sequence[str], jobs: Sequence[Job], train_dir: Path, dataset: str
) -> list[dict[str, Any]]:
    """One row per (architecture, variant): parameters, clean / PGD / worst-case accuracy over the seeds with
    95% intervals, reliability flags (those not ok, and the count of ok ones) and the training's
    catastrophic-overfitting events."""
    from robustarch.attacks import dataset_budget
    from robustarch.store import Store

    store = Store(str(store_path))
    try:
        wanted = set(run_ids)
        by_model: dict[str, list[Any]] = {}
        for r in store.results(model=[j.model_id for j in jobs]):
            if r.run_id in wanted:
                by_model.setdefault(r.model, []).append(r)
        rows = []
        groups: dict[tuple[str, str], list[Job]] = {}
        for j in jobs:
            groups.setdefault((j.arch.id, j.variant), []).append(j)
        for (arch_id, variant), members in groups.items():
            results = [by_model.get(j.model_id, []) for j in members]
            if not all(any(r.attack == "clean" for r in res) for res in results):
                continue  # not evaluated (yet)
            row: dict[str, Any] = {
                "architecture": arch_id,
                "model": members[0].arch.model,
                "variant": variant,
                "params": members[0].params,
                "overrides": members[0].overrides,
                "seeds": [j.seed for j in members],
            }
            budget = dataset_budget(dataset)[1]
            for column, attack in (("clean", None), ("pgd", "pgd"), ("worst", "*")):
                row[column] = _interval([_seed_counts(store, res, attack, budget) for res in results])
            row["n"] = _seed_counts(store, results[0], None, budget)[1]
            flags = [f for res in results for r in res for f in r.flags]
            row["flags"] = sorted(f"{f.check}:{f.status}" for f in flags if f.status in ("warn", "fail"))
            row["flags_ok"] = sum(f.status == "ok" for f in flags)
            row["overfitting"] = [e for j in members if (e := _overfit_event(train_dir / j.model_id))]
            rows.append(row)
        return rows
    finally:
        store.close()


def _overfit_event(folder: Path) -> dict[str, Any] | None:
    summary = folder / "train.json"
    if not summary.exists():
        return None
    return json.loads(summary.read_text("utf-8")).get("catastrophic_overfitting")


def render_table(rows: Sequence[dict[str, Any]], protocol: Protocol) -> str:
    """Markdown: the table "architectures under one protocol"."""
    from robustarch.train import get_recipe
    from robustarch.zoo import dataset_shape

    recipe = get_recipe(protocol.recipe)
    head = (
        f"### Architectures under one protocol: {protocol.name}\n\n"
        f"{dataset_shape(protocol.dataset).label}; training: {recipe.name}"
        f"{' (' + recipe.adversarial.describe() + ')' if recipe.adversarial else ''}"
        f"{', ' + ', '.join(f'{k} {v}' for k, v in protocol.train.items()) if protocol.train else ''}; "
        f"evaluation: {', '.join(protocol.attacks)}. Accuracy in % (mean over seeds; 95% interval: "
        "Wilson over the examples for one seed, Student's t over the seeds for several). Worst case: "
        "correct on the clean image and under every attack.\n\n"
        "| architecture | training | params (M) | seeds | n | clean | PGD | worst case | flags "
        "| overfitting |\n"
        "| --- | --- | ---: | ---: | ---: | --- | --- | --- | --- | --- |\n"
    )

    def cell(v: tuple[float, float, float]) -> str:
        return f"{100 * v[0]:.1f} [{100 * v[1]:.1f}, {100 * v[2]:.1f}]" if v[0] == v[0] else "-"

    def flags(r: dict[str, Any]) -> str:
        return ", ".join(r["flags"]) or f"all {r['flags_ok']} ok"

    body = [
        f"| {r['architecture']} | {r['variant']} | {r['params'] / 1e6:.2f} | {len(r['seeds'])} | {r['n']} | "
        f"{cell(r['clean'])} | {cell(r['pgd'])} | {cell(r['worst'])} | {flags(r)} | "
        f"{len(r['overfitting']) or 'none'} |"
        for r in rows
    ]
    return head + "\n".join(body) + "\n"


def write_table(rows: Sequence[dict[str, Any]], protocol: Protocol, out: Path) -> None:
    (out / f"{TABLE_NAME}.md").write_text(render_table(rows, protocol), "utf-8")
    (out / f"{TABLE_NAME}.json").write_text(json.dumps(list(rows), indent=1, default=str) + "\n", "utf-8")
