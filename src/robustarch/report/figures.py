"""The paper's Figures 1-3 (and accuracy-against-eps curves) from report tables.

Each figure is first described as plain data (a *spec*: panels of labelled series, every point with the
run ids it comes from), then drawn from that spec only; the spec is written beside the PNG and SVG as a
JSON sidecar, so a test (or a reader) can check every plotted number against the store.
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from robustarch.report.analysis import correlations, dataset_scale_key, dnha
from robustarch.report.paper import model_info
from robustarch.report.tables import CLEAN, WORST, Table, sweep_key

log = logging.getLogger(__name__)

# deterministic SVG output (ids and metadata), so reports diff cleanly
matplotlib.rcParams["svg.hashsalt"] = "robustarch"
FAMILY_STYLE = {"handcrafted": ("tab:blue", "o"), "nas": ("tab:red", "^")}
METRIC_LABEL = {"top1": "top-1", "top5": "top-5"}


def _pct(x: float) -> float:
    return round(100.0 * x, 10)


def _series(
    label: str,
    x: list[float],
    y: list[float],
    *,
    style: str = "line",
    ylo: list[float] | None = None,
    yhi: list[float] | None = None,
    points: list[str] | None = None,
    runs: list[list[str]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "label": label,
        "style": style,
        "x": x,
        "y": y,
        "ylo": ylo,
        "yhi": yhi,
        "points": points,
        "runs": runs,
        **extra,
    }


# -- specs ----------------------------------------------------------------------------------------------
def figure1_specs(tables: list[Table], dnha_rows: list[Any] | None = None) -> list[dict[str, Any]]:
    """Figure 1: DNHA (best NAS minus best handcrafted accuracy) per attack against dataset scale, one
    figure per (profile, metric), with 95% intervals and, dashed, the paper's DNHA where settings match."""
    groups: dict[tuple[str, str, bool, str], list[Table]] = defaultdict(list)
    for t in tables:
        if t.kind == "main":
            for m in t.metrics:
                groups[(t.profile, t.adv_metric, t.emulate_normalized, m)].append(t)
    specs = []
    for (profile, adv_metric, emulate, metric), group in sorted(groups.items()):
        group = sorted(group, key=lambda t: dataset_scale_key(t.dataset))
        xticks = [t.dataset_label for t in group]
        lines: dict[str, dict[str, Any]] = {}
        paper_lines: dict[str, dict[str, Any]] = {}
        for pos, table in enumerate(group):
            rows = dnha(table) if dnha_rows is None else [d for d in dnha_rows if d.table_id == table.id]
            for d in rows:
                if d.column == CLEAN or d.metric != metric or (d.column == WORST and table.published):
                    # the paper's worst case is only the minimum of its columns, i.e. PGD again
                    continue
                # one line per attack across datasets (its budget may differ per dataset, as in the
                # standard profile); an attack with several settings in a table gets a line per setting
                single = sum(c.attack == d.attack for c in table.columns) == 1
                key = d.attack if single else d.column
                label = (d.label.split(" (")[0] if single else d.label) if d.column != WORST else "Worst case"
                s = lines.setdefault(
                    key, _series(label, [], [], ylo=[], yhi=[], points=[], runs=[], tables=[], columns=[])
                )
                s["tables"].append(table.id)
                s["columns"].append(d.column)
                s["x"].append(pos)
                s["y"].append(_pct(d.value))
                s["ylo"].append(_pct(d.ci[0]) if d.ci else None)
                s["yhi"].append(_pct(d.ci[1]) if d.ci else None)
                s["points"].append(f"{d.nas_model} vs {d.hand_model}")
                s["runs"].append(_runs_of(table, d))
                if d.paper is not None:
                    p = paper_lines.setdefault(key, _series(f"paper: {label}", [], [], style="dashed"))
                    p["x"].append(pos)
                    p["y"].append(_pct(d.paper))
        series = list(lines.values()) + list(paper_lines.values())
        if not series:
            continue
        suffix = f"{profile}-{adv_metric}-{metric}" + ("-emulated" if emulate else "")
        specs.append(
            {
                "id": f"fig1-dnha-{suffix}",
                "title": f"Figure 1: DNHA = max(NAS) - max(handcrafted), {METRIC_LABEL[metric]} accuracy, "
                + ("from the paper's tables" if all(t.published for t in group) else f"profile {profile!r}")
                + (" (emulated normalized inputs)" if emulate else ""),
                "panels": [
                    {
                        "title": "",
                        "xlabel": "dataset (increasing scale)",
                        "ylabel": "DNHA (percentage points)",
                        "xticks": xticks,
                        "hline": 0.0,
                        "series": series,
                    }
                ],
            }
        )
    return specs


def _runs_of(table: Table, d: Any) -> list[str]:
    rows = {r.label: r for r in table.rows}
    return [rid for name in (d.nas_model, d.hand_model) for rid in rows[name].cells[d.column].run_ids]


def figure2_specs(tables: list[Table]) -> list[dict[str, Any]]:
    """Figure 2: adversarial against clean accuracy of every architecture, one panel per attack."""
    specs = []
    for t in tables:
        if t.kind != "main":
            continue
        metric = "top1"
        panels = []
        for col in t.columns:
            if col.key == CLEAN or (col.key == WORST and t.published):
                continue
            series = []
            for family, (_color, _marker) in FAMILY_STYLE.items():
                rows = [
                    r
                    for r in t.rows
                    if r.family == family
                    and CLEAN in r.cells
                    and col.key in r.cells
                    and metric in r.cells[col.key].values
                    and metric in r.cells[CLEAN].values
                ]
                if not rows:
                    continue
                series.append(
                    _series(
                        family,
                        [_pct(r.cells[CLEAN].values[metric]) for r in rows],
                        [_pct(r.cells[col.key].values[metric]) for r in rows],
                        style="scatter",
                        points=[r.label for r in rows],
                        runs=[[*r.cells[CLEAN].run_ids, *r.cells[col.key].run_ids] for r in rows],
                        family=family,
                    )
                )
            if series:
                panels.append(
                    {
                        "title": col.label,
                        "xlabel": f"clean {METRIC_LABEL[metric]} accuracy (%)",
                        "ylabel": f"adversarial {METRIC_LABEL[metric]} accuracy (%)",
                        "series": series,
                    }
                )
        if panels:
            specs.append(
                {
                    "id": f"fig2-{t.id}",
                    "title": f"Figure 2: robustness against clean accuracy, {t.dataset_label} ({t.profile})",
                    "panels": panels,
                }
            )
    return specs


def figure3_specs(tables: list[Table]) -> list[dict[str, Any]]:
    """Figure 3: accuracy against parameter count within an architecture family, with Pearson's r and
    Spearman's rho per attack; separate panels per search space where the family has several."""
    specs = []
    for t in tables:
        if t.kind != "family":
            continue
        metric = "top5" if "top5" in t.metrics else "top1"
        rows = [r for r in t.rows if r.params_m is not None]
        groups: dict[str, list[Any]] = {"all members": rows}
        spaces = defaultdict(list)
        for r in rows:
            spaces[model_info(r.model).get("search_space", "")].append(r)
        if len(spaces) > 1:
            for space, members in sorted(spaces.items()):
                if space and len(members) >= 2:
                    groups[f"{space} search space"] = members
        panels = []
        for name, members in groups.items():
            members = sorted(members, key=lambda r: r.params_m)
            series = []
            for col in t.columns:
                if col.key == WORST and t.published:
                    continue
                pts = [r for r in members if col.key in r.cells and metric in r.cells[col.key].values]
                if len(pts) < 2:
                    continue
                x = [round(r.params_m, 6) for r in pts]
                y = [_pct(r.cells[col.key].values[metric]) for r in pts]
                pearson, spearman = correlations(x, y)
                corr = "" if pearson is None else f" (r={pearson:+.2f}, rho={spearman:+.2f})"
                cis = [r.cells[col.key].ci.get(metric) for r in pts]
                series.append(
                    _series(
                        col.label + corr,
                        x,
                        y,
                        style="points" if len(groups) > 1 and name == "all members" else "line",
                        ylo=[_pct(c[0]) if c else None for c in cis],
                        yhi=[_pct(c[1]) if c else None for c in cis],
                        points=[r.label for r in pts],
                        runs=[list(r.cells[col.key].run_ids) for r in pts],
                        pearson=pearson,
                        spearman=spearman,
                        column=col.key,
                    )
                )
            if series:
                panels.append(
                    {
                        "title": name,
                        "xlabel": "parameters (M)",
                        "ylabel": f"{METRIC_LABEL[metric]} accuracy (%)",
                        "series": series,
                    }
                )
        if panels:
            specs.append({"id": f"fig3-{t.id}", "title": f"Figure 3: {t.title}", "panels": panels})
    return specs


def sweep_specs(tables: list[Table]) -> list[dict[str, Any]]:
    """Accuracy against eps for every attack stored at two or more eps with otherwise equal settings."""
    specs = []
    for t in tables:
        if t.kind != "main":
            continue
        sweeps: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for col in t.attack_columns:
            if isinstance(col.params.get("eps"), int | float):
                sweeps[(col.attack, sweep_key(col.params))].append(col)
        for metric in t.metrics:
            panels = []
            for (_attack, rest), cols in sorted(sweeps.items()):
                if len(cols) < 2:
                    continue
                cols = sorted(cols, key=lambda c: c.params["eps"])
                series = []
                for r in t.rows:
                    pts = [c for c in cols if c.key in r.cells and metric in r.cells[c.key].values]
                    if len(pts) < 2:
                        continue
                    cis = [r.cells[c.key].ci.get(metric) for c in pts]
                    series.append(
                        _series(
                            r.label,
                            [c.params["eps"] for c in pts],
                            [_pct(r.cells[c.key].values[metric]) for c in pts],
                            ylo=[_pct(c[0]) if c else None for c in cis],
                            yhi=[_pct(c[1]) if c else None for c in cis],
                            runs=[list(r.cells[c.key].run_ids) for c in pts],
                            family=r.family,
                        )
                    )
                if series:
                    panels.append(
                        {
                            "title": f"{cols[0].label.split(' (')[0]} {rest}",
                            "xlabel": "eps",
                            "ylabel": f"{METRIC_LABEL[metric]} accuracy (%)",
                            "series": series,
                        }
                    )
            if panels:
                specs.append(
                    {
                        "id": f"sweep-{t.id}-{metric}",
                        "title": f"Accuracy against eps, {t.dataset_label} ({t.profile}), "
                        f"{METRIC_LABEL[metric]}",
                        "panels": panels,
                    }
                )
    return specs


def all_specs(tables: list[Table], dnha_rows: list[Any] | None = None) -> list[dict[str, Any]]:
    return (
        figure1_specs(tables, dnha_rows) + figure2_specs(tables) + figure3_specs(tables) + sweep_specs(tables)
    )


# -- drawing --------------------------------------------------------------------------------------------
def draw(spec: dict[str, Any]) -> plt.Figure:
    """A matplotlib figure drawn from a spec alone (each artist's gid is ``panel/series`` index)."""
    panels = spec["panels"]
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    # a single panel keeps its legend beside the axes, where it hides no point
    width = 5.2 * ncols + (2.6 if len(panels) == 1 else 0.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 4.2 * nrows), squeeze=False)
    for i, panel in enumerate(panels):
        ax = axes[i // ncols][i % ncols]
        for j, s in enumerate(panel["series"]):
            gid = f"{i}/{j}"
            if s["style"] == "scatter":
                color, marker = FAMILY_STYLE.get(s.get("family", ""), (None, "o"))
                art = ax.scatter(s["x"], s["y"], label=s["label"], color=color, marker=marker, zorder=3)
                art.set_gid(gid)
                for x, y, name in zip(s["x"], s["y"], s["points"] or [], strict=False):
                    ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
            else:
                dashed = s["style"] == "dashed"
                linestyle = {"dashed": "--", "points": "none"}.get(s["style"], "-")
                (line,) = ax.plot(
                    s["x"],
                    s["y"],
                    linestyle=linestyle,
                    marker="x" if dashed else "o",
                    alpha=0.6 if dashed else 1.0,
                    label=s["label"],
                )
                line.set_gid(gid)
                if s.get("ylo") and all(v is not None for v in s["ylo"] + s["yhi"]):
                    lo = [y - v for y, v in zip(s["y"], s["ylo"], strict=True)]
                    hi = [v - y for y, v in zip(s["y"], s["yhi"], strict=True)]
                    ax.errorbar(s["x"], s["y"], yerr=[lo, hi], fmt="none", ecolor=line.get_color(), capsize=3)
        if panel.get("xticks"):
            ax.set_xticks(range(len(panel["xticks"])), panel["xticks"])
        if panel.get("hline") is not None:
            ax.axhline(panel["hline"], color="grey", linewidth=0.8)
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(panel["ylabel"])
        ax.grid(alpha=0.3)
        if len(panels) == 1:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        else:
            ax.legend(fontsize=7)
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    fig.suptitle(textwrap.fill(spec["title"], width=int(11 * width)), fontsize=11)
    fig.tight_layout()
    return fig


def write_figure(spec: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write ``<id>.png``, ``<id>.svg`` and the ``<id>.json`` spec; returns the paths by suffix."""
    folder.mkdir(parents=True, exist_ok=True)
    fig = draw(spec)
    paths = {ext: folder / f"{spec['id']}.{ext}" for ext in ("png", "svg", "json")}
    try:
        fig.savefig(paths["png"], dpi=110, metadata={"Software": None})
        fig.savefig(paths["svg"], metadata={"Date": None})
    finally:
        plt.close(fig)
    paths["json"].write_text(json.dumps(spec, indent=1, sort_keys=True), encoding="utf-8")
    return paths
