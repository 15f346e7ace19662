"""Writers: Markdown, LaTeX (booktabs), CSV and one self-contained HTML page.

Every number written here is read from a :class:`~robustarch.report.tables.Table` (built from the store)
or from the paper's shipped values; nothing is computed for display that the CSV does not also carry.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from robustarch.report.analysis import DNHA
from robustarch.report.explain import ATTACK_ROWS, ExplainSection, row_label
from robustarch.report.paper import PAPER_COUNTERPART
from robustarch.report.tables import Cell, Row, Table, slug
from robustarch.store import RunResult, canonical_json

METRIC_LABEL = {"top1": "top-1", "top5": "top-5"}
FLAG_MARK = {"ok": "", "warn": " ⚠", "fail": " ✗"}
FLAG_MARK_TEX = {"ok": "", "warn": r"$^\dagger$", "fail": r"$^\ddagger$"}
PAPER_NAME = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet"}


def pct(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{100 * x:.{digits}f}"


def signed(x: float | None) -> str:
    return "" if x is None else f"{100 * x:+.2f}"


def _params(row: Row) -> str:
    if row.params_printed:
        return row.params_printed
    return "" if row.params_m is None else f"{row.params_m:.2f}"


def _has_paper(table: Table, key: str, metric: str) -> bool:
    return not table.published and any(metric in r.cells.get(key, Cell({})).paper for r in table.rows)


def paper_header(table: Table) -> str:
    counterpart = PAPER_COUNTERPART.get(table.dataset, table.dataset)
    if counterpart != table.dataset:
        return f"paper {PAPER_NAME.get(counterpart, counterpart)} (Δ)"
    return "paper (Δ)"


def value_text(cell: Cell | None, metric: str, with_ci: bool = True) -> str:
    if cell is None or metric not in cell.values:
        return "–"
    text = pct(cell.values[metric])
    if with_ci and metric in cell.ci:
        lo, hi = cell.ci[metric]
        text += f" [{pct(lo)}, {pct(hi)}]"
    if cell.source.startswith("minimum"):
        text += " (min)"
    if "UNFINISHED" in cell.source:
        text += " (partial)"
    return text + FLAG_MARK[cell.worst_status]


def paper_text(cell: Cell | None, metric: str) -> str:
    if cell is None or metric not in cell.paper:
        return "–"
    return f"{cell.paper[metric].printed} ({signed(cell.diff(metric))})"


def _lead(table: Table) -> list[str]:
    """Leading columns; parameter counts only where some row has one (the paper's CIFAR tables have none)."""
    lead = ["Model", "Family"]
    return [*lead, "Params (M)"] if any(_params(r) for r in table.rows) else lead


def _grid_spec(table: Table) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Header and, per data column, (column key, metric, "value" | "paper")."""
    multi = len(table.metrics) > 1
    header = _lead(table)
    spec: list[tuple[str, str, str]] = []
    for col in table.columns:
        for m in table.metrics:
            name = col.label + (f" {METRIC_LABEL[m]}" if multi else "")
            header.append(name)
            spec.append((col.key, m, "value"))
            if _has_paper(table, col.key, m):
                header.append(f"{name} {paper_header(table)}")
                spec.append((col.key, m, "paper"))
    return header, spec


def table_grid(table: Table) -> tuple[list[str], list[list[str]]]:
    """Header and body of a table as display strings (shared by Markdown, LaTeX and HTML)."""
    header, spec = _grid_spec(table)
    body = []
    for row in table.rows:
        line = [row.label, row.family, _params(row)][: len(_lead(table))]
        for key, m, what in spec:
            cell = row.cells.get(key)
            if what == "paper":
                line.append(paper_text(cell, m))
            elif table.published and cell is not None and m in cell.paper:
                line.append(cell.paper[m].printed)  # exactly as printed, quirks included
            else:
                line.append(value_text(cell, m, with_ci=not table.published))
        body.append(line)
    return header, body


# -- Markdown ---------------------------------------------------------------------------------------------
def md_text(text: Any) -> str:
    """Text from a store or a study file made inert in Markdown: one line (no new block can start), HTML
    special characters as entities (no raw HTML passes: a renderer would run ``<script>`` or ``<img
    onerror>``), table pipes escaped, and no ``[...](...)`` / ``[...][...]`` link or image can form."""
    text = " ".join(str(text).split())
    text = html.escape(text, quote=False).replace("|", "\\|")
    return re.sub(r"\]([(\[])", r"]\\\1", text)


# -- "What the published numbers measure" ------------------------------------------------------------------
EXPLAIN_TITLE = "What the published numbers measure"
EXPLAIN_INTRO = (
    "Top-1 accuracy % [95% Wilson interval], per model: clean; the released pipeline's clamp of the "
    "normalized tensor alone (eps 0); the paper's four attacks as its released code ran them (normalized "
    "inputs, torchattacks 1.3 semantics, emulated); the same attacks at the same nominal eps on [0,1] "
    "images; the standard attacks; the paper's printed value where the row is the paper's configuration."
)


def explain_grid(section: ExplainSection) -> tuple[list[str], list[list[str]]]:
    """Model | Attack | one column per setting: each column reads like a row of the paper's table."""
    header = ["Model", "Attack", *(section.setting_labels[s] for s in section.settings)]
    body = []
    for er in section.rows:
        first = True
        for attack_row in ATTACK_ROWS:
            line = []
            for setting in section.settings:
                if setting == "paper":
                    pv = er.paper.get(attack_row)
                    line.append("–" if pv is None else pv.printed)
                else:
                    line.append(value_text(er.cells.get((attack_row, setting)), section.metric))
            if all(v == "–" for v in line):
                continue
            body.append([er.row.label if first else "", row_label(attack_row), *line])
            first = False
    return header, body


def explain_notes(section: ExplainSection) -> list[str]:
    """What each column ran (the attacks' own descriptions) and on how many examples."""
    notes = []
    for setting in section.settings:
        if setting == "paper":
            notes.append(
                f"{section.setting_labels[setting]}: the paper's value, only where the row is the paper's "
                "configuration (its architecture without overrides, trained weights, its dataset)."
            )
            continue
        described = [
            f"{row_label(a)}: {section.descriptions[(a, setting)]}"
            for a in ATTACK_ROWS
            if a != "clean" and (a, setting) in section.descriptions
        ]
        ns = sorted({c.n for (a, s), c in _cells_of(section) if s == setting and c.n is not None})
        n_text = f" n = {', '.join(map(str, ns))} examples per model." if ns else ""
        notes.append(f"{section.setting_labels[setting]}: " + "; ".join(described) + "." + n_text)
    return notes


def _cells_of(section: ExplainSection) -> list[tuple[tuple[str, str], Cell]]:
    return [(k, c) for er in section.rows for k, c in er.cells.items()]


def _md_explain(section: ExplainSection, figure_dir: str) -> list[str]:
    name = slug(f"explain-{section.dataset}")
    out = [f"## {EXPLAIN_TITLE}: {md_text(section.dataset_label)}", ""]
    out += [EXPLAIN_INTRO, ""]
    out += [md_table(*explain_grid(section)), ""]
    out += [f"- {md_text(n)}" for n in explain_notes(section)] + [""]
    out += ["**Reading.** " + " ".join(md_text(p) for p in section.reading), ""]
    out += [f"![{name}]({figure_dir}/{name}.png)", ""]
    return out


def md_table(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(md_text(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _interval(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{signed(ci[0])}, {signed(ci[1])}]"


def dnha_grid(rows: Sequence[DNHA]) -> tuple[list[str], list[list[str]]]:
    header = [
        "Dataset",
        "Attack",
        "Metric",
        "Best NAS",
        "NAS %",
        "Best handcrafted",
        "Handcrafted %",
        "DNHA (pp)",
        "95% CI (pp)",
        "CI method",
        "Exceeds uncertainty",
        "Selection-aware 95% CI (pp)",
        "Paper DNHA (pp)",
    ]
    body = []
    for d in rows:
        body.append(
            [
                d.dataset_label,
                d.label,
                METRIC_LABEL[d.metric],
                d.nas_model,
                pct(d.nas_value),
                d.hand_model,
                pct(d.hand_value),
                signed(d.value),
                _interval(d.ci),
                d.ci_method,
                {True: "yes", False: "no", None: "n/a"}[d.exceeds],
                _interval(d.selection_ci),
                signed(d.paper),
            ]
        )
    return header, body


def provenance_grid(runs: Sequence[RunResult]) -> tuple[list[str], list[list[str]]]:
    header = [
        "Run",
        "Dataset",
        "Subset",
        "Model",
        "Weights",
        "Attack",
        "Parameters",
        "Profile",
        "Metric",
        "Seed",
        "dtype",
        "Device",
        "n",
        "Complete",
        "L-inf max",
        "Versions",
        "Code",
        "Flags",
    ]
    body = []
    for r in runs:
        versions = r.meta.get("versions") or r.meta.get("library_versions") or {}
        body.append(
            [
                r.run_id,
                r.dataset_label,
                r.subset,
                r.model,
                r.weights_hash[:12],
                r.attack,
                canonical_json(r.attack_params),
                r.profile,
                r.adv_metric,
                str(r.seed),
                r.dtype,
                r.device,
                f"{r.n}/{r.n_planned}",
                "yes" if r.complete else "no",
                f"{r.linf_max:.6g}",
                canonical_json(versions) if isinstance(versions, dict) else str(versions),
                str(r.meta.get("code_revision", r.meta.get("git", ""))),
                "; ".join(f"{f.check}={f.status}" for f in r.flags),
            ]
        )
    return header, body


def flags_grid(runs: Sequence[RunResult]) -> tuple[list[str], list[list[str]]]:
    header = ["Run", "Dataset", "Model", "Attack", "Check", "Status", "Value", "Detail"]
    body = []
    for r in runs:
        for f in r.flags:
            body.append(
                [
                    r.run_id,
                    r.dataset_label,
                    r.model,
                    r.attack,
                    f.check,
                    f.status,
                    "" if f.value is None else f"{f.value:.6g}",
                    f.detail,
                ]
            )
    return header, body


def write_markdown(
    path: Path,
    title: str,
    intro: list[str],
    tables: Sequence[Table],
    dnha_rows: Sequence[DNHA],
    figures: Sequence[dict[str, Any]],
    runs: Sequence[RunResult],
    figure_dir: str,
    explain: Sequence[ExplainSection] = (),
) -> None:
    out = [f"# {md_text(title)}", "", *(md_text(p) for p in intro), ""]
    out.append(
        "Cells: accuracy % [95% Wilson interval]; ⚠ = a reliability check warned, ✗ = one failed "
        "(see Flags); (min) = minimum over attacks where per-example outcomes do not align; "
        "(partial) = a run not finished (--include-incomplete); "
        "paper (Δ) = the paper's printed value and measured minus paper in percentage points."
    )
    out.append("")
    for section in explain:
        out += _md_explain(section, figure_dir)
    for t in tables:
        out += [f"## {md_text(t.title)}", ""]
        if t.paper_ref:
            out += [f"Layout of the paper's {md_text(t.paper_ref)}.", ""]
        out += [f"- {md_text(n)}" for n in t.notes] + ([""] if t.notes else [])
        out += [md_table(*table_grid(t)), ""]
    if dnha_rows:
        out += [
            "## DNHA: best NAS minus best handcrafted accuracy (Figure 1)",
            "",
            md_table(*dnha_grid(dnha_rows)),
            "",
        ]
    if figures:
        out += ["## Figures", ""]
        for spec in (f for f in figures if not f["id"].startswith("explain-")):  # those are in their section
            name = slug(spec["id"])
            out += [
                f"### {md_text(spec['title'])}",
                "",
                f"![{name}]({figure_dir}/{name}.png)",
                "",
                f"Data: `{figure_dir}/{name}.json`; vector: `{figure_dir}/{name}.svg`, "
                f"`{figure_dir}/{name}.pdf`.",
                "",
            ]
    if runs:
        fh, fb = flags_grid(runs)
        out += ["## Flags (reliability checks)", "", md_table(fh, fb) if fb else "No checks stored.", ""]
        out += ["## Provenance", "", md_table(*provenance_grid(runs)), ""]
    path.write_text("\n".join(out), encoding="utf-8")


# -- LaTeX ------------------------------------------------------------------------------------------------
_TEX = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "\\": r"\textbackslash{}",
    "Δ": r"$\Delta$",
    "⚠": r"$^\dagger$",
    "✗": r"$^\ddagger$",
    "–": "--",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def _tex_float(
    header: Sequence[str], body: Sequence[Sequence[str]], spec: str, caption: str, label: str = ""
) -> str:
    """A booktabs table float: ``caption`` is LaTeX (escape text first), the cells are escaped here."""
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\scriptsize",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(tex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(tex_escape(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}"]
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def tex_table(table: Table) -> str:
    header, body = table_grid(table)
    spec = "ll" + "r" * (len(header) - 2)
    return _tex_float(header, body, spec, tex_escape(table.title), f"tab:{table.id}")


def write_latex(
    path: Path, tables: Sequence[Table], dnha_rows: Sequence[DNHA], explain: Sequence[ExplainSection] = ()
) -> None:
    parts = ["% generated by robustarch report; needs \\usepackage{booktabs}", ""]
    for section in explain:
        header, body = explain_grid(section)
        caption = tex_escape(
            f"{EXPLAIN_TITLE}, {section.dataset_label}: top-1 accuracy (%). " + " ".join(section.reading)
        )
        parts.append(
            _tex_float(
                header,
                body,
                "ll" + "r" * (len(header) - 2),
                caption,
                f"tab:{slug('explain-' + section.dataset)}",
            )
        )
    parts += [tex_table(t) for t in tables]
    if dnha_rows:
        header, body = dnha_grid(dnha_rows)
        spec = "lll" + "r" * (len(header) - 3)
        parts.append(_tex_float(header, body, spec, r"DNHA = max(NAS) $-$ max(handcrafted)"))
    path.write_text("\n".join(parts), encoding="utf-8")


# -- CSV --------------------------------------------------------------------------------------------------
CELL_FIELDS = [
    "table",
    "dataset",
    "dataset_label",
    "profile",
    "adv_metric",
    "row",
    "model",
    "family",
    "method",
    "params_m",
    "column",
    "attack",
    "attack_params",
    "metric",
    "value_pct",
    "ci_lo_pct",
    "ci_hi_pct",
    "count",
    "n",
    "paper_dataset",
    "paper_printed",
    "diff_pp",
    "paper_in_ci",
    "source",
    "run_ids",
    "flags",
    "subset",
    "weights_hash",
    "seed",
    "dtype",
    "device",
    "versions",
    "code_revision",
]


def _provenance(run_ids: Sequence[str], runs_by_id: dict[str, RunResult]) -> dict[str, str]:
    """The provenance fields of the runs behind a cell (values joined with " | " where runs differ)."""
    runs = [runs_by_id[r] for r in run_ids if r in runs_by_id]

    def join(values: Iterable[str]) -> str:
        return " | ".join(dict.fromkeys(values))

    return {
        "subset": join(r.subset for r in runs),
        "weights_hash": join(r.weights_hash for r in runs),
        "seed": join(str(r.seed) for r in runs),
        "dtype": join(r.dtype for r in runs),
        "device": join(r.device for r in runs),
        "versions": join(canonical_json(r.meta.get("versions", {})) for r in runs),
        "code_revision": join(str(r.meta.get("code_revision", "")) for r in runs),
    }


def cell_records(tables: Sequence[Table], runs: Sequence[RunResult] = ()) -> list[dict[str, Any]]:
    """Every table cell in long form: one record per (table, row, column, metric), with its provenance."""
    runs_by_id = {r.run_id: r for r in runs}
    out = []
    for t in tables:
        for row in t.rows:
            for col in t.columns:
                cell = row.cells.get(col.key)
                if cell is None:
                    continue
                for m in t.metrics:
                    if m not in cell.values:
                        continue
                    ci = cell.ci.get(m)
                    paper = cell.paper.get(m)
                    out.append(
                        {
                            "table": t.id,
                            "dataset": t.dataset,
                            "dataset_label": t.dataset_label,
                            "profile": t.profile,
                            "adv_metric": t.adv_metric,
                            "row": row.key,
                            "model": row.model,
                            "family": row.family,
                            "method": row.method,
                            "params_m": _params(row),
                            "column": col.key,
                            "attack": col.attack,
                            "attack_params": canonical_json(col.params),
                            "metric": m,
                            "value_pct": f"{100 * cell.values[m]:.6f}",
                            "ci_lo_pct": "" if ci is None else f"{100 * ci[0]:.6f}",
                            "ci_hi_pct": "" if ci is None else f"{100 * ci[1]:.6f}",
                            "count": cell.counts.get(m, ""),
                            "n": "" if cell.n is None else cell.n,
                            "paper_dataset": "" if paper is None else paper.dataset,
                            "paper_printed": "" if paper is None else paper.printed,
                            "diff_pp": ""
                            if t.published or cell.diff(m) is None
                            else f"{100 * cell.diff(m):.6f}",
                            "paper_in_ci": {True: "yes", False: "no", None: ""}[cell.paper_in_ci(m)],
                            "source": cell.source,
                            "run_ids": " ".join(cell.run_ids),
                            "flags": "; ".join(f"{f.run_id}:{f.check}={f.status}" for f in cell.flags),
                            **_provenance(cell.run_ids, runs_by_id),
                        }
                    )
    return out


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: Any) -> Any:
    """A cell that a spreadsheet will not run: text starting with ``= + - @`` (or a tab / carriage return)
    gets a leading ``'`` (OWASP's CSV-injection advice), unless it is a plain number such as ``-3.5``."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any] | dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        rows = list(rows)
        if rows and isinstance(rows[0], dict):
            fields = list(header)
            writer = csv.writer(fh)
            writer.writerow([csv_cell(h) for h in fields])
            writer.writerows([[csv_cell(r.get(f, "")) for f in fields] for r in rows])  # type: ignore[union-attr]
        else:
            writer = csv.writer(fh)
            writer.writerow([csv_cell(h) for h in header])
            writer.writerows([[csv_cell(c) for c in r] for r in rows])


EXPLAIN_FIELDS = [
    "dataset", "dataset_label", "row", "model", "label", "family", "random_init", "paper_configuration",
    "attack_row", "setting", "setting_label", "description", "value_pct", "ci_lo_pct", "ci_hi_pct", "count",
    "n", "paper_printed", "run_ids",
]  # fmt: skip


def explain_records(sections: Sequence[ExplainSection]) -> list[dict[str, Any]]:
    """The explain sections in long form: one record per (dataset, model, attack row, setting)."""
    out = []
    for sec in sections:
        for er in sec.rows:
            common = {
                "dataset": sec.dataset, "dataset_label": sec.dataset_label, "row": er.row.key,
                "model": er.row.model, "label": er.row.label, "family": er.row.family,
                "random_init": "yes" if er.row.random_init else "no",
                "paper_configuration": "yes" if er.row.paper_config else "no",
            }  # fmt: skip
            for attack_row in ATTACK_ROWS:
                for setting in sec.settings:
                    cell = er.cells.get((attack_row, setting))
                    pv = er.paper.get(attack_row) if setting == "paper" else None
                    if cell is None and pv is None:
                        continue
                    ci = cell.ci.get(sec.metric) if cell is not None else None
                    out.append(
                        {
                            **common,
                            "attack_row": attack_row,
                            "setting": setting,
                            "setting_label": sec.setting_labels[setting],
                            "description": sec.descriptions.get((attack_row, setting), ""),
                            "value_pct": f"{100 * (cell.values[sec.metric] if cell else pv.fraction):.6f}",
                            "ci_lo_pct": "" if ci is None else f"{100 * ci[0]:.6f}",
                            "ci_hi_pct": "" if ci is None else f"{100 * ci[1]:.6f}",
                            "count": "" if cell is None else cell.counts.get(sec.metric, ""),
                            "n": "" if cell is None or cell.n is None else cell.n,
                            "paper_printed": "" if pv is None else pv.printed,
                            "run_ids": "" if cell is None else " ".join(cell.run_ids),
                        }
                    )
    return out


def dnha_records(rows: Sequence[DNHA]) -> list[dict[str, Any]]:
    return [
        {
            "table": d.table_id,
            "dataset": d.dataset,
            "dataset_label": d.dataset_label,
            "column": d.column,
            "attack": d.attack,
            "metric": d.metric,
            "nas_model": d.nas_model,
            "nas_pct": f"{100 * d.nas_value:.6f}",
            "hand_model": d.hand_model,
            "hand_pct": f"{100 * d.hand_value:.6f}",
            "dnha_pp": f"{100 * d.value:.6f}",
            "ci_lo_pp": "" if d.ci is None else f"{100 * d.ci[0]:.6f}",
            "ci_hi_pp": "" if d.ci is None else f"{100 * d.ci[1]:.6f}",
            "exceeds_uncertainty": {True: "yes", False: "no", None: ""}[d.exceeds],
            "ci_method": d.ci_method,
            "selection_ci_lo_pp": "" if d.selection_ci is None else f"{100 * d.selection_ci[0]:.6f}",
            "selection_ci_hi_pp": "" if d.selection_ci is None else f"{100 * d.selection_ci[1]:.6f}",
            "paper_dnha_pp": "" if d.paper is None else f"{100 * d.paper:.6f}",
        }
        for d in rows
    ]


# -- HTML -------------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:12px}
th,td{border-bottom:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}
th{border-bottom:2px solid #333}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}
td.warn{background:#fff4d6}td.fail{background:#fde0e0}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:13px}
.scroll{overflow-x:auto}
"""

# Marks the document once every figure has loaded with a non-zero size, so a headless browser (and the
# tests) can tell that all figures displayed.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll('figure img'));
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; });
  document.body.setAttribute('data-figures-total', String(imgs.length));
  document.body.setAttribute('data-figures-ok', String(ok.length));
  document.body.setAttribute('data-report-ready', ok.length === imgs.length ? 'yes' : 'no');
});
"""


def _html_table(
    header: Sequence[str],
    body: Sequence[Sequence[str]],
    classes: Sequence[Sequence[str]] | None = None,
    titles: Sequence[Sequence[str]] | None = None,
) -> str:
    out = ['<div class="scroll"><table><thead><tr>']
    out += [f"<th>{html.escape(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(body):
        out.append("<tr>")
        for j, c in enumerate(row):
            cls = classes[i][j] if classes else ""
            title = titles[i][j] if titles else ""
            attrs = (f' class="{cls}"' if cls else "") + (f' title="{html.escape(title)}"' if title else "")
            out.append(f"<td{attrs}>{html.escape(c)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _cell_meta(table: Table, runs_by_id: dict[str, RunResult]) -> tuple[list[list[str]], list[list[str]]]:
    """Per body cell: a CSS class for its flag status and a tooltip with its provenance."""
    _, spec = _grid_spec(table)
    lead = len(_lead(table))
    classes, titles = [], []
    for row in table.rows:
        cls_row, title_row = [""] * lead, [""] * lead
        for key, _m, what in spec:
            cell = row.cells.get(key)
            if cell is None or what == "paper":
                cls_row.append("")
                title_row.append("")
                continue
            cls_row.append(cell.worst_status if cell.worst_status != "ok" else "")
            parts = [cell.source]
            for rid in cell.run_ids:
                r = runs_by_id.get(rid)
                if r is not None:
                    parts.append(
                        f"run {rid}: {r.attack} {canonical_json(r.attack_params)}, profile {r.profile}, "
                        f"seed {r.seed}, {r.dtype} on {r.device}, n={r.n}, weights {r.weights_hash[:12]}"
                    )
            parts += [f"{f.check}: {f.status} {f.detail}" for f in cell.flags if f.status != "ok"]
            title_row.append("\n".join(parts))
        classes.append(cls_row)
        titles.append(title_row)
    return classes, titles


def _html_figure(fig_id: str, title: str, svg: Path) -> str:
    data = base64.b64encode(svg.read_bytes()).decode("ascii")
    return (
        f'<figure id="{html.escape(fig_id)}"><img alt="{html.escape(title)}" '
        f'src="data:image/svg+xml;base64,{data}"><figcaption>{html.escape(title)}</figcaption></figure>'
    )


def _html_explain(section: ExplainSection, svg: Path | None) -> list[str]:
    out = [f"<h2>{EXPLAIN_TITLE}: {html.escape(section.dataset_label)}</h2>"]
    out.append(f'<p class="note">{html.escape(EXPLAIN_INTRO)}</p>')
    out.append(_html_table(*explain_grid(section)))
    out += [f'<p class="note">{html.escape(n)}</p>' for n in explain_notes(section)]
    out.append("<p><b>Reading.</b> " + html.escape(" ".join(section.reading)) + "</p>")
    if svg is not None:
        out.append(_html_figure(slug(f"explain-{section.dataset}"), section.dataset_label, svg))
    return out


def write_html(
    path: Path,
    title: str,
    intro: list[str],
    tables: Sequence[Table],
    dnha_rows: Sequence[DNHA],
    figures: Sequence[tuple[dict[str, Any], dict[str, Path]]],
    runs: Sequence[RunResult],
    explain: Sequence[ExplainSection] = (),
) -> None:
    """One self-contained page: styles and the readiness script inline, figures as data: URIs, and a
    Content-Security-Policy that forbids loading anything from elsewhere."""
    runs_by_id = {r.run_id: r for r in runs}
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    out += [f'<p class="note">{html.escape(p)}</p>' for p in intro]
    out.append(
        '<p class="note">Cells: accuracy % [95% Wilson interval]. Yellow/⚠ = a reliability check '
        "warned, red/✗ = one failed. Hover a cell for its provenance.</p>"
    )
    svg = {spec["id"]: paths["svg"] for spec, paths in figures}
    for section in explain:
        out += _html_explain(section, svg.get(slug(f"explain-{section.dataset}")))
    out.append("<h2>Tables</h2>")
    for t in tables:
        out.append(f'<h3 id="{html.escape(t.id)}">{html.escape(t.title)}</h3>')
        if t.paper_ref:
            out.append(f'<p class="note">Layout of the paper\'s {html.escape(t.paper_ref)}.</p>')
        out += [f'<p class="note">{html.escape(n)}</p>' for n in t.notes]
        header, body = table_grid(t)
        classes, titles = _cell_meta(t, runs_by_id)
        out.append(_html_table(header, body, classes, titles))
    if dnha_rows:
        out.append("<h2>DNHA: best NAS minus best handcrafted accuracy (Figure 1)</h2>")
        out.append(_html_table(*dnha_grid(dnha_rows)))
    if figures:
        out.append("<h2>Figures</h2>")
        for spec, paths in figures:
            if not spec["id"].startswith("explain-"):  # shown in its section above
                out.append(_html_figure(spec["id"], spec["title"], paths["svg"]))
    if runs:
        fh, fb = flags_grid(runs)
        out.append("<h2>Flags (reliability checks)</h2>")
        out.append(_html_table(fh, fb) if fb else "<p>No checks stored.</p>")
        out.append("<h2>Provenance</h2>")
        out.append(_html_table(*provenance_grid(runs)))
        metas = {r.run_id: r.meta for r in runs}
        out.append(
            "<details><summary>Full run metadata (JSON)</summary><pre>"
            + html.escape(json.dumps(metas, indent=1, sort_keys=True))
            + "</pre></details>"
        )
    out.append(f"<script>{_SCRIPT}</script></body></html>")
    path.write_text("\n".join(out), encoding="utf-8")
