"""The report section "What the published numbers measure": per dataset and model, side by side, clean
accuracy; the released pipeline's clamp alone; each of the paper's attacks as the released code ran it
(the normalized-input flaw emulated, torchattacks 1.3 semantics); the same attacks at the same nominal eps
on [0,1] inputs; the standard attacks; and the paper's printed value where the model is the paper's
configuration. A short reading is generated from the numbers: which column follows the paper's pattern
across models and attacks, by Spearman's rank correlation with a 95% interval (Fisher's z with the
standard error of Bonett & Wright 2000, "Sample size requirements for estimating Pearson, Kendall and
Spearman correlations", Psychometrika 65).

Devaguptapu et al. 2020 (the study) fed normalized tensors to torchattacks 1.3, whose FGSM, R-FGSM and PGD
clamp to [0,1] after each step while its StepLL uses its own clip (``docs/attacks.md``). ``preset("explain")``
produces every number this section needs; it is built from the report's main tables only.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from robustarch.report.analysis import Z95, correlations
from robustarch.report.paper import (
    PAPER_COUNTERPART,
    PaperValue,
    attack_label,
    matches_paper_setting,
    paper_value,
)
from robustarch.report.tables import CLEAN, WORST, Cell, Column, Row, Table, describe_column
from robustarch.store import canonical_json

# rows of a model's block, in order, and how they are named
ATTACK_ROWS = ("clean", "clamp", "fgsm", "rfgsm", "stepll", "pgd", "worst")
PAPER_ATTACKS4 = ("fgsm", "rfgsm", "stepll", "pgd")
ROW_LABEL = {"clean": "Clean", "clamp": "Clamp alone (eps 0)", "worst": "Worst case"}
# columns: the released pipeline, the same nominal eps on [0,1], the standard attacks, the paper
SETTINGS = ("released", "plain", "standard", "paper")
SETTING_LABEL = {
    "released": "As released (emulated)",
    "plain": "Same eps on [0,1]",
    "standard": "Standard",
    "paper": "Paper (printed)",
}
# the dataset the paper's pattern is read from where the measured one is not the paper's
PATTERN_FALLBACK = "cifar10"
PAPER_TABLE = {"cifar10": "Table 1", "cifar100": "Table 2", "imagenet": "Table 3"}
PAPER_DATASET = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet"}


def row_label(attack_row: str) -> str:
    return ROW_LABEL.get(attack_row) or attack_label(attack_row)


@dataclass(frozen=True)
class PatternFit:
    """Spearman's rho between a column's accuracies and the paper's over (model, attack) pairs."""

    setting: str
    rho: float | None
    ci: tuple[float, float] | None
    n: int


@dataclass
class ExplainRow:
    """One model: its cells by (attack row, setting); ``paper`` holds the printed values (paper's
    configuration only)."""

    row: Row
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    paper: dict[str, PaperValue] = field(default_factory=dict)

    def value(self, attack_row: str, setting: str) -> float | None:
        if setting == "paper":
            pv = self.paper.get(attack_row)
            return None if pv is None else pv.fraction
        cell = self.cells.get((attack_row, setting))
        return None if cell is None else cell.values.get("top1")


@dataclass
class ExplainSection:
    dataset: str
    dataset_label: str
    settings: list[str]
    setting_labels: dict[str, str]
    rows: list[ExplainRow]
    descriptions: dict[tuple[str, str], str]  # (attack row, setting) -> the attack's describe()
    fits: list[PatternFit]
    reading: list[str]
    reference: str  # where the paper's pattern comes from
    metric: str = "top1"


# -- columns of each setting -----------------------------------------------------------------------------
def _setting_of(table: Table) -> str | None:
    if table.kind != "main" or table.published:
        return None
    if table.profile == "paper" and table.adv_metric == "perturbed":
        return "released" if table.emulate_normalized else "plain"
    if table.profile == "standard" and not table.emulate_normalized:
        return "standard"
    return None


def _standard_params(dataset: str) -> dict[str, str]:
    """Canonical parameters of the standard preset's attacks for ``dataset`` (the explain preset's)."""
    from robustarch import attacks as ra

    try:
        standard = ra.preset("standard", dataset)
    except Exception:  # a dataset robustarch does not know (a store from elsewhere): no standard columns
        return {}
    return {k: canonical_json(a.params) for k, a in standard.items()}


def _pick_columns(table: Table, setting: str, standard: dict[str, str]) -> dict[str, Column]:
    """The table's column for each attack row of ``setting`` (first match in table order)."""
    out: dict[str, Column] = {}
    for col in table.columns:
        if col.key == CLEAN:
            out.setdefault("clean", col)
        elif col.key == WORST:
            out.setdefault("worst", col)
        elif setting == "released" and col.params.get("eps") == 0:
            out.setdefault("clamp", col)
        elif col.attack in PAPER_ATTACKS4 and _is_setting(col, setting, standard):
            out.setdefault(col.attack, col)
    return out


def _is_setting(col: Column, setting: str, standard: dict[str, str]) -> bool:
    """A paper attack at the paper's parameters (released / plain), or the standard preset's attack."""
    if setting == "standard":
        return canonical_json(col.params) == standard.get(col.attack)
    return matches_paper_setting(col.attack, col.params)


def explain_sections(tables: Sequence[Table]) -> list[ExplainSection]:
    """One section per dataset that has the released pipeline's numbers and at least one other column."""
    by_dataset: dict[str, dict[str, Table]] = defaultdict(dict)
    for t in tables:
        setting = _setting_of(t)
        if setting is not None:
            by_dataset[t.dataset].setdefault(setting, t)
    out = []
    for dataset, tabs in sorted(by_dataset.items()):
        section = _section(dataset, tabs)
        if section is not None:
            out.append(section)
    return out


def _section(dataset: str, tabs: dict[str, Table]) -> ExplainSection | None:
    if "released" not in tabs or len(tabs) < 2:
        return None
    standard = _standard_params(dataset)
    columns = {s: _pick_columns(t, s, standard) for s, t in tabs.items()}
    if not any(a in columns["released"] for a in PAPER_ATTACKS4):
        return None
    rows: dict[str, ExplainRow] = {}
    for setting, table in tabs.items():
        for row in table.rows:
            er = rows.setdefault(row.key, ExplainRow(row))
            for attack_row, col in columns[setting].items():
                if col.key in row.cells and "top1" in row.cells[col.key].values:
                    er.cells[(attack_row, setting)] = row.cells[col.key]
    for er in rows.values():
        if er.row.paper_config:
            for attack_row in ("clean", *PAPER_ATTACKS4):
                pv = paper_value(dataset, er.row.model, attack_row, "top1")
                if pv is not None:
                    er.paper[attack_row] = pv
    ordered = sorted(rows.values(), key=lambda r: _table_rank(tabs, r.row.key))
    settings = [s for s in SETTINGS if s in tabs or (s == "paper" and any(r.paper for r in ordered))]
    descriptions = {
        (attack_row, s): _description(tabs[s], col)
        for s, cols in columns.items()
        for attack_row, col in cols.items()
    }
    labels = dict(SETTING_LABEL)
    budgets = [c.params.get("eps") for a, c in columns.get("standard", {}).items() if a in PAPER_ATTACKS4]
    if budgets and isinstance(budgets[0], int | float):
        labels["standard"] = f"Standard ({budgets[0] * 255:.4g}/255)"
    reference, pattern = _pattern(dataset, ordered)
    fits = [_fit(s, ordered, pattern) for s in settings if s != "paper"]
    label = next(iter(tabs.values())).dataset_label
    section = ExplainSection(dataset, label, settings, labels, ordered, descriptions, fits, [], reference)
    section.reading = reading(section)
    return section


def _table_rank(tabs: dict[str, Table], key: str) -> tuple[int, int]:
    for i, s in enumerate(SETTINGS[:3]):
        if s in tabs:
            keys = [r.key for r in tabs[s].rows]
            if key in keys:
                return (i, keys.index(key))
    return (len(SETTINGS), 0)


def _description(table: Table, col: Column) -> str:
    if col.key == CLEAN:
        return "no attack"
    if col.key == WORST:
        # e.g. "Worst case (eps <= 8/255)" -> "per example, over every 'standard' attack run (eps <= 8/255)"
        return col.label.replace("Worst case", f"per example, over every {table.profile!r} attack run", 1)
    return describe_column(col.attack, table.profile, col.params)


# -- the paper's pattern -----------------------------------------------------------------------------------
def _pattern(dataset: str, rows: Sequence[ExplainRow]) -> tuple[str, dict[tuple[str, str], float]]:
    """The paper's printed accuracies the columns are compared with, keyed by (model, attack): for the
    paper's dataset its own table; otherwise Table 1's values for the same architectures, as a pattern
    (the paper did not evaluate this dataset, so no printed value stands beside a measured one)."""
    counterpart = PAPER_COUNTERPART.get(dataset)
    source = counterpart or PATTERN_FALLBACK
    pattern = {}
    for er in rows:
        if er.row.random_init or (counterpart and not er.row.paper_config):
            continue
        for attack in PAPER_ATTACKS4:
            pv = paper_value(source, er.row.model, attack, "top1")
            if pv is not None:
                pattern[(er.row.key, attack)] = pv.fraction
    table = PAPER_TABLE[source]
    if counterpart:
        return f"the paper's {table} ({PAPER_DATASET[source]}) for the same models", pattern
    return (
        f"the paper's {PAPER_DATASET[source]} values ({table}) for the same architectures, as a pattern "
        f"only: the paper did not evaluate this dataset",
        pattern,
    )


def spearman_interval(rho: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """95% interval of Spearman's rho from ``n`` pairs: Fisher's z with Bonett & Wright's (2000) standard
    error ``sqrt((1 + rho^2 / 2) / (n - 3))``; None for n < 4."""
    if n < 4:
        return None
    r = max(min(rho, 1 - 1e-12), -1 + 1e-12)
    half = z * math.sqrt((1 + rho * rho / 2) / (n - 3))
    centre = math.atanh(r)
    return (math.tanh(centre - half), math.tanh(centre + half))


def _fit(setting: str, rows: Sequence[ExplainRow], pattern: dict[tuple[str, str], float]) -> PatternFit:
    xs, ys = [], []
    for er in rows:
        for attack in PAPER_ATTACKS4:
            value, ref = er.value(attack, setting), pattern.get((er.row.key, attack))
            if value is not None and ref is not None:
                xs.append(ref)
                ys.append(value)
    _pearson, rho = correlations(xs, ys)
    ci = None if rho is None else spearman_interval(rho, len(xs))
    return PatternFit(setting, rho, ci, len(xs))


# -- the reading --------------------------------------------------------------------------------------------
def _pp(x: float) -> str:
    return f"{100 * x:.1f}"


def _mean_drop(section: ExplainSection, attack_row: str, setting: str) -> tuple[float, int] | None:
    drops = []
    for er in section.rows:
        clean, value = er.value("clean", setting), er.value(attack_row, setting)
        if clean is not None and value is not None and not er.row.random_init:
            drops.append(clean - value)
    return (sum(drops) / len(drops), len(drops)) if drops else None


def reading(section: ExplainSection) -> list[str]:
    """A few sentences generated from the section's numbers (every number in them is in the table)."""
    out = []
    clamp = _mean_drop(section, "clamp", "released")
    if clamp is not None:
        out.append(
            f"The released pipeline's clamp alone (eps 0) lowers top-1 accuracy by {_pp(clamp[0])} "
            f"percentage points on average over {clamp[1]} model(s)."
        )
    parts = []
    for attack in PAPER_ATTACKS4:
        released, plain = _mean_drop(section, attack, "released"), _mean_drop(section, attack, "plain")
        if released is not None:
            text = f"{attack_label(attack)} {_pp(released[0])} pp as released"
            if plain is not None:
                text += f" vs {_pp(plain[0])} pp on [0,1]"
            parts.append(text)
    if parts:
        out.append("Mean loss from clean accuracy: " + "; ".join(parts) + ".")
    fits = [f for f in section.fits if f.rho is not None]
    if not fits:
        out.append(f"No rank correlation with {section.reference}: fewer than 3 comparable values.")
        return out
    described = []
    for f in sorted(fits, key=lambda f: -(f.rho or 0.0)):
        ci = "" if f.ci is None else f" [{f.ci[0]:+.2f}, {f.ci[1]:+.2f}]"
        described.append(f"{section.setting_labels[f.setting]} rho = {f.rho:+.2f}{ci} (n = {f.n})")
    best = max(fits, key=lambda f: f.rho or 0.0)
    others = [f for f in fits if f is not best]
    sentence = (
        f"Rank correlation (Spearman, 95% interval) of each column with {section.reference}, over (model, "
        f"attack) pairs: " + "; ".join(described) + ". "
        f"{section.setting_labels[best.setting]} follows the paper's pattern most closely"
    )
    if best.ci is not None and others and any(o.ci is not None and o.ci[1] >= best.ci[0] for o in others):
        sentence += ", but the intervals overlap, so the ranking of the columns is not established"
    out.append(sentence + ".")
    return out
