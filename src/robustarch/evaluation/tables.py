"""Result tables printed by ``robustarch evaluate`` / ``study run`` and :meth:`Results.table`, read from the
store: text (one row per run, or the paper's models x attacks grid), JSON and CSV records."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import Any

from robustarch.store import RunResult

RECORD_FIELDS = (
    "model", "dataset", "subset", "attack", "description", "profile", "metric", "eps", "n", "clean_top1",
    "clean_top5", "adv_top1", "adv_top5", "ci95_lo", "ci95_hi", "linf_max", "flags", "run_id",
)  # fmt: skip


def _pct(x: float) -> str:
    return "  n/a" if math.isnan(x) else f"{100 * x:5.2f}"


def _flags(r: RunResult) -> str:
    bad = [f"{f.check}:{f.status}" for f in r.flags if f.status != "ok"]
    return ", ".join(bad) if bad else ("ok" if r.flags else "-")


def format_results(results: Sequence[RunResult]) -> str:
    """One row per run: accuracies (%) with 95% Wilson intervals, realized L-inf, flags."""
    head = (
        f"{'model':<14} {'attack':<10} {'profile':<8} {'eps':>8} {'n':>6}  {'top-1 %':>7} {'95% CI':>13}  "
        f"{'top-5 %':>7}  {'Linf max':>9}  flags"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        clean = r.attack == "clean"
        acc1, ci, acc5 = (
            (r.clean_top1, r.clean_top1_ci, r.clean_top5)
            if clean
            else (r.adv_top1, r.adv_top1_ci, r.adv_top5)
        )
        label = r.meta.get("label", r.attack)
        eps = r.attack_params.get("eps")
        lines.append(
            f"{r.model:<14} {label:<10} {r.profile:<8} {'' if eps is None else f'{eps:.4g}':>8} {r.n:>6}  "
            f"{_pct(acc1):>7} {_pct(ci[0]).strip() + '-' + _pct(ci[1]).strip():>13}  {_pct(acc5):>7}  "
            f"{r.linf_max * 255:>6.2f}/255  {_flags(r)}"
        )
    return "\n".join(lines)


def format_grid(results: Sequence[RunResult]) -> str:
    """Per dataset: models as rows, attacks as columns (top-1 %), as the paper's tables."""
    out = []
    for dataset in dict.fromkeys(r.dataset for r in results):
        rows = [r for r in results if r.dataset == dataset]
        labels = list(dict.fromkeys(r.meta.get("label", r.attack) for r in rows))
        models = list(dict.fromkeys(r.model for r in rows))
        cell = {(r.model, r.meta.get("label", r.attack)): r for r in rows}
        label = rows[0].dataset_label
        out.append(f"{label} ({rows[0].subset}, top-1 %)")
        out.append(f"{'model':<16}" + "".join(f"{lab:>11}" for lab in labels))
        for m in models:
            vals = []
            for lab in labels:
                r = cell.get((m, lab))
                vals.append("" if r is None else _pct(r.clean_top1 if r.attack == "clean" else r.adv_top1))
            out.append(f"{m:<16}" + "".join(f"{v:>11}" for v in vals))
        out.append("")
    return "\n".join(out).rstrip()


def records(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One flat record per run (the fields of ``RECORD_FIELDS``; accuracies as fractions)."""
    out = []
    for r in results:
        clean = r.attack == "clean"
        ci = r.clean_top1_ci if clean else r.adv_top1_ci
        out.append(
            {
                "model": r.model,
                "dataset": r.dataset,
                "subset": r.subset,
                "attack": r.meta.get("label", r.attack),
                "description": r.meta.get("description", "clean"),
                "profile": r.profile,
                "metric": r.adv_metric,
                "eps": r.attack_params.get("eps"),
                "n": r.n,
                "clean_top1": r.clean_top1,
                "clean_top5": r.clean_top5,
                "adv_top1": r.clean_top1 if clean else r.adv_top1,
                "adv_top5": r.clean_top5 if clean else r.adv_top5,
                "ci95_lo": ci[0],
                "ci95_hi": ci[1],
                "linf_max": r.linf_max,
                "flags": _flags(r),
                "run_id": r.run_id,
            }
        )
    return out


def format_json(results: Sequence[RunResult]) -> str:
    return json.dumps(records(results), indent=2, allow_nan=False, default=str)


def format_csv(results: Sequence[RunResult]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RECORD_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records(results))
    return buf.getvalue().rstrip("\n")


FORMATTERS = {"table": format_results, "json": format_json, "csv": format_csv}


def contributions(store: Any, run: RunResult) -> dict[str, int]:
    """How many examples each stage of a cascade run broke (summed over its chunks; ``{}`` for a single
    attack): AutoAttack's per-attack contribution to the worst case."""
    total: dict[str, int] = {}
    for extras in store.chunk_extras(run.run_id).values():
        for stage, count in (extras.get("contributions") or {}).items():
            total[stage] = total.get(stage, 0) + int(count)
    return total


def format_contributions(store: Any, results: Sequence[RunResult]) -> str:
    """One line per cascade run: what each stage broke, in order, e.g. ``autoattack: apgd-ce 41, apgd-t 3,
    fab-t 0, square 1 of 100 examples``."""
    lines = []
    for r in results:
        parts = contributions(store, r)
        if parts:
            shown = ", ".join(f"{stage} {n}" for stage, n in parts.items())
            lines.append(f"{r.meta.get('label', r.attack)}: broken by {shown} (of {r.n} examples)")
    return "\n".join(lines)
