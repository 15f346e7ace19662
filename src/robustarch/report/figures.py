"""The paper's Figures 1-3, accuracy-against-eps curves and the "what the published numbers measure" figure,
from report tables.

Each figure is first described as plain data (a *spec*: panels of labelled series, every point with the
run ids it comes from, its 95% interval and its colour), then drawn from that spec only; the spec is written
beside the PNG, SVG and PDF as a JSON sidecar, so a test (or a reader) can check every plotted number against
the store.

Paper-ready conventions: one y scale per figure (panels share it); 95% intervals as error bars; no title
inside the figure (the report's caption carries it); legends outside the axes; point labels placed by
adjustText and checked never to overlap (else the names go to the legend instead); eps in /255; attack
names from the attack's own ``describe()``; one colour per architecture family in every figure; sized for
a paper column (3.5 in wide, 7.16 in for figures of several panels: the two-column width of IEEE/ACM).
"""

from __future__ import annotations

import hashlib
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
from robustarch.report.tables import (
    CLEAN,
    WORST,
    Row,
    Table,
    architecture_family,
    describe_column,
    slug,
    sweep_key,
)

log = logging.getLogger(__name__)

# deterministic SVG/PDF output (ids and metadata), so reports diff cleanly
matplotlib.rcParams["svg.hashsalt"] = "robustarch"
matplotlib.rcParams["pdf.fonttype"] = 42  # TrueType in the PDF: text stays text for journals' checks
METRIC_LABEL = {"top1": "top-1", "top5": "top-5"}

# One colour per architecture family, the same in every figure (colour-blind safe: Okabe & Ito 2008, with
# two of Tol's for the families beyond its seven); handcrafted families cool, NAS families warm.
FAMILY_COLOURS = {
    "VGG": "#0072B2",
    "ResNet": "#56B4E9",
    "DenseNet": "#009E73",
    "DARTS": "#D55E00",
    "P-DARTS": "#E69F00",
    "PC-DARTS": "#CC79A7",
    "NSGA-Net": "#882255",
    "DenseNAS": "#7F3C8D",
}
OTHER_COLOURS = ("#117733", "#999933", "#44AA99", "#332288", "#AA4499", "#DDCC77", "#661100", "#6699CC")
GROUP_MARKER = {"handcrafted": "o", "nas": "^"}
# series that are not architectures (attacks in Figure 1): neutral greys, told apart by marker and line
NEUTRAL = ("#000000", "#555555", "#999999")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", ":", "-.")
COLUMN_IN, WIDE_IN = 3.5, 7.16
DODGE = 0.6  # total width of a group of dodged points on a categorical axis, in category units


def family_colour(family: str) -> str:
    """The colour of an architecture family: the table's, else a stable pick for families it lacks."""
    if family in FAMILY_COLOURS:
        return FAMILY_COLOURS[family]
    digest = int.from_bytes(hashlib.sha256(family.encode()).digest()[:4], "big")
    return OTHER_COLOURS[digest % len(OTHER_COLOURS)]


def _row_style(row: Row) -> dict[str, Any]:
    family = architecture_family(row.model, row.method)
    return {
        "family": family,
        "group": row.family,
        "color": family_colour(family),
        "marker": GROUP_MARKER.get(row.family, "s"),
    }


def _pct(x: float) -> float:
    return round(100.0 * x, 10)


def _series(
    label: str,
    x: list[float],
    y: list[float],
    *,
    style: str = "line",
    ylo: list[float | None] | None = None,
    yhi: list[float | None] | None = None,
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


def _dodge(index: int, count: int) -> float:
    """Offset of the index-th of ``count`` series around a category's position."""
    if count <= 1:
        return 0.0
    return round(-DODGE / 2 + DODGE * index / (count - 1), 6)


def _ci(cell: Any, metric: str) -> tuple[float | None, float | None]:
    ci = cell.ci.get(metric) if cell is not None else None
    return (None, None) if ci is None else (_pct(ci[0]), _pct(ci[1]))


def _style_lines(specs_series: list[dict[str, Any]]) -> None:
    """Models of one family share its colour: give the second, third... of a family another line style."""
    seen: dict[str, int] = defaultdict(int)
    for s in specs_series:
        k = seen[s.get("family", "")]
        s["linestyle"] = LINESTYLES[k % len(LINESTYLES)]
        seen[s.get("family", "")] += 1


# -- specs ----------------------------------------------------------------------------------------------
def figure1_specs(tables: list[Table], dnha_rows: list[Any] | None = None) -> list[dict[str, Any]]:
    """Figure 1: DNHA (best NAS minus best handcrafted accuracy) per attack against dataset scale (datasets
    in scale order, attacks dodged around each), one figure per (profile, metric), with 95% intervals and,
    dashed, the paper's DNHA where settings match."""
    groups: dict[tuple[str, str, bool, str], list[Table]] = defaultdict(list)
    for t in tables:
        if t.kind == "main":
            for m in t.metrics:
                groups[(t.profile, t.adv_metric, t.emulate_normalized, m)].append(t)
    specs = []
    for (profile, adv_metric, emulate, metric), group in sorted(groups.items()):
        group = sorted(group, key=lambda t: dataset_scale_key(t.dataset))
        lines, paper_lines = _dnha_lines(group, dnha_rows, metric)
        series = list(lines.values()) + list(paper_lines.values())
        if not series:
            continue
        keys = list(lines)
        for key, s in lines.items():
            k = keys.index(key)
            s.update(color=NEUTRAL[k % 3], marker=MARKERS[k % len(MARKERS)], linestyle=LINESTYLES[k // 3 % 4])
            s["x"] = [p + _dodge(k, len(keys)) for p in s["position"]]
        for key, p in paper_lines.items():
            k = keys.index(key)
            p.update(color=lines[key]["color"], marker=lines[key]["marker"])
            p["x"] = [q + _dodge(k, len(keys)) for q in p["position"]]
        suffix = f"{profile}-{adv_metric}-{metric}" + ("-emulated" if emulate else "")
        specs.append(
            {
                "id": slug(f"fig1-dnha-{suffix}"),
                "title": f"Figure 1: DNHA = max(NAS) - max(handcrafted), {METRIC_LABEL[metric]} accuracy, "
                + ("from the paper's tables" if all(t.published for t in group) else f"profile {profile!r}")
                + (" (emulated normalized inputs)" if emulate else ""),
                "panels": [
                    {
                        "title": "",
                        "xlabel": "dataset (increasing scale)",
                        "ylabel": "DNHA (percentage points)",
                        "xticks": [t.dataset_label for t in group],
                        "hline": 0.0,
                        "series": series,
                    }
                ],
            }
        )
    return specs


def _dnha_lines(
    group: list[Table], dnha_rows: list[Any] | None, metric: str
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    lines: dict[str, dict[str, Any]] = {}
    paper_lines: dict[str, dict[str, Any]] = {}
    for pos, table in enumerate(group):
        rows = dnha(table) if dnha_rows is None else [d for d in dnha_rows if d.table_id == table.id]
        for d in rows:
            if d.column == CLEAN or d.metric != metric or (d.column == WORST and table.published):
                # the paper's worst case is only the minimum of its columns, i.e. PGD again
                continue
            # one line per attack across datasets (its budget may differ per dataset, as in the standard
            # profile); an attack with several settings in a table gets a line per setting
            single = sum(c.attack == d.attack for c in table.columns) == 1
            key = d.attack if single else d.column
            label = (d.label.split(" (")[0] if single else d.label) if d.column != WORST else "Worst case"
            s = lines.setdefault(
                key,
                _series(
                    label, [], [], ylo=[], yhi=[], points=[], runs=[], tables=[], columns=[], position=[]
                ),
            )
            s["tables"].append(table.id)
            s["columns"].append(d.column)
            s["position"].append(pos)
            s["y"].append(_pct(d.value))
            s["ylo"].append(_pct(d.ci[0]) if d.ci else None)
            s["yhi"].append(_pct(d.ci[1]) if d.ci else None)
            s["points"].append(f"{d.nas_model} vs {d.hand_model}")
            s["runs"].append(_runs_of(table, d))
            if d.paper is not None:
                p = paper_lines.setdefault(
                    key, _series(f"paper: {label}", [], [], style="dashed", position=[])
                )
                p["position"].append(pos)
                p["y"].append(_pct(d.paper))
    return lines, paper_lines


def _runs_of(table: Table, d: Any) -> list[str]:
    rows = {r.label: r for r in table.rows}
    return [rid for name in (d.nas_model, d.hand_model) for rid in rows[name].cells[d.column].run_ids]


def figure2_specs(tables: list[Table]) -> list[dict[str, Any]]:
    """Figure 2: adversarial against clean accuracy of every architecture, one panel per attack, one scale
    for all panels, 95% intervals on both axes, each point named."""
    specs = []
    for t in tables:
        if t.kind != "main":
            continue
        metric = "top1"
        panels = []
        for col in t.columns:
            if col.key == CLEAN or (col.key == WORST and t.published):
                continue
            rows = [
                r
                for r in t.rows
                if CLEAN in r.cells
                and col.key in r.cells
                and metric in r.cells[col.key].values
                and metric in r.cells[CLEAN].values
            ]
            if not rows:
                continue
            series = []
            for r in rows:
                xlo, xhi = _ci(r.cells[CLEAN], metric)
                ylo, yhi = _ci(r.cells[col.key], metric)
                series.append(
                    _series(
                        r.label,
                        [_pct(r.cells[CLEAN].values[metric])],
                        [_pct(r.cells[col.key].values[metric])],
                        style="scatter",
                        ylo=[ylo],
                        yhi=[yhi],
                        xlo=[xlo],
                        xhi=[xhi],
                        points=[r.label],
                        runs=[[*r.cells[CLEAN].run_ids, *r.cells[col.key].run_ids]],
                        **_row_style(r),
                    )
                )
            panels.append(
                {
                    "title": _panel_title(t, col),
                    "xlabel": f"clean {METRIC_LABEL[metric]} accuracy (%)",
                    "ylabel": f"adversarial {METRIC_LABEL[metric]} accuracy (%)",
                    "series": series,
                    "label_points": True,
                }
            )
        if panels:
            specs.append(
                {
                    "id": slug(f"fig2-{t.id}"),
                    "title": f"Figure 2: robustness against clean accuracy, {t.dataset_label} ({t.profile})",
                    "panels": panels,
                    "sharex": True,
                }
            )
    return specs


def _panel_title(table: Table, col: Any) -> str:
    """A panel's title: the attack's own description (the paper's tables: the paper's label)."""
    if col.key == WORST or table.published:
        return col.label
    return describe_column(col.attack, table.profile, col.params)


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
        colour = family_colour(architecture_family(rows[0].model, rows[0].method)) if rows else "#000000"
        panels = []
        for name, members in groups.items():
            members = sorted(members, key=lambda r: r.params_m)
            series = []
            for k, col in enumerate(c for c in t.columns if not (c.key == WORST and t.published)):
                pts = [r for r in members if col.key in r.cells and metric in r.cells[col.key].values]
                if len(pts) < 2:
                    continue
                x = [round(r.params_m, 6) for r in pts]
                y = [_pct(r.cells[col.key].values[metric]) for r in pts]
                pearson, spearman = correlations(x, y)
                corr = "" if pearson is None else f" (r={pearson:+.2f}, rho={spearman:+.2f})"
                cis = [_ci(r.cells[col.key], metric) for r in pts]
                series.append(
                    _series(
                        col.label + corr,
                        x,
                        y,
                        style="points" if len(groups) > 1 and name == "all members" else "line",
                        ylo=[c[0] for c in cis],
                        yhi=[c[1] for c in cis],
                        points=[r.label for r in pts],
                        runs=[list(r.cells[col.key].run_ids) for r in pts],
                        pearson=pearson,
                        spearman=spearman,
                        column=col.key,
                        color=colour,  # one family per figure: attacks told apart by marker and line
                        marker=MARKERS[k % len(MARKERS)],
                        linestyle=LINESTYLES[k % len(LINESTYLES)],
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
            specs.append(
                # the correlations differ per panel: each panel names its own series
                {
                    "id": slug(f"fig3-{t.id}"),
                    "title": f"Figure 3: {t.title}",
                    "panels": panels,
                    "legend": "panel",
                }
            )
    return specs


def sweep_title(table: Table, cols: list[Any]) -> str:
    """A sweep's attack in words: the parts of its describe() shared by every point (the budget is the x
    axis), e.g. ``PGD-10 (step eps/4, random start)``."""
    described = [describe_column(c.attack, table.profile, c.params) for c in cols]
    head = described[0].split(" (")[0]
    parts = [d.partition(" (")[2].rstrip(")").split(", ") for d in described]
    common = [p for p in parts[0] if p and all(p in other for other in parts[1:])]
    alphas = {
        round(c.params["alpha"] / c.params["eps"], 9)
        for c in cols
        if c.params.get("alpha") and c.params.get("eps")
    }
    if len(alphas) == 1 and not any(p.startswith("step") for p in common):
        common.insert(0, f"step eps/{1 / alphas.pop():.3g}")
    return f"{head} ({', '.join(common)})" if common else head


def sweep_specs(tables: list[Table]) -> list[dict[str, Any]]:
    """Accuracy against eps (in /255) for every attack stored at two or more eps with otherwise equal
    settings, one line per model in its family's colour."""
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
            for _key, cols in sorted(sweeps.items()):
                if len(cols) < 2:
                    continue
                cols = sorted(cols, key=lambda c: c.params["eps"])
                series = []
                for r in t.rows:
                    pts = [c for c in cols if c.key in r.cells and metric in r.cells[c.key].values]
                    if len(pts) < 2:
                        continue
                    cis = [_ci(r.cells[c.key], metric) for c in pts]
                    series.append(
                        _series(
                            r.label,
                            [round(c.params["eps"] * 255, 6) for c in pts],
                            [_pct(r.cells[c.key].values[metric]) for c in pts],
                            ylo=[c[0] for c in cis],
                            yhi=[c[1] for c in cis],
                            runs=[list(r.cells[c.key].run_ids) for c in pts],
                            **_row_style(r),
                        )
                    )
                _style_lines(series)
                if series:
                    panels.append(
                        {
                            "title": sweep_title(t, cols),
                            "xlabel": "eps (/255)",
                            "ylabel": f"{METRIC_LABEL[metric]} accuracy (%)",
                            "series": series,
                        }
                    )
            if panels:
                specs.append(
                    {
                        "id": slug(f"sweep-{t.id}-{metric}"),
                        "title": f"Accuracy against eps, {t.dataset_label} ({t.profile}), "
                        f"{METRIC_LABEL[metric]}",
                        "panels": panels,
                    }
                )
    return specs


def explain_specs(sections: list[Any]) -> list[dict[str, Any]]:
    """What the published numbers measure: one panel per column (as released, same eps on [0,1],
    standard, the paper's printed values), one scale, attacks on x, one line per model in its family's
    colour, 95% intervals."""
    from robustarch.report.explain import ATTACK_ROWS, row_label

    specs = []
    for sec in sections:
        panels = []
        for setting in sec.settings:
            series = []
            rows = [er for er in sec.rows if any(er.value(a, setting) is not None for a in ATTACK_ROWS)]
            for j, er in enumerate(rows):
                xs, ys, lo, hi, runs = [], [], [], [], []
                for k, attack_row in enumerate(ATTACK_ROWS):
                    value = er.value(attack_row, setting)
                    if value is None:
                        continue
                    cell = er.cells.get((attack_row, setting))
                    xs.append(k + _dodge(j, len(rows)))
                    ys.append(_pct(value))
                    c_lo, c_hi = _ci(cell, sec.metric)
                    lo.append(c_lo)
                    hi.append(c_hi)
                    runs.append(list(cell.run_ids) if cell is not None else [])
                series.append(
                    _series(
                        er.row.label, xs, ys, style="profile", ylo=lo, yhi=hi, runs=runs, **_row_style(er.row)
                    )
                )
            _style_lines(series)
            if series:
                panels.append(
                    {
                        "title": sec.setting_labels[setting],
                        "xlabel": "",
                        "ylabel": f"{METRIC_LABEL[sec.metric]} accuracy (%)",
                        "xticks": [row_label(a) for a in ATTACK_ROWS],
                        "series": series,
                        "setting": setting,
                    }
                )
        if panels:
            specs.append(
                {
                    "id": slug(f"explain-{sec.dataset}"),
                    "title": f"What the published numbers measure, {sec.dataset_label}: top-1 accuracy "
                    "as the released code measured it, at the same nominal eps on [0,1], under the standard "
                    "attacks" + (", and as the paper printed it" if "paper" in sec.settings else ""),
                    "panels": panels,
                    "ylim": [-3.0, 103.0],  # accuracies: the whole range, points at 0 and 100 inside
                }
            )
    return specs


def all_specs(
    tables: list[Table], dnha_rows: list[Any] | None = None, explain: list[Any] | None = None
) -> list[dict[str, Any]]:
    return (
        explain_specs(explain or [])
        + figure1_specs(tables, dnha_rows)
        + figure2_specs(tables)
        + figure3_specs(tables)
        + sweep_specs(tables)
    )


# -- drawing --------------------------------------------------------------------------------------------
def _extent(panels: list[dict[str, Any]], axis: str) -> tuple[float, float] | None:
    """Smallest and largest plotted value along ``axis`` ("x" or "y"), intervals included."""
    values: list[float] = []
    for panel in panels:
        for s in panel["series"]:
            values += [v for v in s[axis] if v is not None]
            for key in (f"{axis}lo", f"{axis}hi"):
                values += [v for v in (s.get(key) or []) if v is not None]
        if axis == "y" and panel.get("hline") is not None:
            values.append(panel["hline"])
    return (min(values), max(values)) if values else None


def _limits(extent: tuple[float, float] | None, min_span: float) -> tuple[float, float] | None:
    """Axis limits around ``extent`` with 6% padding and at least ``min_span`` wide (a single point never
    fills a whole panel)."""
    if extent is None:
        return None
    lo, hi = extent
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    pad = 0.06 * (hi - lo)
    return lo - pad, hi + pad


def _layout(n: int) -> tuple[int, int, float]:
    ncols = 1 if n == 1 else 2 if n in (2, 4) else 3
    nrows = -(-n // ncols)
    width = COLUMN_IN if n == 1 else WIDE_IN
    return nrows, ncols, width


def draw(spec: dict[str, Any]) -> plt.Figure:
    """A matplotlib figure drawn from a spec alone (each series' artist has the gid ``panel/series``; its
    error bars ``panel/series/err``; point labels ``panel/series/label``)."""
    panels = spec["panels"]
    nrows, ncols, width = _layout(len(panels))
    height = (2.6 if len(panels) == 1 else 2.3) * nrows + 0.9
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width, height), squeeze=False, layout="constrained", sharey=True,
        sharex=bool(spec.get("sharex")),
    )  # fmt: skip
    ylim = tuple(spec["ylim"]) if spec.get("ylim") else _limits(_extent(panels, "y"), 10.0)
    xlim = _limits(_extent(panels, "x"), 10.0) if spec.get("sharex") else None
    with plt.rc_context({"font.size": 7}):
        for i, panel in enumerate(panels):
            ax = axes[i // ncols][i % ncols]
            _draw_panel(ax, panel, i)
            if i % ncols:  # one scale: only the first panel of a row names it
                ax.set_ylabel("")
            if ylim:
                ax.set_ylim(*ylim)
            if xlim:
                ax.set_xlim(*xlim)
            elif not panel.get("xticks"):
                limits = _limits(_extent([panel], "x"), 0.0)
                if limits and limits[1] > limits[0]:
                    ax.set_xlim(*limits)
        for k in range(len(panels), nrows * ncols):
            axes[k // ncols][k % ncols].set_visible(False)
            if k >= ncols:  # the panel above has none below it: it shows the shared x tick labels
                axes[k // ncols - 1][k % ncols].xaxis.set_tick_params(labelbottom=True)
        _legend(fig, axes, spec)
        fig.canvas.draw()  # the layout is final from here on: labels are placed against it
        fig.set_layout_engine("none")
        visible = [ax for ax in fig.axes if ax.get_visible()]
        for i, panel in enumerate(panels):
            if panel.get("label_points"):
                ax = axes[i // ncols][i % ncols]
                # adjustText redraws the figure twice per call: hide the other panels meanwhile (their
                # positions are fixed now), which makes labelling a figure of k panels k times cheaper
                for other in visible:
                    other.set_visible(other is ax)
                _label_points(fig, ax, panel, i)
        for ax in visible:
            ax.set_visible(True)
    return fig


def _draw_panel(ax: Any, panel: dict[str, Any], i: int) -> None:
    for j, s in enumerate(panel["series"]):
        gid = f"{i}/{j}"
        color = s.get("color")
        if s["style"] == "scatter":
            art = ax.scatter(
                s["x"], s["y"], label=s["label"], color=color, marker=s.get("marker", "o"), s=18, zorder=3
            )
        else:
            linestyle = {"dashed": "--", "points": "none"}.get(s["style"], s.get("linestyle", "-"))
            (art,) = ax.plot(
                s["x"],
                s["y"],
                linestyle=linestyle,
                marker="x" if s["style"] == "dashed" else s.get("marker", "o"),
                markersize=3.5,
                linewidth=1.0,
                alpha=0.6 if s["style"] == "dashed" else 1.0,
                label=s["label"],
                color=color,
            )
            color = art.get_color()
        art.set_gid(gid)
        _error_bars(ax, s, color, f"{gid}/err")
    if panel.get("xticks"):
        rotate = (
            {"rotation": 30, "ha": "right", "rotation_mode": "anchor"} if len(panel["xticks"]) > 4 else {}
        )
        ax.set_xticks(range(len(panel["xticks"])), panel["xticks"], **rotate)
        ax.set_xlim(-0.6, len(panel["xticks"]) - 0.4)
    if panel.get("hline") is not None:
        ax.axhline(panel["hline"], color="grey", linewidth=0.8, zorder=0)
    # wrapped to the panel's width (about 18 characters of 7-point text per inch)
    width_in = ax.get_position().width * ax.figure.get_figwidth()
    ax.set_title(textwrap.fill(panel["title"], width=max(20, int(18 * width_in))), fontsize=7)
    ax.set_xlabel(panel["xlabel"], fontsize=7)
    ax.set_ylabel(panel["ylabel"], fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3, linewidth=0.5)


def _error_bars(ax: Any, s: dict[str, Any], color: Any, gid: str) -> None:
    """95% intervals of the points that have one (both axes where the spec gives x intervals too)."""

    def err(axis: str) -> tuple[list[float], list[float]] | None:
        lo, hi = s.get(f"{axis}lo"), s.get(f"{axis}hi")
        if not lo or not hi:
            return None
        vals = s[axis]
        return (
            [v - a if a is not None else 0.0 for v, a in zip(vals, lo, strict=True)],
            [b - v if b is not None else 0.0 for v, b in zip(vals, hi, strict=True)],
        )

    yerr, xerr = err("y"), err("x")
    if (yerr and any(any(e) for e in yerr)) or (xerr and any(any(e) for e in xerr)):
        bars = ax.errorbar(
            s["x"], s["y"], yerr=yerr, xerr=xerr, fmt="none", ecolor=color, elinewidth=0.7, capsize=1.5,
            alpha=0.8,
        )  # fmt: skip
        for artist in bars.get_children():
            artist.set_gid(gid)


def _legend(fig: Any, axes: Any, spec: dict[str, Any]) -> None:
    """One legend for the figure, below the panels (outside every axes), one entry per label; with
    ``legend = "panel"`` one below each panel instead."""
    if spec.get("legend") == "panel":
        for ax in fig.axes:
            if ax.get_visible() and ax.get_legend_handles_labels()[0]:
                ax.legend(
                    loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=5.5, frameon=False, ncol=1
                )
        return
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    if not handles:
        return
    ncol = min(len(handles), 4 if fig.get_figwidth() > 5 else 2)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncol=ncol,
        fontsize=6,
        frameon=False,
    )


def _label_points(fig: Any, ax: Any, panel: dict[str, Any], i: int) -> None:
    """Name each point beside it (adjustText moves the names apart). If two names still overlap, or one
    leaves the axes, the names are removed: the legend below already names every point."""
    from adjustText import adjust_text

    texts = []
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    for j, s in enumerate(panel["series"]):
        for x, y, name in zip(s["x"], s["y"], s["points"] or [], strict=False):
            # first try: just above and to the right of the point
            t = ax.text(
                x + 0.012 * (x1 - x0), y + 0.012 * (y1 - y0), name, fontsize=5.5, color=s.get("color")
            )
            t.set_gid(f"{i}/{j}/label")
            texts.append(t)
    if not texts or labels_clear(fig, ax, texts):
        return
    xs = [x for s in panel["series"] for x in s["x"]]
    ys = [y for s in panel["series"] for y in s["y"]]
    adjust_text(texts, x=xs, y=ys, ax=ax, ensure_inside_axes=True, expand_axes=False, iter_lim=100)
    if not labels_clear(fig, ax, texts):
        for t in texts:
            t.remove()
        log.info("panel %r: point names would overlap; the legend names the points", panel["title"])


def labels_clear(fig: Any, ax: Any, texts: list[Any]) -> bool:
    """Whether no two texts overlap and every text lies inside the axes (display coordinates)."""
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    extents = [t.get_window_extent(renderer) for t in texts]
    inside = all(
        e.x0 >= box.x0 - 0.5 and e.x1 <= box.x1 + 0.5 and e.y0 >= box.y0 - 0.5 and e.y1 <= box.y1 + 0.5
        for e in extents
    )
    apart = all(not a.overlaps(b) for k, a in enumerate(extents) for b in extents[k + 1 :])
    return inside and apart


FIGURE_FORMATS = ("png", "svg", "pdf")


def write_figure(spec: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write ``<id>.png``, ``.svg``, ``.pdf`` (vector, for a paper) and the ``<id>.json`` spec; returns the
    paths by suffix. The file name is a slug of the id, whatever the stored strings it was built from."""
    folder.mkdir(parents=True, exist_ok=True)
    fig = draw(spec)
    name = slug(spec["id"])
    paths = {ext: folder / f"{name}.{ext}" for ext in (*FIGURE_FORMATS, "json")}
    try:
        fig.savefig(paths["png"], dpi=150, metadata={"Software": None})
        fig.savefig(paths["svg"], metadata={"Date": None})
        fig.savefig(paths["pdf"], metadata={"CreationDate": None, "Producer": None, "Creator": None})
    finally:
        plt.close(fig)
    paths["json"].write_text(json.dumps(spec, indent=1, sort_keys=True), encoding="utf-8")
    return paths
