"""The paper's published numbers shipped as data, and the paper-only report (Figure 1 from Tables 1-3)."""

from __future__ import annotations

import csv
import json
import re

import pytest

from conftest import shared_path
from robustarch.report import build_report, paper_dnha, paper_tables
from robustarch.report.paper import paper_data, paper_value, paper_values

PAPER_MODELS = {
    "vgg16_bn",
    "resnet18",
    "resnet50",
    "densenet121",
    "densenet169",
    "darts",
    "pdarts",
    "pc_darts",
    "nsga_net",
    "densenas_a",
    "densenas_b",
    "densenas_c",
    "densenas_large",
    "densenas_r1",
    "densenas_r2",
    "densenas_r3",
}


def _column_major(table: dict) -> list[str]:
    """A table's printed numbers in the order the seed text lists them (column by column)."""
    seq = []
    if "params_m" in table["rows"][0]:
        seq += [r["params_m"] for r in table["rows"]]
    for metric in table["metrics"]:
        for i in range(len(table["attacks"])):
            seq += [r[metric][i] for r in table["rows"]]
    return seq


@pytest.mark.needs_shared
@pytest.mark.parametrize("table", paper_data()["tables"], ids=lambda t: t["id"])
def test_transcription_matches_the_seed_text(table):
    """Every printed number, in the seed text's order, appears as one contiguous run of its numeric lines."""
    text = shared_path("seed", "000_f0dda42cd84575cc.txt").read_text(encoding="utf-8")
    numbers = [line.strip() for line in text.splitlines() if re.fullmatch(r"\d+\.\d+", line.strip())]
    seq = _column_major(table)
    starts = [i for i in range(len(numbers) - len(seq) + 1) if numbers[i : i + len(seq)] == seq]
    assert starts, f"{table['id']}: the transcribed column-major sequence is not in the seed text"


def test_paper_data_is_consistent():
    data = paper_data()
    assert set(data["models"]) == PAPER_MODELS
    for t in data["tables"]:
        for r in t["rows"]:
            assert r["model"] in PAPER_MODELS
            for m in t["metrics"]:
                assert len(r[m]) == len(t["attacks"]) == 5
                assert all(0 <= float(v) <= 100 for v in r[m])
    # Table 4's Large and R3 rows repeat Table 3's top-5 numbers
    t3 = {r["model"]: r for r in data["tables"][2]["rows"]}
    t4 = {r["model"]: r for r in data["tables"][3]["rows"]}
    for model in ("densenas_large", "densenas_r3"):
        assert t4[model]["top5"] == t3[model]["top5"]
        assert t4[model]["params_m"] == t3[model]["params_m"]
    # the printed quirks survive
    assert paper_value("imagenet", "densenet121", "fgsm", "top1").printed == "39.736"
    assert paper_value("imagenet", "densenas_r3", "rfgsm", "top1").printed == "30.0"
    assert paper_value("imagenet", "densenas_c", "stepll", "top5").printed == "82.1"
    assert (
        paper_value("cifar10-jpeg", "nsga_net", "fgsm", "top1").printed == "73.76"
    )  # via the CIFAR-10 counterpart
    assert paper_value("imagenet", "nsga_net", "fgsm", "top1") is None  # NSGA-Net has no ImageNet results
    assert paper_value("fashion-mnist", "resnet18", "clean", "top1") is None
    assert len(paper_values()) == 9 * 5 + 9 * 5 + 10 * 10 + 7 * 5


# DNHA = max(NAS) - max(handcrafted), computed by hand from the printed tables (percentage points).
HAND_DNHA = {
    ("cifar10", "fgsm", "top1"): 73.76 - 56.17,  # NSGA-Net vs DenseNet-169
    ("cifar10", "rfgsm", "top1"): 64.26 - 53.27,
    ("cifar10", "stepll", "top1"): 93.64 - 89.76,
    ("cifar10", "pgd", "top1"): 4.45 - 17.51,  # PC-DARTS vs DenseNet-169
    ("cifar10", "clean", "top1"): 97.12 - 94.76,
    ("cifar100", "fgsm", "top1"): 42.40 - 28.87,  # NSGA-Net vs DenseNet-121
    ("cifar100", "rfgsm", "top1"): 31.47 - 22.45,
    ("cifar100", "stepll", "top1"): 74.58 - 73.24,
    ("cifar100", "pgd", "top1"): 2.07 - 4.22,  # P-DARTS vs DenseNet-121
    ("imagenet", "fgsm", "top1"): 42.38 - 44.55,  # PC-DARTS vs DenseNet-169
    ("imagenet", "rfgsm", "top1"): 33.42 - 34.43,
    ("imagenet", "stepll", "top1"): 61.46 - 61.95,  # DenseNAS-R3 vs DenseNet-169
    ("imagenet", "pgd", "top1"): 0.76 - 0.72,  # PC-DARTS beats VGG16-BN by 0.04 (the paper's text)
    ("imagenet", "stepll", "top5"): 85.36 - 84.70,  # the text's "0.6%" margin of DenseNAS-R3
    ("imagenet", "fgsm", "top5"): 66.75 - 69.29,
}


@pytest.mark.parametrize("key", sorted(HAND_DNHA), ids=lambda k: "-".join(k))
def test_dnha_from_the_paper_tables_matches_hand_computation(key):
    assert 100 * paper_dnha()[key] == pytest.approx(HAND_DNHA[key], abs=1e-9)


def test_figure1_trends_of_the_paper():
    """The paper's Figure 1: NAS leads on CIFAR under the one-step attacks, the lead shrinks with dataset
    scale and turns into a deficit on ImageNet; under PGD handcrafted models lead on CIFAR."""
    d = paper_dnha()
    for attack in ("fgsm", "rfgsm", "stepll"):
        c10, c100, inet = (d[(ds, attack, "top1")] for ds in ("cifar10", "cifar100", "imagenet"))
        assert c10 > c100 > 0 > inet, attack
    assert d[("cifar10", "pgd", "top1")] < 0 and d[("cifar100", "pgd", "top1")] < 0


@pytest.fixture(scope="module")
def paper_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_report")
    return out, build_report(None, out, paper_only=True)


def test_paper_only_report_reproduces_the_tables_and_figure1(paper_report):
    out, written = paper_report
    rows = list(csv.DictReader(written["csv"].open(encoding="utf-8")))
    printed = {(v.table, v.model, v.attack, v.metric): v.printed for v in paper_values()}
    seen = set()
    for r in rows:
        if r["column"] == "worst":
            continue
        key = (r["table"].removeprefix("paper-"), r["model"], r["attack"], r["metric"])
        assert r["paper_printed"] == printed[key]
        assert float(r["value_pct"]) == pytest.approx(float(printed[key]), abs=1e-6)
        assert r["ci_lo_pct"] == "" and r["n"] == ""  # the paper gives no example counts
        seen.add(key)
    assert seen == set(printed)
    md = written["md"].read_text(encoding="utf-8")
    assert "| 39.736 |" in md and "| 30.0 |" in md and "| 82.1 |" in md
    spec = json.loads((out / "figures" / "fig1-dnha-paper-perturbed-top1.json").read_text(encoding="utf-8"))
    panel = spec["panels"][0]
    assert panel["xticks"] == ["CIFAR-10", "CIFAR-100", "ImageNet"]
    by_label = {s["label"]: s for s in panel["series"]}
    assert set(by_label) == {"FGSM", "R-FGSM", "StepLL", "PGD"}
    for attack, label in (("fgsm", "FGSM"), ("rfgsm", "R-FGSM"), ("stepll", "StepLL"), ("pgd", "PGD")):
        assert by_label[label]["position"] == [0, 1, 2]  # datasets in scale order; x dodges the attacks
        assert by_label[label]["x"] == pytest.approx([0, 1, 2], abs=0.31)
        want = [HAND_DNHA[(ds, attack, "top1")] for ds in ("cifar10", "cifar100", "imagenet")]
        assert by_label[label]["y"] == pytest.approx(want, abs=1e-9)
    for ext in ("png", "svg"):
        assert (out / "figures" / f"fig1-dnha-paper-perturbed-top1.{ext}").stat().st_size > 1000


def test_paper_figure3_correlations(paper_report):
    """Figure 3 from Table 4: robustness rises with parameters within each DenseNAS search space."""
    out, _ = paper_report
    spec = json.loads((out / "figures" / "fig3-paper-table4.json").read_text(encoding="utf-8"))
    panels = {p["title"]: p for p in spec["panels"]}
    assert set(panels) == {"all members", "MobileNetV2 search space", "ResNet search space"}
    resnet = {s["column"]: s for s in panels["ResNet search space"]["series"]}
    assert resnet["fgsm"]["x"] == [11.09, 19.46, 24.65]
    assert resnet["fgsm"]["y"] == pytest.approx([51.82, 56.68, 59.45])
    for s in resnet.values():
        assert s["spearman"] == pytest.approx(1.0)  # R1 < R2 < R3 under every attack
    assert len(paper_tables()) == 4
