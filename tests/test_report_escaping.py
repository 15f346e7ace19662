"""Stored strings are data, never markup, formulas or paths: payloads in a crafted store and in a study file
come out of every report format inert (Markdown escapes HTML and links, the HTML page escapes everything,
CSV cells a spreadsheet would run are neutralized, file names are slugs inside the report folder)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from robustarch.report import build_report
from robustarch.report.render import csv_cell, md_text
from robustarch.store import ExampleOutcome, RunKey, Store

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
LINK = "[click](javascript:alert(3))"
FORMULA = '=HYPERLINK("http://evil","x")'
DDE = "-2+3+cmd|' /C calc'!A0"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _run(store: Store, dataset: str, label: str, model: str, method: str, attack: str, params: dict) -> None:
    profile = "none" if attack == "clean" else "paper"
    key = RunKey(dataset, label, "test/first:8", model, "nas", method, 10, "w-" + model[:4], attack, params,
                 profile, 0, "float32", "cpu", 8, 8, "perturbed")  # fmt: skip
    rid = store.begin_run(key, {"weights": "w.pt", "overrides": {}, "note": SCRIPT})
    store.commit_chunk(
        rid,
        0,
        [ExampleOutcome(i, i % 2, 0, True, True, 1, i % 3 == 0, True, 0.01, 0.1, True) for i in range(8)],
    )
    assert store.finish_run(rid)


def _crafted(path: Path) -> None:
    with Store(path) as store:
        for model, method in ((SCRIPT, IMG), (FORMULA, DDE), (LINK, "@SUM(1+1)")):
            for attack, params in (
                ("clean", {}),
                ("fgsm", {"eps": 0.007}),
                ("pgd", {"eps": 0.3, "tag": IMG}),
            ):
                _run(store, "x/../../evil", f"{SCRIPT} {LINK}", model, method, attack, params)


def _check_report(out: Path, written: dict[str, Path], payloads: list[str]) -> None:
    # no file outside the report folder, and every file name a slug
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve())
        if path.is_file():
            assert re.fullmatch(r"[a-z0-9_.-]+", path.name), path.name
    md = written["md"].read_text(encoding="utf-8")
    assert "<script" not in md and "<img" not in md and "](javascript" not in md
    assert "&lt;img src=x onerror=alert(2)&gt;" in md
    page = written["html"].read_text(encoding="utf-8")
    assert page.count("<script") == 1  # the page's own readiness script, nothing from the store
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    tex = written["tex"].read_text(encoding="utf-8")
    assert "<" not in tex and ">" not in tex and r"\textless{}" in tex
    for path in (out / "csv").glob("*.csv"):
        with path.open(encoding="utf-8", newline="") as fh:
            for row in csv.reader(fh):
                for cell in row:
                    assert not cell.startswith(("=", "+", "@", "\t", "\r")), (path.name, cell)
                    assert not cell.startswith("-") or re.fullmatch(r"-[\d.]+(e[+-]?\d+)?", cell), cell
    cells = (out / "csv" / "cells.csv").read_text(encoding="utf-8")
    for payload in payloads:
        if payload.startswith(("=", "-", "@")):
            assert "'" + payload.replace('"', '""') in cells or "'" + payload in cells


def test_payloads_in_a_crafted_store(tmp_path):
    _crafted(tmp_path / "s.sqlite")
    out = tmp_path / "report"
    written = build_report(tmp_path / "s.sqlite", out)
    _check_report(out, written, [FORMULA, DDE])
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures and all(name.startswith(("fig", "sweep")) for name in figures)


def test_csv_keeps_numbers_and_neutralizes_formulas():
    assert csv_cell("-3.500000") == "-3.500000" and csv_cell("+1e-3") == "+1e-3" and csv_cell(-2) == -2
    assert csv_cell(FORMULA) == "'" + FORMULA and csv_cell(DDE) == "'" + DDE and csv_cell("@x") == "'@x"
    assert csv_cell("\t=1") == "'\t=1" and csv_cell("ResNet-18") == "ResNet-18"


def test_markdown_text_is_inert():
    assert md_text(SCRIPT) == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert "](" not in md_text(LINK) and "](" not in md_text("![x](http://e/x.png)")
    assert md_text("a|b\n# heading") == "a\\|b # heading"
    assert md_text("93.10 [88.16, 96.34]") == "93.10 [88.16, 96.34]"  # our numbers stay readable


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_payloads_through_a_study_file(tmp_path):
    """A model id is free text in a study file: it reaches the store and the report as data only."""
    from robustarch.cli import main

    model_id = f"{IMG}{LINK}"
    # TOML inline tables stay on one line
    resnet = (
        f"{{ name = 'resnet18', id = '{model_id}', random_init = true, "
        "overrides = { width = 4, layers = [1, 1, 1, 1] } }"
    )
    darts = (
        f"{{ name = 'darts', id = '{FORMULA}', random_init = true, "
        "overrides = { C = 4, layers = 3, auxiliary = false } }"
    )
    study = tmp_path / "study.toml"
    study.write_text(
        f"""[study]
name = "{FORMULA.replace('"', "'")}"
store = "s.sqlite"
device = "cpu"
batch_size = 4
attacks = ["fgsm"]

[[datasets]]
name = "fashion-mnist"
root = "{FASHION}"
limit = 4
models = [
  {resnet},
  {darts},
]
""",
        encoding="utf-8",
    )
    assert main(["study", "run", str(study), "--no-progress"]) == 0
    out = tmp_path / "report"
    written = build_report(tmp_path / "s.sqlite", out)
    _check_report(out, written, [FORMULA])
    md = written["md"].read_text(encoding="utf-8")
    assert md_text(model_id + " (random init)") in md
