"""The report section "What the published numbers measure", from a store written through the store API with
known per-example outcomes: the runs preset("explain") makes (the clamp alone, the paper's attacks as
released and on [0,1], the standard attacks) for the paper's models on CIFAR-10, one random initialisation
and one model with architecture overrides, and the same on Fashion-MNIST (not a dataset of the paper)."""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

import robustarch.attacks as ra
from robustarch.report import build_report, collect
from robustarch.report.explain import ATTACK_ROWS, spearman_interval
from robustarch.report.figures import draw
from robustarch.report.paper import paper_value
from robustarch.store import ExampleOutcome, RunKey, Store

N = 150
MODELS = [  # model, family, method, how its weights were made
    ("resnet18", "handcrafted", "ResNet-18", "trained"),
    ("densenet121", "handcrafted", "DenseNet-121", "trained"),
    ("darts", "nas", "DARTS", "trained"),
    ("pc_darts", "nas", "PC-DARTS", "trained"),
    ("nsga_net", "nas", "NSGA-Net", "trained"),
    ("vgg16_bn", "handcrafted", "VGG16-BN", "random"),  # a random initialisation
    ("pdarts", "nas", "P-DARTS", "overrides"),  # a smaller variant: not the paper's configuration
]
LABELS = {"cifar10": "CIFAR-10", "fashion-mnist": "Fashion-MNIST"}
# fewer models on Fashion-MNIST: the figures of every table are drawn, and drawing is what takes time here
DATASET_MODELS = {"cifar10": MODELS, "fashion-mnist": [MODELS[0], MODELS[2], MODELS[6]]}


@dataclass
class Truth:
    counts: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # run id -> (clean, adv, n)
    values: dict[tuple[str, str, str, str], float] = field(default_factory=dict)  # (ds, model, row, set)


def _setting_of(key: str) -> tuple[str, str]:
    """(attack row, setting) of a preset("explain") key."""
    if key == "clamp":
        return "clamp", "released"
    attack, _, how = key.rpartition("-")
    return attack, {"released": "released", "paper": "plain", "standard": "standard"}[how]


def _keep(rng, dataset: str, model: str, attack_row: str, setting: str) -> float:
    """Share of clean-correct examples an attack leaves correct: as released it follows the paper's own
    pattern (the paper's value over its clean value), elsewhere it does not."""
    if attack_row == "clamp":
        return 0.7
    if setting == "released":
        ref = paper_value("cifar10", model, attack_row, "top1")
        return ref.fraction / paper_value("cifar10", model, "clean", "top1").fraction
    return rng.uniform(0.3, 1.0) if setting == "plain" else rng.uniform(0.0, 0.2)


def _write(store: Store, truth: Truth, rng, dataset: str, model, family, method, how, attack, profile, params,
           clean, keep, label) -> str:  # fmt: skip
    metric = "perturbed" if profile in ("paper", "none") else "robust"
    weights = f"init-{model}" if how == "random" else f"w-{model}"
    key = RunKey(dataset, LABELS[dataset], "test/first:150", model, family, method, 1000, weights, attack,
                 params, profile, 0, "float32", "cpu", N, 50, metric)  # fmt: skip
    meta = {
        "weights": None if how == "random" else f"/w/{model}.pt",
        "overrides": {"C": 16} if how == "overrides" else {},
        "label": label,
        "versions": {"torch": "2.13.0"},
    }
    run_id = store.begin_run(key, meta)
    adv = clean & (rng.random(N) < keep) if keep is not None else clean
    outs = [
        ExampleOutcome(i, i % 10, 0, bool(c), bool(c), 0, bool(a), bool(a), 0.0, 0.0, True)
        for i, (c, a) in enumerate(zip(clean, adv, strict=True))
    ]
    for c in range(key.n_chunks):
        lo, hi = key.chunk_bounds(c)
        store.commit_chunk(run_id, c, outs[lo:hi])
    assert store.finish_run(run_id)
    truth.counts[run_id] = (int(clean.sum()), int(adv.sum()), N)
    return run_id


def make_store(path: Path) -> Truth:
    rng = np.random.default_rng(7)
    truth = Truth()
    with Store(path) as store:
        for dataset in LABELS:
            explain = ra.preset("explain", dataset)
            for model, family, method, how in DATASET_MODELS[dataset]:
                p_clean = paper_value("cifar10", model, "clean", "top1").fraction
                clean = rng.random(N) < (0.1 if how == "random" else p_clean)
                common = (store, truth, rng, dataset, model, family, method, how)
                _write(*common, "clean", "none", {}, clean, None, "clean")
                for key, attack in explain.items():
                    row, setting = _setting_of(key)
                    keep = _keep(rng, dataset, model, row, setting)
                    rid = _write(*common, attack.name, attack.profile, attack.params, clean, keep, key)
                    _c, a, n = truth.counts[rid]
                    truth.values[(dataset, model, row, setting)] = a / n
                truth.values.update(
                    {(dataset, model, "clean", s): clean.mean() for s in ("released", "plain")}
                )
    return truth


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explain")
    truth = make_store(folder / "s.sqlite")
    written = build_report(folder / "s.sqlite", folder / "out")
    with Store(folder / "s.sqlite") as store:
        report = collect(store)
    return truth, written, report, folder / "out"


def _records(written) -> list[dict]:
    return list(csv.DictReader((written["csv"].parent / "explain.csv").open(encoding="utf-8")))


def test_every_explain_cell_is_a_stored_number(built):
    truth, written, _report, _ = built
    records = _records(written)
    assert {r["dataset"] for r in records} == set(LABELS)
    measured = [r for r in records if r["setting"] != "paper"]
    # per model: released clean, clamp, 4 attacks, worst; [0,1] and standard clean, 4 attacks, worst
    assert len(measured) == sum(map(len, DATASET_MODELS.values())) * (7 + 6 + 6)
    for r in measured:
        if r["attack_row"] == "worst":
            continue
        (rid,) = r["run_ids"].split()
        clean, adv, n = truth.counts[rid]
        k = clean if r["attack_row"] == "clean" else adv
        assert float(r["value_pct"]) == pytest.approx(100 * k / n, abs=1e-6)
        assert int(r["n"]) == n and int(r["count"]) == k
        assert "{" not in r["description"] and '"' not in r["description"]  # describe(), never JSON
    # the worst case over the standard attacks is never above any of them
    for r in (r for r in measured if r["attack_row"] == "worst" and r["setting"] == "standard"):
        others = [
            float(o["value_pct"])
            for o in measured
            if (o["dataset"], o["row"], o["setting"]) == (r["dataset"], r["row"], "standard")
            and o["attack_row"] not in ("clean", "worst")
        ]
        assert float(r["value_pct"]) <= min(others) + 1e-9


def test_paper_values_only_for_the_papers_configuration(built):
    _truth, written, report, _ = built
    records = _records(written)
    printed = {
        (r["dataset"], r["model"], r["attack_row"]): r["paper_printed"]
        for r in records
        if r["setting"] == "paper"
    }
    for model, *_rest, how in MODELS:
        for row in ("clean", "fgsm", "rfgsm", "stepll", "pgd"):
            want = paper_value("cifar10", model, row, "top1").printed if how == "trained" else None
            assert printed.get(("cifar10", model, row)) == want
    assert not any(ds == "fashion-mnist" for ds, _m, _r in printed)  # not a dataset of the paper
    sec = {s.dataset: s for s in report.explain}
    assert sec["cifar10"].settings == ["released", "plain", "standard", "paper"]
    assert sec["fashion-mnist"].settings == ["released", "plain", "standard"]
    labels = [er.row.label for er in sec["cifar10"].rows]
    assert "VGG16-BN (random init)" in labels and "P-DARTS" in labels
    # the main tables follow the same rule
    for t in report.tables:
        for row in t.rows:
            assert all(not cell.paper for cell in row.cells.values()) or row.paper_config


def _spearman(x, y) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def test_reading_follows_the_numbers(built):
    """The reading's rank correlations are Spearman's rho of each column against the paper's values,
    computed here independently (scipy), with the Fisher-z interval written out here."""
    truth, _written, report, _ = built
    for sec in report.explain:
        text = " ".join(sec.reading)
        fits = {f.setting: f for f in sec.fits}
        for setting in ("released", "plain", "standard"):
            pairs = [
                (paper_value("cifar10", m, a, "top1").fraction, truth.values[(sec.dataset, m, a, setting)])
                for m, *_r, how in DATASET_MODELS[sec.dataset]
                if how == "trained" or (how == "overrides" and sec.dataset == "fashion-mnist")
                for a in ("fgsm", "rfgsm", "stepll", "pgd")
            ]
            rho = _spearman(*zip(*pairs, strict=True))
            assert fits[setting].n == len(pairs) and fits[setting].rho == pytest.approx(rho, abs=1e-9)
            se = math.sqrt((1 + rho**2 / 2) / (len(pairs) - 3))
            lo, hi = math.tanh(math.atanh(rho) - 1.959964 * se), math.tanh(math.atanh(rho) + 1.959964 * se)
            assert fits[setting].ci == pytest.approx((lo, hi), abs=1e-5)
            assert f"rho = {rho:+.2f} [{lo:+.2f}, {hi:+.2f}]" in text
        # the synthetic released column follows the paper's pattern exactly in expectation
        assert fits["released"].rho > 0.8 > fits["plain"].rho
        assert "As released (emulated) follows the paper's pattern most closely" in text
        values = truth.values
        clamp = np.mean(
            [values[(sec.dataset, m, "clean", "released")] - values[(sec.dataset, m, "clamp", "released")]
             for m, *_r, how in DATASET_MODELS[sec.dataset] if how != "random"]
        )  # fmt: skip
        assert f"clamp alone (eps 0) lowers top-1 accuracy by {100 * clamp:.1f} percentage points" in text
    fashion = next(s for s in report.explain if s.dataset == "fashion-mnist")
    assert "as a pattern only" in fashion.reference and "Table 1" in fashion.reference
    assert spearman_interval(0.5, 3) is None


def test_explain_in_every_format(built):
    _truth, written, _report, out = built
    md = written["md"].read_text(encoding="utf-8")
    assert md.count("## What the published numbers measure") == 2
    section = md.split("## What the published numbers measure: CIFAR-10")[1].split("\n## ")[0]
    header = next(line for line in section.splitlines() if line.startswith("| Model"))
    assert header == (
        "| Model | Attack | As released (emulated) | Same eps on [0,1] | Standard (8/255) | Paper (printed) |"
    )
    assert "| ResNet-18 | Clean |" in section and "|  | Clamp alone (eps 0) |" in section
    assert "**Reading.**" in section and "(figures/explain-cifar10.png)" in section
    assert "StepLL-3 (eps 0.01, step 0.003, paper profile, as released: normalized inputs)" in section
    html = written["html"].read_text(encoding="utf-8")
    assert html.count("<h2>What the published numbers measure") == 2 and 'id="explain-cifar10"' in html
    tex = written["tex"].read_text(encoding="utf-8")
    assert "What the published numbers measure, CIFAR-10" in tex and r"\label{tab:explain-cifar10}" in tex
    for ext in ("png", "svg", "pdf", "json"):
        assert (out / "figures" / f"explain-cifar10.{ext}").stat().st_size > 1000
    assert (out / "figures" / "explain-cifar10.pdf").read_bytes().startswith(b"%PDF")


def test_explain_figure_is_the_table(built):
    """Every plotted point of the explain figure is a section value; every interval is the cell's."""
    _truth, _written, report, _out = built
    specs = {s["id"]: s for s in report.figures}
    for sec in report.explain:
        spec = specs[f"explain-{sec.dataset}"]
        assert [p["setting"] for p in spec["panels"]] == sec.settings
        rows = {er.row.label: er for er in sec.rows}
        fig = draw(spec)
        try:
            for i, panel in enumerate(spec["panels"]):
                assert panel["xticks"][0] == "Clean" and len(panel["xticks"]) == len(ATTACK_ROWS)
                for j, s in enumerate(panel["series"]):
                    er = rows[s["label"]]
                    for x, y in zip(s["x"], s["y"], strict=True):
                        attack_row = ATTACK_ROWS[round(x)]
                        assert y == pytest.approx(100 * er.value(attack_row, panel["setting"]), abs=1e-8)
                    (line,) = [a for a in fig.axes[i].get_lines() if a.get_gid() == f"{i}/{j}"]
                    assert list(line.get_xdata()) == pytest.approx(s["x"])
                    assert line.get_color() == s["color"]
        finally:
            plt.close(fig)


def test_standard_attacks_must_match_the_preset(built):
    """A standard run at another budget is not taken as the explain section's standard column."""
    _truth, _written, report, _ = built
    sec = next(s for s in report.explain if s.dataset == "cifar10")
    assert re.fullmatch(r"PGD-10 \(8/255, step 2/255, random start\)", sec.descriptions[("pgd", "standard")])


def test_explain_figures_are_paper_ready(built):
    from test_report_figures import check_paper_ready

    _truth, _written, report, out = built
    for spec in report.figures:
        check_paper_ready(spec, out / "figures")
