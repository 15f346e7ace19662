"""One door for any model: a module defined outside the zoo, evaluated through the Python API, the CLI
(``--model file.py:factory``) and a study file (``factory = ...``) gives the numbers of a direct computation;
a Dataset and a tensor pair agree; ``benchmark()`` is the per-example worst case; progress reaches its total;
Ctrl-C ends with exit 130, one line and a resume equal to an uninterrupted run; zoo models without weights are
refused unless asked for; ``--attacks pgd`` and ``--preset standard`` share the budget on every dataset."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import robustarch
import robustarch.attacks as ra
from models_for_tests import NoisyLogits
from robustarch import data as rdata
from robustarch.cli import main
from robustarch.errors import RobustarchError
from robustarch.evaluation import DataRef, EvaluationSpec, ModelRef, resolve_attacks, run_specs
from robustarch.runtime import prepare_for_attack
from robustarch.store import Store
from robustarch.zoo import save_checkpoint
from test_attacks import FASHION, FASHION_MEAN, FASHION_STD, trained_model_and_data
from test_engine import Pairs

REPO = Path(__file__).resolve().parents[1]
FACTORY = f"{REPO / 'tests' / 'models_for_tests.py'}:tiny_cnn"
N = 48
BATCH = 16
ATTACKS = ["fgsm", ("pgd", {"steps": 3})]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The Fashion-MNIST CNN of test_attacks (trained on real data where present), its bare weights as a
    checkpoint, and the first N test images."""
    model, x, y, real = trained_model_and_data()
    ckpt = save_checkpoint(model, tmp_path_factory.mktemp("w") / "tiny.pt")
    return model, ckpt, x[:N], y[:N], real


def direct_outcomes(model, x, y, attack, seed_of_chunk):
    """What the engine should store for a deterministic attack: robust top-1 per example, computed here
    chunk by chunk on the copy prepare_for_attack makes of the model (the engine attacks that copy)."""
    prepared, _ = prepare_for_attack(model, x[:BATCH])
    out = []
    for start in range(0, len(x), BATCH):
        xs, ys = x[start : start + BATCH], y[start : start + BATCH]
        adv = attack(prepared, xs, ys, generator=torch.Generator().manual_seed(seed_of_chunk(start // BATCH)))
        with torch.no_grad():
            clean = prepared(xs).argmax(1) == ys
            robust = (prepared(adv).argmax(1) == ys) & clean
        out += robust.tolist()
    return out


def test_a_module_from_python_equals_a_direct_computation(trained):
    model, _, x, y, _ = trained
    res = robustarch.evaluate(model, (x, y), attacks=ATTACKS, batch_size=BATCH, name="tiny")
    recs = {r["attack"]: r for r in res.records()}
    assert set(recs) == {"clean", "fgsm", "pgd"} and all(r["n"] == N for r in recs.values())
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert recs["clean"]["clean_top1"] == pytest.approx(clean)
    fgsm = ra.standard_attack("fgsm", "fashion-mnist")
    assert res.outcomes("fgsm") == direct_outcomes(model, x, y, fgsm, lambda c: 0)
    run = next(r for r in res.runs() if r.meta["label"] == "pgd")
    from robustarch.evaluation import chunk_seed

    pgd = ra.standard_attack("pgd", "fashion-mnist", steps=3)
    assert res.outcomes("pgd") == direct_outcomes(model, x, y, pgd, lambda c: chunk_seed(run.run_id, c))
    assert recs["fgsm"]["ci95"][0] <= recs["fgsm"]["adv_top1"] <= recs["fgsm"]["ci95"][1]
    assert recs["fgsm"]["eps"] == pytest.approx(8 / 255)  # 28x28 images: the CIFAR-like budget
    assert {f["check"] for f in res.flags()} >= {"deterministic_forward", "budget", "eps0_identity"}
    assert "tiny" in res.table() and "pgd" in res.table()


def test_a_dataset_and_a_tensor_pair_agree(trained):
    model, _, x, y, _ = trained
    a = robustarch.evaluate(model, (x, y), attacks=["fgsm"], batch_size=BATCH)
    b = robustarch.evaluate(model, Pairs(x, y), attacks=["fgsm"], batch_size=BATCH)
    assert a.outcomes("fgsm") == b.outcomes("fgsm") and a.outcomes("clean") == b.outcomes("clean")
    # the data's identity is their content: other labels are other runs
    c = robustarch.evaluate(model, (x, (y + 1) % 10), attacks=["fgsm"], batch_size=BATCH)
    assert c.records()[0]["subset"] != a.records()[0]["subset"]


@pytest.mark.skipif(not FASHION.exists(), reason=f"needs Debian's dataset-fashion-mnist at {FASHION}")
def test_three_front_ends_give_the_same_numbers(trained, tmp_path, capsys):
    """The factory with a checkpoint and its normalization, through the API, the CLI and a study file,
    into three separate stores: the same runs and per-example outcomes."""
    _, ckpt, _, _, _ = trained
    kw = {"weights": str(ckpt), "mean": FASHION_MEAN, "std": FASHION_STD}
    data = DataRef("fashion-mnist", str(FASHION), limit=N)
    api = robustarch.evaluate(
        FACTORY, data, attacks=ATTACKS, batch_size=BATCH, store=tmp_path / "a.sqlite", **kw
    )
    argv = [
        "evaluate", "--model", FACTORY, "--weights", str(ckpt), "--mean", "0.2860", "--std", "0.3530",
        "--dataset", "fashion-mnist", "--data-root", str(FASHION), "--limit", str(N), "--attacks", "fgsm,pgd",
        "--attack-param", "pgd.steps=3", "--batch-size", str(BATCH), "--store", str(tmp_path / "c.sqlite"),
        "--no-progress", "--format", "json",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    study = tmp_path / "s.toml"
    study.write_text(
        f"[study]\nstore = 's.sqlite'\nbatch_size = {BATCH}\nattacks = ['fgsm', 'pgd3']\n"
        "[attacks.pgd3]\nattack = 'pgd'\nsteps = 3\n"
        f"[[datasets]]\nname = 'fashion-mnist'\nroot = '{FASHION}'\nlimit = {N}\n"
        f"models = [{{ factory = '{FACTORY}', weights = '{ckpt}', mean = [0.2860], std = [0.3530] }}]\n"
    )
    assert main(["study", "run", str(study), "--no-progress"]) == 0
    stores = [Store(tmp_path / f) for f in ("a.sqlite", "c.sqlite", "s.sqlite")]
    by_store = [
        {r.attack: [o.adv_correct1 for o in s.examples(r.run_id)] for r in s.results()} for s in stores
    ]
    assert by_store[0] == by_store[1] == by_store[2]
    assert {r.run_id for r in stores[0].results()} == {r.run_id for r in stores[1].results()}
    assert [p["adv_top1"] for p in printed] == [r["adv_top1"] for r in api.records()]
    meta = stores[0].results()[0].meta
    assert meta["model_kind"] == "factory" and meta["normalization"] == "added" and not meta["random_init"]


def test_benchmark_is_the_per_example_worst_case(trained):
    model, _, x, y, _ = trained
    attacks = ["fgsm", ("pgd", {"steps": 3}), ("pgd", {"steps": 3, "eps": 2 / 255})]
    res = robustarch.evaluate(model, (x, y), attacks=attacks, batch_size=BATCH)
    clean, robust = robustarch.benchmark(model, (x, y), attacks=attacks, batch_size=BATCH)
    runs = {r.run_id: r for r in res.runs()}
    at_budget = [r for r in runs.values() if r.attack_params.get("eps") == pytest.approx(8 / 255)]
    assert len(at_budget) == 2  # FGSM and the PGD at 8/255, not the one at 2/255
    worst = [all(c) for c in zip(*(res.outcomes(r.run_id) for r in at_budget), strict=True)]
    assert robust == sum(worst) / len(worst) and clean == res.records()[0]["clean_top1"]
    assert robust <= min(r.adv_top1 for r in at_budget)


def test_progress_bars_reach_the_planned_total(trained):
    model, _, x, y, _ = trained
    spec = EvaluationSpec(
        ModelRef.from_module(model), DataRef.given(rdata.source_from_tensors(x, y)),
        tuple(resolve_attacks(["fgsm", ("pgd", {"steps": 2})], "fashion-mnist")),
        batch_size=BATCH,
    )  # fmt: skip
    buf = io.StringIO()
    run_specs([spec], progress=True, progress_file=buf)
    text = buf.getvalue()
    total = 3 * N  # examples x (clean + 2 attacks)
    assert f"{total}/{total}" in text.replace(" ", "") or f"{total / 1000:.2f}k/{total / 1000:.2f}k" in text
    assert "overall" in text and "100%" in text


def test_zoo_models_need_weights_unless_asked_for(trained):
    x3, y = torch.rand(8, 3, 32, 32), torch.arange(8)
    with pytest.raises(RobustarchError, match="random_init"):
        robustarch.evaluate("resnet18", (x3, y), attacks=["fgsm"])
    res = robustarch.evaluate(
        "resnet18", (x3, y), attacks=["fgsm"], random_init=True, checks=False, arch={"width": 4}
    )
    assert all(r.meta["random_init"] for r in res.runs())


def test_attacks_by_name_and_the_standard_preset_share_the_budget():
    for dataset, info in rdata.DATASETS.items():
        if info.budget is None:
            continue
        preset = ra.preset("standard", dataset)
        for plan in resolve_attacks([name for name in preset if name in ra.list_attacks()], dataset):
            assert plan.params == preset[plan.label].params, (dataset, plan.label)
        assert preset["pgd"].eps == info.budget == (4 / 255 if info.family == "imagenet" else 8 / 255)


def test_a_randomized_model_is_flagged_not_refused(trained):
    model, _, x, y, _ = trained
    res = robustarch.evaluate(NoisyLogits(model), (x[:16], y[:16]), attacks=["fgsm"], batch_size=16)
    flag = next(f for f in res.flags() if f["check"] == "deterministic_forward")
    assert flag["status"] == "warn" and "eot_samples" in flag["detail"]


def test_evaluate_rejects_bad_input_clearly(trained):
    model, _, x, y, _ = trained
    with pytest.raises(RobustarchError, match="normalized tensors"):
        robustarch.evaluate(model, ((x - 0.5) / 0.2, y))
    with pytest.raises(RobustarchError, match=r"unknown model"):
        robustarch.evaluate("resnet19", (x, y))
    with pytest.raises(RobustarchError, match="attacks or preset"):
        robustarch.evaluate(model, (x, y), attacks=["fgsm"], preset="paper")
    with pytest.raises(RobustarchError, match="--steps applies to none"):
        from robustarch.evaluation import AttackOverrides, apply_overrides

        apply_overrides(resolve_attacks(["fgsm"], "cifar10"), AttackOverrides(steps=5))


def _store_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT run_id, example_id, adv_pred, adv_correct1, linf FROM examples "
            "ORDER BY run_id, example_id"
        ).fetchall()


@pytest.mark.skipif(not FASHION.exists(), reason=f"needs Debian's dataset-fashion-mnist at {FASHION}")
def test_ctrl_c_ends_with_130_one_line_and_resumes_to_the_same_store(trained, tmp_path):
    _, ckpt, _, _, _ = trained
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(store: Path) -> list[str]:
        return [
            sys.executable, "-m", "robustarch", "evaluate", "--model", FACTORY, "--weights", str(ckpt),
            "--mean", "0.2860", "--std", "0.3530", "--dataset", "fashion-mnist", "--data-root", str(FASHION),
            "--limit", "64", "--attacks", "fgsm,pgd", "--batch-size", "8", "--store", str(store),
            "--no-progress", "--no-checks",
        ]  # fmt: skip

    marker = tmp_path / "paused"
    paused = {**env, "ROBUSTARCH_TEST_PAUSE": "mid-chunk@5", "ROBUSTARCH_TEST_PAUSE_FILE": str(marker)}
    proc = subprocess.Popen(
        command(tmp_path / "s.sqlite"), env=paused, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert line and line[0].endswith("chunks committed; run the same command to resume"), err
    committed = int(line[0].split()[1])
    assert committed > 0 and len(_store_rows(tmp_path / "s.sqlite")) == committed * 8
    assert subprocess.run(command(tmp_path / "s.sqlite"), env=env, capture_output=True).returncode == 0
    assert subprocess.run(command(tmp_path / "u.sqlite"), env=env, capture_output=True).returncode == 0
    assert _store_rows(tmp_path / "s.sqlite") == _store_rows(tmp_path / "u.sqlite")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.exists(), reason=f"needs Debian's dataset-fashion-mnist at {FASHION}")
def test_the_readme_example_runs():
    """examples/evaluate_own_model.py (the README's "Evaluate your own model") runs and its numbers agree:
    the worst case over the attacks is at most each attack's accuracy."""
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "evaluate_own_model.py")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    import re

    # the top-1 column is the number just before its interval (the clean row has no eps column)
    rows = {
        ln.split()[1]: float(re.search(r"(\d+\.\d\d)\s+\d+\.\d\d-", ln).group(1))
        for ln in out.stdout.splitlines()
        if ln.startswith("my-cnn")
    }
    robust = float(out.stdout.split("8/255) ")[1].split("%")[0])
    assert set(rows) == {"clean", "fgsm", "pgd"} and robust <= min(rows["fgsm"], rows["pgd"]) + 1e-9


def test_the_cascade_is_one_run_with_each_stages_contribution(trained):
    """AutoAttack is stored as one worst-case run; the store keeps, per chunk, how many examples each stage
    broke, and they add up to the clean-correct examples the cascade broke."""
    model, _, x, y, _ = trained
    cascade = ("autoattack", {"steps": 5, "n_target_classes": 2, "queries": 50})
    res = robustarch.evaluate(model, (x, y), attacks=[cascade], batch_size=BATCH, checks=False)
    rec = res.records()[1]
    assert list(rec["contributions"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    clean, robust = res.outcomes("clean"), res.outcomes("autoattack")
    assert sum(rec["contributions"].values()) == sum(clean) - sum(robust)
    assert len(res.store.chunk_extras(rec["run_id"])) == N // BATCH
