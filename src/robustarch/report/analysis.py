"""Quantities the paper derives from its tables: DNHA (Figure 1) and robustness against parameter count
within a family (Figure 3), with the uncertainty the paper does not give."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from robustarch.report.paper import PAPER_COUNTERPART, matches_paper_setting
from robustarch.report.tables import CLEAN, WORST, Cell, Outcomes, Row, Table, as_outcomes
from robustarch.store import paired_interval

Z95 = statistics.NormalDist().inv_cdf(0.975)


@dataclass(frozen=True)
class DNHA:
    """Difference between the best NAS and the best handcrafted accuracy (the paper's Figure 1:
    DNHA = max(NAS) - max(Handcrafted)) for one dataset, attack setting and metric, as fractions.

    ``ci`` is a 95% interval for the difference. Where both models were evaluated on the same examples
    (per-example outcomes in the store align) it is the paired interval of Agresti and Min (2005): a Wald
    interval for a difference of paired proportions after adding 1/2 to each cell of the 2x2 table of
    per-example outcomes. Otherwise it is Newcombe's hybrid score interval from the two models' Wilson
    intervals (Newcombe 1998, method 10), which treats them as independent. ``ci_method`` says which.
    ``exceeds`` says whether the interval excludes 0, i.e. whether the NAS-vs-handcrafted difference is
    larger than its uncertainty. Neither interval accounts for the two maxima having been selected.

    ``selection_ci`` does: where every model of both groups has per-example outcomes on the same examples,
    it is a paired percentile bootstrap of max(NAS) - max(handcrafted) that resamples the examples and
    re-selects both maxima in every resample (:func:`selection_bootstrap_interval`).
    """

    table_id: str
    dataset: str
    dataset_label: str
    column: str
    label: str
    attack: str
    metric: str
    nas_model: str
    nas_value: float
    nas_ci: tuple[float, float] | None
    hand_model: str
    hand_value: float
    hand_ci: tuple[float, float] | None
    ci: tuple[float, float] | None
    exceeds: bool | None
    paper: float | None = None  # the same quantity from the paper's tables, where the setting matches
    ci_method: str = ""
    selection_ci: tuple[float, float] | None = None

    @property
    def value(self) -> float:
        return self.nas_value - self.hand_value


def newcombe_interval(
    p1: float, ci1: tuple[float, float], p2: float, ci2: tuple[float, float]
) -> tuple[float, float]:
    """95% interval of p1 - p2 from the two proportions' Wilson intervals (Newcombe 1998, method 10)."""
    (l1, u1), (l2, u2) = ci1, ci2
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def selection_bootstrap_interval(
    nas: np.ndarray, hand: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``max(nas accuracies) - max(hand accuracies)`` from per-example
    outcomes (boolean arrays, models x examples, the same examples in the same order in both).

    Each resample draws the examples with replacement (the same draw for every model, so the pairing is
    kept) and takes both maxima again, so the interval includes the uncertainty of which model is best
    (Efron & Tibshirani 1993, ch. 13). Seeded: the same outcomes give the same interval."""
    if nas.ndim != 2 or hand.ndim != 2 or nas.shape[1] != hand.shape[1] or nas.shape[1] == 0:
        raise ValueError("outcomes must be (models, examples) arrays over the same examples")
    n = nas.shape[1]
    # Examples with the same right/wrong pattern over the models are interchangeable, so drawing n examples
    # is drawing n patterns with probabilities count / n: the same bootstrap, on a few hundred categories.
    patterns, counts = np.unique(np.concatenate([nas, hand]).T, axis=0, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts / n, size=resamples)  # resamples x patterns
    acc = draws @ patterns.astype(np.float64) / n  # resamples x models
    diffs = acc[:, : len(nas)].max(1) - acc[:, len(nas) :].max(1)
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(diffs, [tail, 1.0 - tail])
    return float(lo), float(hi)


def _group_outcomes(
    store: Outcomes | None, rows: Sequence[Row], column: str, metric: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(example keys, models x examples outcomes) of the rows of a group that have a value in ``column``
    (the candidates for its maximum), if all of them cover the same examples."""
    keys, stacked = None, []
    for row in _candidates(rows, column, metric):
        got = cell_outcomes(store, row.cells[column], column == CLEAN, metric)
        if got is None or not len(got[0]) or (keys is not None and not np.array_equal(got[0], keys)):
            return None
        keys = got[0]
        stacked.append(got[1])
    return None if keys is None else (keys, np.stack(stacked))


def cell_outcomes(
    store: Outcomes | None, cell: Cell, clean: bool, metric: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(example keys, right or wrong per example) of a cell from the stored outcomes (the AND over runs
    for a per-example worst case); None where the cell has no per-example meaning."""
    if store is None or not cell.run_ids or cell.source.startswith(("minimum", "paper")):
        return None
    attr = f"{'clean' if clean else 'adv'}_correct{metric[-1]}"
    runs = [store.get(rid) for rid in cell.run_ids]
    if not all(np.array_equal(r["key"], runs[0]["key"]) for r in runs):
        return None
    return runs[0]["key"], np.logical_and.reduce([r[attr] for r in runs])


def _candidates(rows: Sequence[Row], column: str, metric: str) -> list[Row]:
    return [r for r in rows if column in r.cells and metric in r.cells[column].values]


def _best(rows: Sequence[Row], column: str, metric: str) -> Row | None:
    # ties go to the first row in table order, so the choice is deterministic
    return max(_candidates(rows, column, metric), key=lambda r: r.cells[column].values[metric], default=None)


def dnha(table: Table, with_paper: bool = True, store: Any = None) -> list[DNHA]:
    """DNHA for every column (clean, each attack, worst case) and metric of a main table. With ``store``
    the interval is paired wherever the two models' per-example outcomes align."""
    store = as_outcomes(store)
    out = []
    nas = [r for r in table.rows if r.family == "nas"]
    hand = [r for r in table.rows if r.family == "handcrafted"]
    for col in table.columns:
        for metric in table.metrics:
            best_nas, best_hand = _best(nas, col.key, metric), _best(hand, col.key, metric)
            if best_nas is None or best_hand is None:
                continue
            cn, ch = best_nas.cells[col.key], best_hand.cells[col.key]
            pn, ph = cn.values[metric], ch.values[metric]
            ci = exceeds = None
            method = ""
            on = cell_outcomes(store, cn, col.key == CLEAN, metric)
            oh = cell_outcomes(store, ch, col.key == CLEAN, metric)
            if on is not None and oh is not None and len(on[0]) and np.array_equal(on[0], oh[0]):
                a, b = on[1], oh[1]
                ci = paired_interval(
                    int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()), int((~a & ~b).sum())
                )
                method = "paired (Agresti-Min)"
            elif metric in cn.ci and metric in ch.ci:
                ci = newcombe_interval(pn, cn.ci[metric], ph, ch.ci[metric])
                method = "unpaired (Newcombe)"
            if ci is not None:
                exceeds = ci[0] > 0 or ci[1] < 0
            selection_ci = None
            group_nas = _group_outcomes(store, nas, col.key, metric)
            group_hand = _group_outcomes(store, hand, col.key, metric)
            if group_nas and group_hand and np.array_equal(group_nas[0], group_hand[0]):
                selection_ci = selection_bootstrap_interval(group_nas[1], group_hand[1])
            paper = None
            if (
                with_paper
                and not table.published
                and table.kind == "main"
                and col.key != WORST
                and table.adv_metric == "perturbed"
                and all(r.paper_config for r in table.rows)  # the paper's models, as it ran them
                and (col.attack == CLEAN or matches_paper_setting(col.attack, col.params))
            ):
                paper = paper_dnha().get((PAPER_COUNTERPART.get(table.dataset, ""), col.attack, metric))
            out.append(
                DNHA(
                    table.id,
                    table.dataset,
                    table.dataset_label,
                    col.key,
                    col.label,
                    col.attack,
                    metric,
                    best_nas.label,
                    pn,
                    cn.ci.get(metric),
                    best_hand.label,
                    ph,
                    ch.ci.get(metric),
                    ci,
                    exceeds,
                    paper,
                    method,
                    selection_ci,
                )
            )
    return out


@cache
def paper_dnha() -> dict[tuple[str, str, str], float]:
    """DNHA computed from the paper's Tables 1-3, keyed by (dataset, attack, metric)."""
    from robustarch.report.tables import paper_tables

    out = {}
    for table in paper_tables():
        if table.kind != "main":
            continue
        for d in dnha(table, with_paper=False):
            if d.column != WORST:
                out[(table.dataset, d.attack, d.metric)] = d.value
    return out


def dataset_scale_key(dataset: str) -> tuple[int, int, str]:
    """Order of datasets along Figure 1's "dataset scale" axis: number of classes, then input size."""
    from robustarch.zoo._registry import DATASETS

    shape = DATASETS.get(dataset)
    if shape is None:
        return (10**9, 10**9, dataset)
    return (shape.num_classes, shape.in_channels * shape.input_size**2, dataset)


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks starting at 1, ties sharing their average rank (as Spearman's rho needs)."""
    arr = np.asarray(values, dtype=float)
    order = np.argsort(arr, kind="stable")
    ranks = np.empty(len(arr))
    ranks[order] = np.arange(1, len(arr) + 1)
    for v in np.unique(arr):
        tied = arr == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def correlations(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """Pearson's r and Spearman's rho of y against x (None with fewer than 3 points or no spread)."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None, None
    pearson = float(np.corrcoef(np.asarray(x, float), np.asarray(y, float))[0, 1])
    spearman = float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])
    return pearson, spearman
