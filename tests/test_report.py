"""Reports from a store with known numbers: every table cell, figure series and HTML figure traced back to
the per-example outcomes written through the store API (no number in a report that is not in the store)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from conftest import shared_path
from robustarch.cli import report as cli
from robustarch.errors import RobustarchError
from robustarch.report import FORMATS, build_report, collect
from robustarch.report.figures import draw
from robustarch.report.paper import model_info, paper_value
from robustarch.report.render import value_text
from robustarch.report.tables import architecture_family
from robustarch.store import ExampleOutcome, RunKey, Store

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
PAPER_PGD = {"eps": 0.3, "alpha": 0.007, "steps": 10, "random_start": False}

# (dataset, label, profile, model, family, method, params)
MODELS = {
    "cifar10": [
        ("resnet18", "handcrafted", "ResNet", 11_173_962),
        ("densenet121", "handcrafted", "DenseNet", 6_956_298),
        ("darts", "nas", "DARTS", 3_349_342),
        ("pc_darts", "nas", "PC-DARTS", 3_632_634),
    ],
    "cifar10-jpeg": [("resnet18", "handcrafted", "ResNet", 11_173_962), ("darts", "nas", "DARTS", 3_349_342)],
    "imagenet": [
        ("resnet50", "handcrafted", "ResNet", 25_557_032),
        ("densenas_a", "nas", "DenseNAS", 4_760_000),
        ("densenas_b", "nas", "DenseNAS", 5_580_000),
        ("densenas_r1", "nas", "DenseNAS", 11_090_000),
    ],
}
LABELS = {"cifar10": "CIFAR-10", "cifar10-jpeg": "CIFAR-10 (JPEG q75)", "imagenet": "ImageNet"}


@dataclass
class Truth:
    """What the test wrote, per run: counts computed here from the generated outcomes, not by the store."""

    runs: dict[str, dict] = field(default_factory=dict)  # run_id -> key fields + counts + outcomes
    incomplete: set[str] = field(default_factory=set)


def _outcomes(rng, n, clean1, clean5, attack_keep, start=0):
    out = []
    for i in range(n):
        c1, c5 = bool(clean1[i]), bool(clean5[i])
        if attack_keep is None:
            a1, a5, linf = c1, c5, 0.0
        else:
            a1 = c1 and rng.random() < attack_keep
            a5 = c5 and (a1 or rng.random() < attack_keep)
            linf = 0.03
        out.append(ExampleOutcome(start + i, int(i % 10), 0, c1, c5, 1, a1, a5, linf, linf * 30, True))
    return out


def _write_run(
    store,
    truth,
    rng,
    *,
    dataset,
    model,
    family,
    method,
    params_count,
    attack,
    attack_params,
    profile,
    n,
    clean1,
    clean5,
    keep,
    subset="first:n",
    complete=True,
    weights="w",
):
    # as the engine does: clean runs have profile "none"; the study's profile counts accuracy on the
    # perturbed inputs, the others robust accuracy
    profile = "none" if attack == "clean" else profile
    metric = "perturbed" if profile in ("paper", "none") else "robust"
    key = RunKey(
        dataset,
        LABELS[dataset],
        subset,
        model,
        family,
        method,
        params_count,
        f"{weights}-{model}",
        attack,
        attack_params,
        profile,
        0,
        "float32",
        "cpu",
        n,
        20,
        metric,
    )
    meta = {
        "versions": {"torch": "2.13.0", "robustarch": "0.1.0"},
        "code_revision": "abc1234",
        "hostname": "t",
    }
    run_id = store.begin_run(key, meta)
    outs = _outcomes(rng, n, clean1, clean5, keep)
    for c in range(key.n_chunks if complete else 1):
        lo, hi = key.chunk_bounds(c)
        store.commit_chunk(run_id, c, outs[lo:hi])
    if complete:
        assert store.finish_run(run_id)
    else:
        truth.incomplete.add(run_id)
    truth.runs[run_id] = {
        "dataset": dataset,
        "model": model,
        "attack": attack,
        "params": attack_params,
        "profile": profile,
        "params_count": params_count,
        "n": n,
        "outcomes": outs,
        "clean1": sum(o.clean_correct1 for o in outs),
        "clean5": sum(o.clean_correct5 for o in outs),
        "adv1": sum(o.adv_correct1 for o in outs),
        "adv5": sum(o.adv_correct5 for o in outs),
    }
    return run_id


def _make_store(path: Path) -> Truth:
    rng = np.random.default_rng(1234)
    truth = Truth()
    with Store(path) as store:
        for dataset, models in MODELS.items():
            profile = "standard" if dataset == "imagenet" else "paper"
            for model, family, method, pc in models:
                n = 60
                c1 = rng.random(n) < rng.uniform(0.6, 0.95)
                c5 = c1 | (rng.random(n) < 0.6)
                common = dict(
                    dataset=dataset,
                    model=model,
                    family=family,
                    method=method,
                    params_count=pc,
                    profile=profile,
                    clean1=c1,
                    clean5=c5,
                )
                if dataset == "cifar10":
                    _write_run(store, truth, rng, **common, attack="clean", attack_params={}, n=n, keep=None)
                    fgsm = _write_run(
                        store,
                        truth,
                        rng,
                        **common,
                        attack="fgsm",
                        attack_params={"eps": 0.007},
                        n=n,
                        keep=rng.uniform(0.3, 0.9),
                    )
                    pgd = _write_run(
                        store,
                        truth,
                        rng,
                        **common,
                        attack="pgd",
                        attack_params=PAPER_PGD,
                        n=n,
                        keep=rng.uniform(0.0, 0.3),
                    )
                    _write_run(
                        store,
                        truth,
                        rng,
                        **common,
                        attack="square",
                        attack_params={"eps": 8 / 255, "queries": 100},
                        n=n,
                        keep=rng.uniform(0.2, 0.8),
                    )
                    if model in ("resnet18", "darts"):  # an eps sweep for two models
                        for eps in (1 / 255, 2 / 255):
                            _write_run(
                                store,
                                truth,
                                rng,
                                **common,
                                attack="pgd",
                                n=n,
                                attack_params={**PAPER_PGD, "eps": eps},
                                keep=0.9 - 40 * eps,
                            )
                    if model == "darts":
                        store.add_flag(fgsm, "budget_audit", "warn", 0.5, "half the budget unused")
                    if model == "resnet18":
                        store.add_flag(pgd, "eps0_identity", "fail", 0.02, "eps=0 changed 2% of predictions")
                        store.add_flag(fgsm, "noise_baseline", "ok", None, "noise weaker than FGSM")
                        # an unfinished run: left out of the report
                        _write_run(
                            store,
                            truth,
                            rng,
                            **common,
                            attack="stepll",
                            attack_params={"eps": 0.01, "alpha": 0.003},
                            n=n,
                            keep=0.5,
                            complete=False,
                        )
                elif dataset == "cifar10-jpeg":
                    _write_run(store, truth, rng, **common, attack="clean", attack_params={}, n=n, keep=None)
                    _write_run(
                        store,
                        truth,
                        rng,
                        **common,
                        attack="fgsm",
                        attack_params={"eps": 0.007},
                        n=40,
                        keep=0.6,
                        subset="first:40",
                    )
                    _write_run(
                        store, truth, rng, **common, attack="pgd", attack_params=PAPER_PGD, n=n, keep=0.2
                    )  # other examples than FGSM's: the worst case falls back to the min
                else:
                    if (
                        model != "densenas_b"
                    ):  # densenas_b's clean column comes from its attack runs' clean pass
                        _write_run(
                            store, truth, rng, **common, attack="clean", attack_params={}, n=n, keep=None
                        )
                    _write_run(
                        store,
                        truth,
                        rng,
                        **common,
                        attack="fgsm",
                        attack_params={"eps": 4 / 255},
                        n=n,
                        keep=rng.uniform(0.3, 0.6),
                    )
                    for k in (2, 4, 8):  # a PGD eps sweep, step size eps/4 (the standard preset's)
                        _write_run(
                            store,
                            truth,
                            rng,
                            **common,
                            attack="pgd",
                            n=n,
                            attack_params={"eps": k / 255, "alpha": k / 255 / 4, "steps": 10},
                            keep=0.8 - 0.08 * k,
                        )
    return truth


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    store = folder / "store.sqlite"
    truth = _make_store(store)
    out = folder / "out"
    written = build_report(store, out)
    return truth, out, written, store


def _pct(k: int, n: int) -> float:
    return 100.0 * k / n


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Independent Wilson score interval (not the store's code) for checking the report."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _cells(written) -> list[dict]:
    return list(csv.DictReader(written["csv"].open(encoding="utf-8")))


def _worst(runs: list[dict], m: str) -> tuple[int, int]:
    """Worst case over runs: per example where they cover the same examples, else the lowest accuracy."""
    outs = [r["outcomes"] for r in runs]
    ids = [[(o.example_id, o.label) for o in out] for out in outs]
    if all(i == ids[0] for i in ids):
        n = len(outs[0])
        return sum(all(getattr(o[i], f"adv_correct{m}") for o in outs) for i in range(n)), n
    low = min(runs, key=lambda r: r[f"adv{m}"] / r["n"])
    return low[f"adv{m}"], low["n"]


def _expected(truth: Truth, rec: dict) -> tuple[int, int]:
    """(count, n) the store holds for a cell record, from the outcomes this test generated."""
    m = rec["metric"][-1]
    rids = rec["run_ids"].split()
    if rec["column"] == "worst":
        return _worst([truth.runs[r] for r in rids], m)
    (rid,) = rids
    run = truth.runs[rid]
    return run[f"clean{m}" if rec["column"] == "clean" else f"adv{m}"], run["n"]


def test_every_table_cell_is_a_stored_number(built):
    truth, _out, written, _ = built
    records = _cells(written)
    assert records
    used = set()
    for rec in records:
        k, n = _expected(truth, rec)
        assert float(rec["value_pct"]) == pytest.approx(_pct(k, n), abs=1e-5), rec
        lo, hi = _wilson(k, n)
        assert float(rec["ci_lo_pct"]) == pytest.approx(100 * lo, abs=1e-5)
        assert float(rec["ci_hi_pct"]) == pytest.approx(100 * hi, abs=1e-5)
        if rec["column"] != "worst":
            run = truth.runs[rec["run_ids"]]
            assert (rec["dataset"], rec["model"]) == (run["dataset"], run["model"])
            assert rec["attack"] == run["attack"] or rec["column"] == "clean"
            assert int(rec["count"]) == k and int(rec["n"]) == n
        used.update(rec["run_ids"].split())
    complete = set(truth.runs) - truth.incomplete
    assert used == complete  # every finished run is in a table; the unfinished one is not
    assert not used & truth.incomplete


def test_table_layout(built):
    truth, _out, _written, store = built
    with Store(store) as opened:
        report = collect(opened)
    main = {t.dataset: t for t in report.tables if t.kind == "main"}
    assert set(main) == {"cifar10", "cifar10-jpeg", "imagenet"}
    c10 = main["cifar10"]
    assert [c.label for c in c10.columns] == [
        "Clean",
        "FGSM",
        "PGD (eps=1/255)",
        "PGD (eps=2/255)",
        "PGD (eps=0.3)",
        "Square",  # the title its class declares
        "Worst case (eps <= 8/255)",
    ]
    # the worst case at a budget combines the attacks within it: sweep points above it are left out
    for table, above in ((c10, 0.3), (None, 8 / 255)):
        table = table or next(t for t in report.tables if t.kind == "main" and t.dataset == "imagenet")
        for row in table.rows:
            rids = row.cells["worst"].run_ids
            assert rids and all(truth.runs[r]["params"].get("eps", 0) < above for r in rids)
    assert [c.label for c in main["imagenet"].columns][-1] == "Worst case (eps <= 4/255)"
    assert "PGD (eps=2/255)" in [c.label for c in main["imagenet"].columns]  # alpha follows eps: not shown
    assert [r.model for r in c10.rows] == [
        "resnet18",
        "densenet121",
        "darts",
        "pc_darts",
    ]  # handcrafted first
    assert c10.metrics == ["top1"] and main["imagenet"].metrics == ["top1", "top5"]
    # worst case over aligned examples is per example: never above any attack of the row
    for row in c10.rows:
        worst = row.cells["worst"]
        assert worst.source.startswith("per-example")
        combined = [
            c for k, c in row.cells.items() if k not in ("clean", "worst") and c.run_ids[0] in worst.run_ids
        ]
        assert len(combined) == len(worst.run_ids) >= 2
        assert worst.values["top1"] <= min(c.values["top1"] for c in combined)
    assert main["cifar10-jpeg"].rows[0].cells["worst"].source.startswith("minimum")
    # densenas_b has no clean run: its clean column is its attack run's clean pass
    b = next(r for r in main["imagenet"].rows if r.model == "densenas_b")
    assert b.cells["clean"].source.startswith("clean pass")
    # families group sizes of one architecture: the paper's grouping, else the method without its depth
    assert architecture_family("densenet169", "DenseNet-169") == "DenseNet"
    assert architecture_family("wide_resnet_28", "WRN-28") == "WRN"
    families = [t for t in report.tables if t.kind == "family"]
    dn = next(t for t in families if t.dataset == "imagenet" and "DenseNAS" in t.title)
    assert [r.model for r in dn.rows] == ["densenas_a", "densenas_b", "densenas_r1"]  # by parameter count


def test_paper_values_beside_measured_only_for_the_same_setting(built):
    _truth, _out, written, _ = built
    recs = {
        (r["table"], r["model"], r["column"].split(":")[0], r["attack_params"], r["metric"]): r
        for r in _cells(written)
    }
    fgsm = recs[("main-cifar10-paper-perturbed", "resnet18", "fgsm", '{"eps":0.007}', "top1")]
    assert fgsm["paper_printed"] == "55.82"
    assert float(fgsm["diff_pp"]) == pytest.approx(float(fgsm["value_pct"]) - 55.82, abs=1e-5)
    pgd = recs[
        (
            "main-cifar10-paper-perturbed",
            "darts",
            "pgd",
            json.dumps(PAPER_PGD, sort_keys=True, separators=(",", ":")),
            "top1",
        )
    ]
    assert pgd["paper_printed"] == "3.27"
    sweep = [r for r in recs.values() if r["attack"] == "pgd" and '"eps":0.3' not in r["attack_params"]]
    assert sweep and all(r["paper_printed"] == "" for r in sweep)  # eps 1/255 is not the paper's setting
    assert all(r["paper_printed"] == "" for r in recs.values() if r["attack"] == "square")
    inet = [r for r in recs.values() if r["dataset"] == "imagenet"]
    assert all(r["paper_printed"] == "" for r in inet if r["attack"] != "clean")  # eps 4/255 != paper's
    clean = recs[("main-imagenet-standard-robust", "resnet50", "clean", "{}", "top1")]
    assert clean["paper_printed"] == paper_value("imagenet", "resnet50", "clean", "top1").printed == "76.13"
    a5 = recs[("main-imagenet-standard-robust", "densenas_a", "clean", "{}", "top5")]
    assert a5["paper_printed"] == "90.24"  # Table 4 (top-5)
    jpeg = [r for r in recs.values() if r["dataset"] == "cifar10-jpeg"]
    assert all(r["dataset_label"] == "CIFAR-10 (JPEG q75)" for r in jpeg)
    assert {r["paper_dataset"] for r in jpeg if r["paper_printed"]} == {"cifar10"}


def _md_tables(md: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    tables, title, lines = {}, None, md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## "):
            title = line[3:]
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in line.strip("|").split(" | ")]
            body = []
            for row in lines[i + 2 :]:
                if not row.startswith("| "):
                    break
                body.append([c.strip() for c in row.strip()[2:-2].split(" | ")])
            tables[title] = (header, body)
    return tables


def test_markdown_numbers_all_come_from_the_store(built):
    truth, _out, written, _ = built
    md = written["md"].read_text(encoding="utf-8")
    tables = _md_tables(md)
    c10 = next(v for k, v in tables.items() if k.startswith("CIFAR-10: accuracy"))
    header, body = c10
    row = next(r for r in body if r[0] == "ResNet-18")
    fgsm_rid = next(
        rid
        for rid, r in truth.runs.items()
        if (r["dataset"], r["model"], r["attack"]) == ("cifar10", "resnet18", "fgsm")
    )
    k, n = truth.runs[fgsm_rid]["adv1"], truth.runs[fgsm_rid]["n"]
    lo, hi = _wilson(k, n)
    cell = row[header.index("FGSM")]
    assert cell == f"{_pct(k, n):.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"
    assert row[header.index("FGSM paper (Δ)")] == f"55.82 ({_pct(k, n) - 55.82:+.2f})"
    assert row[header.index("PGD (eps=0.3)")].endswith("✗")  # the failed eps=0 check is visible
    assert next(r for r in body if r[0] == "DARTS")[header.index("FGSM")].endswith("⚠")
    jpeg_title = next(k for k in tables if k.startswith("CIFAR-10 (JPEG q75)"))
    assert "FGSM paper CIFAR-10 (Δ)" in tables[jpeg_title][0]

    # every number in every result table is a stored value, its interval, a paper value, a difference or
    # a parameter count
    allowed = set()
    for rec in _cells(written):
        for key in ("value_pct", "ci_lo_pct", "ci_hi_pct", "diff_pp"):
            if rec[key]:
                allowed.add(f"{float(rec[key]):.2f}")
                allowed.add(f"{float(rec[key]):+.2f}")
        if rec["paper_printed"]:
            allowed.add(rec["paper_printed"])
        allowed.add(rec["params_m"])
    dnha = list(csv.DictReader((written["csv"].parent / "dnha.csv").open(encoding="utf-8")))
    for d in dnha:
        for key in (
            "nas_pct", "hand_pct", "dnha_pp", "ci_lo_pp", "ci_hi_pp",
            "selection_ci_lo_pp", "selection_ci_hi_pp", "paper_dnha_pp",
        ):  # fmt: skip
            if d[key]:
                allowed.update({f"{float(d[key]):.2f}", f"{float(d[key]):+.2f}"})
    checked = 0
    for title, (_header, body) in tables.items():
        if title.startswith(("Flags", "Provenance")):
            continue
        for row in body:
            # skip the text columns (model / dataset, attack label with its eps, metric, model names)
            for cell in row[4:] if title.startswith("DNHA") else row[1:]:
                for num in re.findall(r"[+-]?\d+\.\d+", cell):
                    assert num in allowed, (title, row[0], cell)
                    checked += 1
    assert checked > 200


def _column_of(run: dict) -> str:
    if run["attack"] == "clean":
        return "clean"
    return f"{run['attack']}:{json.dumps(run['params'], sort_keys=True, separators=(',', ':'))}"


def test_dnha_rows_from_the_store(built):
    truth, _out, written, _ = built
    rows = list(csv.DictReader((written["csv"].parent / "dnha.csv").open(encoding="utf-8")))
    family = {m: f for ms in MODELS.values() for (m, f, _, _) in ms}
    checked = 0
    for d in rows:
        if d["column"] == "worst" or (d["dataset"], d["column"]) == ("imagenet", "clean"):
            continue  # worst: checked with the table cells; imagenet clean mixes a clean pass (densenas_b)
        m = d["metric"][-1]
        runs = [
            r
            for rid, r in truth.runs.items()
            if rid not in truth.incomplete and r["dataset"] == d["dataset"] and _column_of(r) == d["column"]
        ]
        key = "clean" if d["column"] == "clean" else "adv"
        best = {
            f: max(_pct(r[f"{key}{m}"], r["n"]) for r in runs if family[r["model"]] == f)
            for f in ("nas", "handcrafted")
        }
        assert float(d["dnha_pp"]) == pytest.approx(best["nas"] - best["handcrafted"], abs=1e-5)
        # both models saw the same examples: the interval is paired, from the 2x2 table of outcomes
        label_of = {r["model"]: model_info(r["model"])["label"] for r in runs}
        (nas,) = [r for r in runs if label_of[r["model"]] == d["nas_model"]]
        (hand,) = [r for r in runs if label_of[r["model"]] == d["hand_model"]]
        attr = f"{key}_correct{m}"
        pairs = [
            (getattr(a, attr), getattr(b, attr))
            for a, b in zip(nas["outcomes"], hand["outcomes"], strict=True)
        ]
        b, c, n = pairs.count((True, False)) + 0.5, pairs.count((False, True)) + 0.5, len(pairs) + 2
        half = 1.959963984540054 * math.sqrt((b + c) - (b - c) ** 2 / n) / n
        lo, hi = float(d["ci_lo_pp"]), float(d["ci_hi_pp"])
        assert d["ci_method"] == "paired (Agresti-Min)"
        assert (lo, hi) == pytest.approx((100 * ((b - c) / n - half), 100 * ((b - c) / n + half)), abs=1e-5)
        assert d["exceeds_uncertainty"] == ("yes" if lo > 0 or hi < 0 else "no")
        # the paper's DNHA sits beside ours only for the paper's own attack settings
        paper = {
            ("cifar10", "fgsm"): 73.76 - 56.17,
            ("cifar10", "pgd"): 4.45 - 17.51,
            ("cifar10", "clean"): 97.12 - 94.76,
        }
        want = paper.get((d["dataset"].replace("-jpeg", ""), d["attack"]))
        if (d["attack"] == "pgd" and '"eps":0.3' not in d["column"]) or d["dataset"] == "imagenet":
            want = None
        if want is None:
            assert d["paper_dnha_pp"] == ""
        else:
            assert float(d["paper_dnha_pp"]) == pytest.approx(want, abs=1e-6)
        checked += 1
    assert checked >= 12
    # one study, one subset per table: every model has outcomes on the same examples, so the
    # selection-aware bootstrap interval is there, around the observed DNHA
    with_selection = [d for d in rows if d["column"] != "worst" and d["selection_ci_lo_pp"]]
    assert len(with_selection) >= 12
    for d in with_selection:
        lo, hi = float(d["selection_ci_lo_pp"]), float(d["selection_ci_hi_pp"])
        assert lo - 1e-6 <= float(d["dnha_pp"]) <= hi + 1e-6
    # the JPEG table's worst case is a minimum over runs on different examples: no pairing possible
    jpeg_worst = [d for d in rows if d["dataset"] == "cifar10-jpeg" and d["column"] == "worst"]
    assert jpeg_worst and all(d["ci_method"] == "unpaired (Newcombe)" for d in jpeg_worst)
    assert any(d["exceeds_uncertainty"] == "yes" for d in rows) and any(
        d["exceeds_uncertainty"] == "no" for d in rows
    )


def _artist_data(fig):
    """(gid -> plotted (x, y) points) read back from the matplotlib objects."""
    out = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_gid():
                out[line.get_gid()] = [tuple(p) for p in line.get_xydata()]
        for coll in ax.collections:
            if coll.get_gid():
                out[coll.get_gid()] = [tuple(p) for p in coll.get_offsets()]
    return out


def test_every_figure_series_is_a_stored_number(built):
    truth, out, written, _ = built
    dnha = {
        (d["table"], d["column"], d["metric"]): d
        for d in csv.DictReader((written["csv"].parent / "dnha.csv").open(encoding="utf-8"))
    }
    specs = sorted((out / "figures").glob("*.json"))
    kinds = {p.name.split("-")[0] for p in specs}
    assert kinds == {"fig1", "fig2", "fig3", "sweep"}
    n_points = 0
    for path in specs:
        spec = json.loads(path.read_text(encoding="utf-8"))
        assert (path.with_suffix(".png")).stat().st_size > 1000 and (
            path.with_suffix(".svg")
        ).stat().st_size > 1000
        fig = draw(spec)
        try:
            drawn = _artist_data(fig)
        finally:
            plt.close(fig)
        for i, panel in enumerate(spec["panels"]):
            for j, s in enumerate(panel["series"]):
                got = drawn[f"{i}/{j}"]
                assert [p[0] for p in got] == pytest.approx(s["x"]) and [p[1] for p in got] == pytest.approx(
                    s["y"]
                )
                if s["label"].startswith("paper:"):
                    continue  # the paper's DNHA, checked in test_report_paper.py
                for k, rids in enumerate(s["runs"]):
                    runs = [truth.runs[r] for r in rids]
                    y, x = s["y"][k], s["x"][k]
                    kind = spec["id"].split("-")[0]
                    if kind == "fig2":
                        clean, adv = runs[0], runs[1:]
                        assert x == pytest.approx(_pct(clean["clean1"], clean["n"]))
                        assert y == pytest.approx(_pct(*_worst(adv, "1")))
                    elif kind == "sweep":
                        (run,) = runs
                        m = "5" if spec["id"].endswith("top5") else "1"
                        assert x == pytest.approx(run["params"]["eps"] * 255)  # eps in /255
                        assert y == pytest.approx(_pct(run[f"adv{m}"], run["n"]))
                    elif kind == "fig3" and s.get("column") not in ("worst",):
                        (run,) = runs
                        key = "clean5" if s["column"] == "clean" else "adv5"
                        assert x == pytest.approx(run["params_count"] / 1e6)
                        assert y == pytest.approx(_pct(run[key], run["n"]))
                    elif kind == "fig1":
                        m = spec["id"][-1]
                        row = dnha[(s["tables"][k], s["columns"][k], f"top{m}")]
                        assert (y, s["ylo"][k], s["yhi"][k]) == pytest.approx(
                            (float(row["dnha_pp"]), float(row["ci_lo_pp"]), float(row["ci_hi_pp"])), abs=1e-5
                        )
                        if s["columns"][k] != "worst":
                            nas, hand = runs
                            assert y == pytest.approx(
                                _pct(nas[f"adv{m}"], nas["n"]) - _pct(hand[f"adv{m}"], hand["n"])
                            )
                    n_points += 1
    assert n_points > 30


def test_latex_and_provenance(built):
    truth, _out, written, _ = built
    tex = written["tex"].read_text(encoding="utf-8")
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == 5 and r"\midrule" in tex
    assert "CIFAR-10 (JPEG q75)" in tex and r"$\Delta$" in tex and "$^\\ddagger$" in tex
    assert tex.isascii() and r"Worst case (eps \textless{}= 8/255)" in tex  # every symbol escaped
    prov = list(csv.DictReader((written["csv"].parent / "provenance.csv").open(encoding="utf-8")))
    assert {p["Run"] for p in prov} == set(truth.runs) - truth.incomplete
    for rec in _cells(written):  # every cell carries its runs' provenance
        assert rec["weights_hash"] == " | ".join(
            dict.fromkeys(f"w-{rec['model']}" for _ in rec["run_ids"].split())
        )
        assert rec["code_revision"] == "abc1234" and '"torch":"2.13.0"' in rec["versions"]
        assert rec["dtype"] == "float32" and rec["device"] == "cpu" and rec["seed"] == "0"
    for p in prov:
        assert (
            p["Weights"].startswith("w-") and '"torch":"2.13.0"' in p["Versions"] and p["Code"] == "abc1234"
        )
        assert p["Parameters"] == json.dumps(
            truth.runs[p["Run"]]["params"], sort_keys=True, separators=(",", ":")
        )
    flags = list(csv.DictReader((written["csv"].parent / "flags.csv").open(encoding="utf-8")))
    assert {(f["Check"], f["Status"]) for f in flags} == {
        ("budget_audit", "warn"),
        ("eps0_identity", "fail"),
        ("noise_baseline", "ok"),
    }


def test_html_is_self_contained(built):
    _truth, out, written, _ = built
    page = written["html"].read_text(encoding="utf-8")
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:|#)""", page)  # nothing loaded from elsewhere
    n_specs = len(list((out / "figures").glob("*.json")))
    assert page.count('<img alt="') == n_specs and page.count("data:image/svg+xml;base64,") == n_specs
    assert 'class="fail"' in page and 'class="warn"' in page and "CIFAR-10 (JPEG q75)" in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _page_state(html: Path, console_ok: bool = False) -> tuple[int, int, str]:
    """(figures, figures displayed, ready) as the page's own script marked them in the DOM; asserts that
    the browser printed no console message (errors, blocked loads) unless ``console_ok``."""
    done = _browse(html, "--dump-dom", "--virtual-time-budget=5000")
    assert done.returncode == 0, done.stderr[-2000:]
    if not console_ok:
        assert [line for line in done.stderr.splitlines() if ":CONSOLE" in line] == []
    body = re.search(r"<body[^>]*>", done.stdout).group(0)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))
    return int(attrs["figures-total"]), int(attrs["figures-ok"]), attrs["report-ready"]


def _browse(html: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--enable-logging=stderr",
        "--v=0",
        "--hide-scrollbars",
        *extra,
        html.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(
    _chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_html_in_a_headless_browser(built, tmp_path):
    _truth, out, written, _ = built
    # the console check can fail: a page with an error and a blocked external image is caught
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src '
        "'none'; img-src data:; script-src 'unsafe-inline'\"></head><body><img src=\"https://example."
        'org/x.png"><script>console.error("boom")</script></body></html>',
        encoding="utf-8",
    )
    assert len(re.findall(r":CONSOLE", _browse(bad, "--dump-dom").stderr)) >= 2

    n_specs = len(list((out / "figures").glob("*.json")))
    assert _page_state(written["html"]) == (n_specs, n_specs, "yes")
    # the figure check can fail too: a figure whose data is damaged is counted as not displayed
    broken = tmp_path / "broken.html"
    page = written["html"].read_text(encoding="utf-8")
    broken.write_text(
        page.replace("data:image/svg+xml;base64,", "data:image/svg+xml;base64,AAAA", 1), "utf-8"
    )
    assert _page_state(broken, console_ok=True) == (n_specs, n_specs - 1, "no")
    # the paper-only report displays as well
    paper = build_report(None, tmp_path / "paper", ("html",), paper_only=True)
    n_paper = len(list((tmp_path / "paper" / "figures").glob("*.json")))
    assert _page_state(paper["html"]) == (n_paper, n_paper, "yes")

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report_screenshot.png"
    shot.unlink(missing_ok=True)
    taken = _browse(
        written["html"], f"--screenshot={shot}", "--window-size=1400,2400", "--virtual-time-budget=5000"
    )
    assert taken.returncode == 0 and shot.stat().st_size > 20_000, taken.stderr[-2000:]


def test_unfinished_runs_only_on_request(built):
    truth, _out, _written, store = built
    with Store(store) as opened:
        report = collect(opened, include_incomplete=True)
    (rid,) = truth.incomplete
    cells = [c for t in report.tables for r in t.rows for c in r.cells.values() if c.run_ids == (rid,)]
    assert cells  # the main table's cell (and the family table's, which shares it)
    committed = truth.runs[rid]["outcomes"][:20]  # only its first chunk was committed
    for cell in cells:
        assert "UNFINISHED: 20 of 60 examples" in cell.source and cell.n == 20
        assert cell.counts["top1"] == sum(o.adv_correct1 for o in committed)
        assert value_text(cell, "top1").endswith("(partial)")


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="robustarch")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["report", *argv])
    return args.func(args)


def test_cli(tmp_path, capsys):
    store = tmp_path / "small.sqlite"
    rng = np.random.default_rng(0)
    with Store(store) as opened:
        c1 = c5 = np.ones(20, dtype=bool)
        for model, family in (("resnet18", "handcrafted"), ("darts", "nas")):
            _write_run(
                opened,
                Truth(),
                rng,
                dataset="cifar10",
                model=model,
                family=family,
                method=model,
                params_count=1000,
                attack="fgsm",
                attack_params={"eps": 0.007},
                profile="paper",
                n=20,
                clean1=c1,
                clean5=c5,
                keep=0.5,
            )
    assert cli.FORMATS == FORMATS  # the CLI writes the list out so that --help imports no figure code
    assert _cli("--store", str(store), "--out", str(tmp_path / "r"), "--format", "md,csv") == 0
    assert (tmp_path / "r" / "report.md").exists() and not (tmp_path / "r" / "report.html").exists()
    assert "md:" in capsys.readouterr().out
    with pytest.raises(RobustarchError, match="does not exist"):
        _cli("--store", str(tmp_path / "missing.sqlite"), "--out", str(tmp_path / "x"))
    with pytest.raises(RobustarchError, match="--store"):
        _cli("--out", str(tmp_path / "x"))
    with pytest.raises(SystemExit):
        _cli("--store", str(store), "--out", str(tmp_path / "x"), "--format", "md,pdf")
    empty = tmp_path / "empty.sqlite"
    Store(empty).close()
    with pytest.raises(RobustarchError, match="no complete runs"):
        _cli("--store", str(empty), "--out", str(tmp_path / "x"))


@pytest.mark.slow
@pytest.mark.needs_shared
def test_report_of_a_real_study(tmp_path):
    """The whole pipeline: a study on real CIFAR-10 JPEGs with two small zoo models and the paper preset,
    then the report; its cells are the engine's stored aggregates, labelled CIFAR-10 (JPEG q75)."""
    from robustarch.cli import main  # the whole CLI: every part must import

    root = shared_path("data", "cifar10-jpeg")
    study = tmp_path / "study.toml"
    study.write_text(
        f"""[study]
name = "report-e2e"
store = "s.sqlite"
device = "cpu"
batch_size = 8
attacks = ["preset:paper"]

[[datasets]]
name = "cifar10-jpeg"
root = "{root}"
limit = 8
models = [
  {{ name = "resnet18", overrides = {{ width = 4 }}, random_init = true }},
  {{ name = "darts", overrides = {{ C = 4, layers = 3, auxiliary = false }}, random_init = true }},
]
""",
        encoding="utf-8",
    )
    assert main(["study", "run", str(study), "--no-progress"]) == 0
    written = build_report(tmp_path / "s.sqlite", tmp_path / "out", ("csv", "md"))
    with Store(tmp_path / "s.sqlite") as store:
        runs = {r.run_id: r for r in store.results()}
    records = [r for r in _cells(written) if r["column"] != "worst"]
    assert {r["run_ids"] for r in records} == set(runs)
    for rec in records:
        run = runs[rec["run_ids"]]
        acc = run.clean_top1 if rec["column"] == "clean" else run.adv_top1
        assert float(rec["value_pct"]) == pytest.approx(100 * acc, abs=1e-5)
        assert rec["dataset_label"] == "CIFAR-10 (JPEG q75)"
        # the paper preset is the paper's setting, but these small random-init variants are not the paper's
        # configuration: no printed value beside them
        assert rec["paper_printed"] == "" and rec["paper_dataset"] == ""
    md = written["md"].read_text(encoding="utf-8")
    assert "CIFAR-10 (JPEG q75)" in md and "| ResNet-18 (random init) |" in md and "untrained networks" in md


def test_selection_bootstrap_interval_accounts_for_picking_the_best():
    from robustarch.report.analysis import paired_interval, selection_bootstrap_interval

    rng = np.random.default_rng(0)
    n = 2000
    # one model per side: the paired bootstrap agrees with the Agresti-Min interval
    a, b = rng.random(n) < 0.80, rng.random(n) < 0.74
    boot = selection_bootstrap_interval(a[None], b[None])
    cells = (a & b, a & ~b, ~a & b, ~a & ~b)
    exact = paired_interval(*(int(c.sum()) for c in cells))
    assert boot == pytest.approx(exact, abs=0.004)
    assert selection_bootstrap_interval(a[None], b[None]) == boot  # seeded
    # five equally good models per side: the same interval as the textbook bootstrap written out here
    # (redraw example indices, take both maxima again), up to Monte Carlo error
    nas, hand = rng.random((5, n)) < 0.8, rng.random((5, n)) < 0.8
    lo, hi = selection_bootstrap_interval(nas, hand)
    idx = np.random.default_rng(1).integers(0, n, size=(4000, n))
    diffs = nas[:, idx].mean(2).max(0) - hand[:, idx].mean(2).max(0)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])), abs=0.004)
    observed = nas.mean(1).max() - hand.mean(1).max()
    assert lo < 0 < hi and lo <= observed <= hi
    # a clear gap is found as one
    lo, hi = selection_bootstrap_interval(rng.random((3, n)) < 0.9, rng.random((3, n)) < 0.6)
    assert 0.25 < lo < hi < 0.35
    with pytest.raises(ValueError, match="same examples"):
        selection_bootstrap_interval(nas, hand[:, :10])


def test_figures_are_paper_ready(built):
    from test_report_figures import check_paper_ready

    _truth, out, _written, _ = built
    specs = sorted((out / "figures").glob("*.json"))
    assert len(specs) >= 8
    for path in specs:
        check_paper_ready(json.loads(path.read_text(encoding="utf-8")), path.parent)
