"""Report tables in the layout of the paper's Tables 1-4, built only from a results store (or, for
``--paper-only``, only from the paper's published values).

One main table per (dataset, profile, adversarial metric, input emulation): models as rows; Clean, FGSM,
R-FGSM, StepLL, PGD and any further attack as columns (top-1, plus top-5 on ImageNet-scale datasets); a
worst-case-over-attacks column; the paper's published value beside each measured one where the paper ran
the same setting. One family table per architecture family with several members (the paper's Table 4).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robustarch.report.paper import (
    PAPER_ATTACKS,
    PAPER_COUNTERPART,
    PaperValue,
    attack_label,
    is_paper_configuration,
    is_random_init,
    matches_paper_setting,
    model_info,
    paper_data,
    paper_params_m,
    paper_value,
)
from robustarch.store import RunResult, canonical_json, wilson_interval

log = logging.getLogger(__name__)

METRICS = ("top1", "top5")
WORST = "worst"  # column key of the worst case over attacks
CLEAN = "clean"


@dataclass(frozen=True)
class FlagRef:
    """A reliability flag of the run behind a cell."""

    run_id: str
    check: str
    status: str
    value: float | None
    detail: str


@dataclass
class Cell:
    """One table cell: accuracies (fractions) with their 95% Wilson intervals, the run(s) they come from
    and the paper's published value for the same setting."""

    values: dict[str, float]  # metric -> accuracy in [0, 1]
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    n: int | None = None
    run_ids: tuple[str, ...] = ()
    source: str = ""  # how the number was obtained (clean run, per-example worst case, ...)
    paper: dict[str, PaperValue] = field(default_factory=dict)
    flags: tuple[FlagRef, ...] = ()

    def diff(self, metric: str) -> float | None:
        """Measured minus published, in fractions."""
        if metric in self.values and metric in self.paper:
            return self.values[metric] - self.paper[metric].fraction
        return None

    def paper_in_ci(self, metric: str) -> bool | None:
        if metric in self.ci and metric in self.paper:
            lo, hi = self.ci[metric]
            return lo <= self.paper[metric].fraction <= hi
        return None

    @property
    def worst_status(self) -> str:
        statuses = {f.status for f in self.flags}
        return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


@dataclass(frozen=True)
class Column:
    key: str
    attack: str
    params: dict[str, Any]
    label: str


@dataclass
class Row:
    key: str
    model: str
    label: str
    family: str  # handcrafted | nas
    method: str
    params_count: int | None
    weights_hash: str = ""
    cells: dict[str, Cell] = field(default_factory=dict)
    params_printed: str | None = None  # the paper's printed parameter count (paper-only tables)
    random_init: bool = False  # an untrained network (marked in every table and figure)
    paper_config: bool = False  # the paper's configuration: its printed values may stand beside ours

    @property
    def params_m(self) -> float | None:
        if self.params_count is not None:
            return self.params_count / 1e6
        return float(self.params_printed) if self.params_printed else None


@dataclass
class Table:
    id: str
    title: str
    kind: str  # main | family | paper
    dataset: str
    dataset_label: str
    profile: str
    adv_metric: str
    metrics: list[str]
    columns: list[Column]
    rows: list[Row]
    paper_ref: str | None = None  # the paper table this one mirrors
    notes: list[str] = field(default_factory=list)
    emulate_normalized: bool = False
    published: bool = False  # the paper's own numbers, not measurements

    @property
    def attack_columns(self) -> list[Column]:
        return [c for c in self.columns if c.key not in (CLEAN, WORST)]


# -- helpers ------------------------------------------------------------------------------------------
def slug(text: str) -> str:
    """A file-name-safe form of an id built from stored strings (dataset, profile, family names): only
    ``[a-z0-9._-]``, no ``..``, no separators; where anything had to change, a short hash of the original is
    appended so that two different ids never share a file."""
    import hashlib

    safe = re.sub(r"[^a-z0-9_-]+", "-", text.lower().replace(".", "-"))
    safe = re.sub(r"-{2,}", "-", safe).strip("-_") or "x"
    if safe == text:
        return safe
    return f"{safe[:80]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def column_key(attack: str, params: dict[str, Any]) -> str:
    return CLEAN if attack == CLEAN else f"{attack}:{canonical_json(params)}"


def _fmt_param(value: Any) -> str:
    if isinstance(value, float):
        frac = value * 255
        if value > 0 and abs(frac - round(frac)) < 1e-6 and round(frac) < 64:
            return f"{round(frac)}/255"
        return f"{value:g}"
    return str(value)


def describe_column(attack: str, profile: str, params: dict[str, Any]) -> str:
    """How a stored attack setting is named for a reader: the attack's own ``describe()`` (e.g. ``PGD-10
    (8/255, step 2/255, random start)``), rebuilt from its record; where the record cannot be rebuilt (a
    store from another version), the attack's label and its parameters as ``name value``, never JSON."""
    from robustarch import attacks as ra
    from robustarch.errors import RobustarchError

    try:
        return ra.from_record(attack, profile, params).describe()
    except (RobustarchError, TypeError, ValueError):
        shown = [
            f"{k} {_fmt_param(v)}" for k, v in sorted(params.items()) if isinstance(v, int | float | str)
        ]
        return f"{attack_label(attack)} ({', '.join(shown)})" if shown else attack_label(attack)


def _column_labels(columns: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """Attack labels, with the distinguishing parameters added where one attack has several settings."""
    by_attack: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for attack, params in columns:
        by_attack[attack].append(params)
    labels = {}
    for attack, params in columns:
        label = "Clean" if attack == CLEAN else attack_label(attack)
        settings = by_attack[attack]
        if len(settings) > 1:
            names = sorted({k for p in settings for k in p})
            differing = [k for k in names if len({canonical_json(p.get(k)) for p in settings}) > 1]
            if "eps" in differing and "alpha" in differing and _alpha_follows_eps(settings):
                differing.remove("alpha")  # a step size scaled with eps says nothing new
            label += " (" + ", ".join(f"{k}={_fmt_param(params.get(k))}" for k in differing) + ")"
        labels[column_key(attack, params)] = label
    return labels


def _alpha_follows_eps(settings: Sequence[dict[str, Any]]) -> bool:
    ratios = set()
    for p in settings:
        eps, alpha = p.get("eps"), p.get("alpha")
        if not isinstance(eps, int | float) or not isinstance(alpha, int | float) or not eps:
            return False
        ratios.add(round(alpha / eps, 9))
    return len(ratios) == 1


def _order(attack: str, params: dict[str, Any]) -> tuple[Any, ...]:
    rank = PAPER_ATTACKS.index(attack) if attack in PAPER_ATTACKS else len(PAPER_ATTACKS)
    eps = params.get("eps")
    return (rank, attack, eps if isinstance(eps, int | float) else math.inf, canonical_json(params))


def metrics_for(dataset: str) -> list[str]:
    """Top-1 everywhere; top-5 too on ImageNet-scale datasets, as in the paper's Table 3."""
    from robustarch.zoo._registry import DATASETS

    shape = DATASETS.get(dataset)
    return ["top1", "top5"] if (shape is not None and shape.family == "imagenet") else ["top1"]


def _flags(run: RunResult) -> tuple[FlagRef, ...]:
    return tuple(FlagRef(run.run_id, f.check, f.status, f.value, f.detail) for f in run.flags)


def _cell_from_run(run: RunResult, clean: bool, source: str, paper: dict[str, PaperValue]) -> Cell:
    prefix = "clean" if clean else "adv"
    return Cell(
        values={m: getattr(run, f"{prefix}_{m}") for m in METRICS},
        ci={m: tuple(getattr(run, f"{prefix}_{m}_ci")) for m in METRICS},
        counts={m: getattr(run, f"{prefix}_{m}_count") for m in METRICS},
        n=run.n,
        run_ids=(run.run_id,),
        source=source if run.complete else f"{source}; UNFINISHED: {run.n} of {run.n_planned} examples",
        paper=paper,
        flags=_flags(run),
    )


def _pick(runs: Sequence[RunResult]) -> RunResult:
    """Of several runs for one cell (other seeds, subsets, dtypes...), the largest, then the newest."""
    return max(runs, key=lambda r: (r.complete, r.n, r.finished_at or "", r.created_at, r.run_id))


RANDOM_INIT_MARK = " (random init)"


def _paper_for(
    row: Row, dataset: str, attack: str, params: dict[str, Any], adv_metric: str, metrics: Iterable[str]
) -> dict[str, PaperValue]:
    """The published values for this cell, only where the row is the paper's configuration (its
    architecture unchanged, trained weights, its dataset) and the paper ran the same setting."""
    if not row.paper_config:
        return {}
    if attack != CLEAN and (adv_metric != "perturbed" or not matches_paper_setting(attack, params)):
        return {}
    model = row.model
    out = {}
    for m in metrics:
        value = paper_value(dataset, model, attack, m)
        if value is not None:
            out[m] = value
    return out


class Outcomes:
    """Per-example outcomes of stored runs as numpy arrays, read once per run from the store.

    ``get(run_id)`` gives ``key`` (n x 2: example id, label) and boolean arrays named like the
    :class:`~robustarch.store.ExampleOutcome` fields (``clean_correct1``, ``adv_correct5``, ...).
    """

    FIELDS = ("clean_correct1", "clean_correct5", "adv_correct1", "adv_correct5")

    def __init__(self, store: Any):
        self.store = store
        self._runs: dict[str, dict[str, np.ndarray]] = {}

    def get(self, run_id: str) -> dict[str, np.ndarray]:
        if run_id not in self._runs:
            outs = self.store.examples(run_id)
            arrays = {f: np.fromiter((getattr(o, f) for o in outs), bool, len(outs)) for f in self.FIELDS}
            arrays["key"] = np.array([(o.example_id, o.label) for o in outs], dtype=np.int64).reshape(-1, 2)
            self._runs[run_id] = arrays
        return self._runs[run_id]


def as_outcomes(store: Any) -> Outcomes | None:
    return store if store is None or isinstance(store, Outcomes) else Outcomes(store)


def _worst_case(store: Any, row: Row, columns: Sequence[Column], metrics: Sequence[str]) -> Cell | None:
    """Worst case over the row's attacks: per example where all runs cover the same examples (an example
    counts as robust only if every attack left it correct), else the minimum of the attacks' accuracies."""
    cells = [row.cells[c.key] for c in columns if c.key in row.cells]
    if len(cells) < 2:
        return None
    run_ids = tuple(rid for c in cells for rid in c.run_ids)
    flags = tuple(f for c in cells for f in c.flags)
    outcomes = [store.get(rid) for rid in run_ids] if store is not None else []
    if (
        outcomes
        and len(outcomes[0]["key"])
        and all(np.array_equal(o["key"], outcomes[0]["key"]) for o in outcomes)
    ):
        n = len(outcomes[0]["key"])
        values, ci, counts = {}, {}, {}
        for m in METRICS:
            attr = f"adv_correct{m[-1]}"
            k = int(np.logical_and.reduce([o[attr] for o in outcomes]).sum())
            values[m], ci[m], counts[m] = k / n, wilson_interval(k, n), k
        return Cell(
            values, ci, counts, n, run_ids, f"per-example worst case over {len(cells)} attacks", flags=flags
        )
    values, ci, counts = {}, {}, {}
    for m in metrics:
        have = [c for c in cells if m in c.values]
        if not have:
            continue
        low = min(have, key=lambda c: c.values[m])
        values[m] = low.values[m]
        if m in low.ci:
            ci[m], counts[m] = low.ci[m], low.counts[m]
    why = "examples differ between runs" if outcomes else "no per-example outcomes"
    return Cell(values, ci, counts, None, run_ids, f"minimum over {len(cells)} attacks ({why})", flags=flags)


def sweep_key(params: dict[str, Any]) -> str:
    """Settings that make one eps sweep: everything but eps and the step size (which follows eps)."""
    return canonical_json({k: v for k, v in params.items() if k not in ("eps", "alpha")})


def _eps(col: Column) -> float | None:
    eps = col.params.get("eps")
    return float(eps) if isinstance(eps, int | float) and not isinstance(eps, bool) else None


def _worst_columns(columns: list[Column]) -> tuple[list[Column], str]:
    """The attacks the worst-case column combines, and its label.

    Any perturbation inside a smaller L-inf ball is inside a larger one, so the worst case at a budget may
    combine every attack of that budget or less. The budget is the largest eps among attacks run at one
    eps only; eps-sweep points above it (e.g. PGD at 16/255 beside an 8/255 study) are left out.
    """
    sweeps: dict[tuple[str, str], set[float]] = defaultdict(set)
    for c in columns:
        if _eps(c) is not None:
            sweeps[(c.attack, sweep_key(c.params))].add(_eps(c))
    single = [
        _eps(c) for c in columns if _eps(c) is not None and len(sweeps[(c.attack, sweep_key(c.params))]) == 1
    ]
    if not single:
        return columns, "Worst case"
    budget = max(single)
    kept = [c for c in columns if _eps(c) is None or _eps(c) <= budget * (1 + 1e-9)]
    if len(kept) == len(columns):
        return kept, "Worst case"
    return kept, f"Worst case (eps <= {_fmt_param(budget)})"


# -- from a store -------------------------------------------------------------------------------------
def tables_from_results(results: Sequence[RunResult], store: Any = None) -> list[Table]:
    """Main and family tables from stored runs. ``store`` (a :class:`robustarch.store.Store` or an
    :class:`Outcomes` over one) supplies the per-example outcomes for the worst-case column; without it
    the column is the minimum over attacks."""
    store = as_outcomes(store)
    groups: dict[tuple[str, str, str, bool], list[RunResult]] = defaultdict(list)
    clean_anywhere: dict[tuple[str, str, str], list[RunResult]] = defaultdict(list)
    for run in results:
        if run.n == 0:
            log.info("run %s has no stored examples yet; left out", run.run_id)
            continue
        # the engine records the flaw switch in meta; the attack's parameters carry it as well
        emulate = bool(run.meta.get("emulate_normalized", run.attack_params.get("emulate_normalized_inputs")))
        if run.attack == CLEAN:
            # clean runs belong to no attack profile (the engine stores them as profile "none"); every
            # table of their dataset takes its Clean column from them
            clean_anywhere[(run.dataset, run.model, run.weights_hash)].append(run)
        else:
            groups[(run.dataset, run.profile, run.adv_metric, emulate)].append(run)
    attacked = {d for (d, *_rest) in groups}
    for (dataset, _model, _hash), runs in clean_anywhere.items():
        if dataset not in attacked:  # clean evaluations only: one table of clean accuracies
            groups[(dataset, _pick(runs).profile, "perturbed", False)].extend(runs)

    tables: list[Table] = []
    for (dataset, profile, adv_metric, emulate), runs in sorted(groups.items()):
        attack_runs = [r for r in runs if r.attack != CLEAN]
        metrics = metrics_for(dataset)
        label = runs[0].dataset_label
        settings = sorted(
            {(r.attack, canonical_json(r.attack_params)) for r in attack_runs},
            key=lambda s: _order(s[0], json.loads(s[1])),
        )
        settings_d = [(a, json.loads(p)) for a, p in settings]
        labels = _column_labels([(CLEAN, {}), *settings_d])
        columns = [Column(CLEAN, CLEAN, {}, "Clean")]
        columns += [Column(column_key(a, p), a, p, labels[column_key(a, p)]) for a, p in settings_d]

        hashes: dict[str, set[str]] = defaultdict(set)
        for r in runs:
            hashes[r.model].add(r.weights_hash)
        rows: dict[str, Row] = {}
        by_cell: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
        for r in runs:
            row_key = r.model if len(hashes[r.model]) == 1 else f"{r.model}@{r.weights_hash[:8]}"
            if row_key not in rows:
                info = model_info(r.model)
                name = info.get("label", r.model)
                name = name if row_key == r.model else f"{name} [{r.weights_hash[:8]}]"
                random_init = is_random_init(r.meta, r.weights_hash)
                rows[row_key] = Row(
                    row_key,
                    r.model,
                    name + (RANDOM_INIT_MARK if random_init else ""),
                    r.model_family,
                    r.method,
                    r.params_count,
                    r.weights_hash,
                    random_init=random_init,
                    paper_config=is_paper_configuration(dataset, r.model, r.meta, r.weights_hash),
                )
            by_cell[(row_key, column_key(r.attack, r.attack_params))].append(r)

        for (row_key, col_key), cell_runs in by_cell.items():
            run = _pick(cell_runs)
            paper = _paper_for(rows[row_key], dataset, run.attack, run.attack_params, adv_metric, metrics)
            source = "clean run" if run.attack == CLEAN else f"{run.attack} run"
            if len(cell_runs) > 1:
                source += f" (1 of {len(cell_runs)} stored runs for this cell: the largest, newest)"
            rows[row_key].cells[col_key] = _cell_from_run(run, run.attack == CLEAN, source, paper)
        for row in rows.values():
            if CLEAN in row.cells:
                continue
            # no clean run in this group: a clean run of the same weights under another profile, else the
            # clean pass the attack runs made on their own examples
            other = clean_anywhere.get((dataset, row.model, row.weights_hash))
            paper = _paper_for(row, dataset, CLEAN, {}, adv_metric, metrics)
            if other:
                subsets = {r.subset for (rk, _), rs in by_cell.items() if rk == row.key for r in rs}
                # prefer a clean run over the same examples as the attacks
                same = [r for r in other if r.subset in subsets]
                run = _pick(same or other)
                row.cells[CLEAN] = _cell_from_run(run, True, "clean run", paper)
            else:
                runs_of_row = [r for (rk, _), rs in by_cell.items() if rk == row.key for r in rs]
                if runs_of_row:
                    run = _pick(runs_of_row)
                    row.cells[CLEAN] = _cell_from_run(run, True, f"clean pass of the {run.attack} run", paper)

        attack_cols, worst_label = _worst_columns([c for c in columns if c.key != CLEAN])
        if len(attack_cols) >= 2:
            worst = Column(WORST, WORST, {}, worst_label)
            any_worst = False
            for row in rows.values():
                cell = _worst_case(store, row, attack_cols, metrics)
                if cell is not None:
                    row.cells[WORST] = cell
                    any_worst = True
            if any_worst:
                columns.append(worst)

        ordered = sorted(
            rows.values(), key=lambda r: (r.family != "handcrafted", _model_rank(r.model), r.key)
        )
        table_slug = f"{dataset}-{profile}-{adv_metric}" + ("-emulated" if emulate else "")
        title = f"{label}: accuracy (%) under attack, profile {profile!r}"
        if adv_metric != "perturbed":
            title += f", {adv_metric} accuracy"
        if emulate:
            title += ", EMULATED normalized-input attacks (the released code's flaw)"
        notes = []
        if any(r.random_init for r in ordered):
            notes.append(
                f"Rows marked{RANDOM_INIT_MARK} are untrained networks (a random initialisation under the "
                "study's seed): their accuracies say nothing about the architecture."
            )
        if any(not r.paper_config and r.model in paper_data()["models"] for r in ordered) and (
            dataset in PAPER_COUNTERPART
        ):
            notes.append(
                "The paper's printed values stand only beside rows that are the paper's configuration "
                "(its architecture without overrides, trained weights)."
            )
        counterpart = PAPER_COUNTERPART.get(dataset)
        paper_ref = {"cifar10": "Table 1", "cifar100": "Table 2", "imagenet": "Table 3"}.get(
            counterpart or ""
        )
        if counterpart and counterpart != dataset:
            paper_label = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet"}[
                counterpart
            ]
            notes.append(
                f"Measured on {label}; paper values are the paper's {paper_label} numbers ({paper_ref})."
            )
        table = Table(
            slug(f"main-{table_slug}"),
            title,
            "main",
            dataset,
            label,
            profile,
            adv_metric,
            metrics,
            columns,
            ordered,
            paper_ref,
            notes,
            emulate,
        )
        tables.append(table)
        tables.extend(_family_tables(table))
    return tables


def _model_rank(model: str) -> int:
    models = list(paper_data()["models"])
    return models.index(model) if model in models else len(models)


def architecture_family(model: str, method: str) -> str:
    """The family a model's size varies within: the paper's grouping for its models (ResNet-18/50,
    DenseNet-121/169, the DenseNAS variants), else the stored method without a trailing depth."""
    return model_info(model).get("method") or re.sub(r"-\d+$", "", method)


def _family_tables(main: Table) -> list[Table]:
    """One table per architecture method with two or more members, rows in increasing parameter count
    (the paper's Table 4 for DenseNAS)."""
    by_method: dict[str, list[Row]] = defaultdict(list)
    for row in main.rows:
        by_method[architecture_family(row.model, row.method)].append(row)
    out = []
    for method, rows in sorted(by_method.items()):
        if len({r.model for r in rows}) < 2:
            continue
        rows = sorted(rows, key=lambda r: (r.params_m if r.params_m is not None else math.inf, r.key))
        paper_ref = (
            "Table 4" if method == "DenseNAS" and PAPER_COUNTERPART.get(main.dataset) == "imagenet" else None
        )
        out.append(
            Table(
                slug(f"family-{method.lower().replace(' ', '_')}-{main.id.removeprefix('main-')}"),
                f"{main.dataset_label}: the {method} family by parameter count, profile {main.profile!r}",
                "family",
                main.dataset,
                main.dataset_label,
                main.profile,
                main.adv_metric,
                main.metrics,
                main.columns,
                rows,
                paper_ref,
                list(main.notes),
                main.emulate_normalized,
            )
        )
    return out


# -- the paper's own numbers --------------------------------------------------------------------------
def paper_tables() -> list[Table]:
    """Tables 1-4 as published, as report tables (no intervals: the paper gives no example counts)."""
    data = paper_data()
    out = []
    for t in data["tables"]:
        columns = [
            Column(a, a, data["attacks"][a]["params"], data["attacks"][a]["label"]) for a in t["attacks"]
        ]
        rows = []
        for r in t["rows"]:
            info = data["models"][r["model"]]
            row = Row(
                r["model"],
                r["model"],
                info["label"],
                info["family"],
                info["method"],
                None,
                params_printed=r.get("params_m") or paper_params_m().get((t["dataset"], r["model"])),
            )
            for i, a in enumerate(t["attacks"]):
                pv = {m: PaperValue(t["id"], t["dataset"], r["model"], a, m, r[m][i]) for m in t["metrics"]}
                row.cells[a] = Cell(
                    {m: v.fraction for m, v in pv.items()}, source=f"paper {t['caption']}", paper=pv
                )
            rows.append(row)
        worst = Column(WORST, WORST, {}, "Worst case")
        for row in rows:
            vals = {}
            for m in t["metrics"]:
                attack_vals = [row.cells[a].values[m] for a in t["attacks"] if a != CLEAN]
                vals[m] = min(attack_vals)
            row.cells[WORST] = Cell(vals, source="minimum over the paper's attacks (no per-example data)")
        kind = "family" if t.get("family") else "main"
        out.append(
            Table(
                f"paper-{t['id']}",
                t["caption"],
                kind,
                t["dataset"],
                t["dataset_label"],
                "paper",
                "perturbed",
                list(t["metrics"]),
                [*columns, worst],
                rows,
                t["caption"].split(":")[0],
                list(data.get("quirks", [])) if t["id"] == "table3" else [],
                published=True,
            )
        )
    return out
