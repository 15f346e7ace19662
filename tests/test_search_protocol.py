"""robustarch compare: protocol files (bundled ones included), width matching, the interval arithmetic, and a
tiny protocol end to end (train with and without the adversarial step, evaluate through a study file, read
the table "architectures under one protocol" back from the store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustarch.errors import RobustarchError, UnknownNameError
from robustarch.search import load_protocol, match_parameters, plan
from robustarch.search.protocol import PROTOCOL_DIR, T975, Architecture, _interval, count_parameters
from robustarch.store import wilson_interval

FMNIST = Path("/usr/share/datasets/fashion-mnist")
BUNDLED = sorted(p.stem for p in PROTOCOL_DIR.glob("*.toml"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


TINY = """
[protocol]
name = "tiny"
dataset = "fashion-mnist"
root = "{data}"
recipe = "fast-at"
epochs = 1
batch_size = 20
train_subset = "balanced:100"
check_images = 20
baseline = true
seeds = [0]
attacks = ["fgsm"]
eval_limit = 20
eval_batch_size = 20

[paths]
data = "FMNIST"

[[architectures]]
id = "r18"
model = "resnet18"
overrides = { width = 4, layers = [1, 1, 1, 1] }
""".replace("FMNIST", str(FMNIST))


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_protocols_load(name, tmp_path):
    protocol = load_protocol(name, {"data": str(tmp_path), "search": str(tmp_path)})
    assert protocol.architectures and protocol.seeds and protocol.attacks
    assert protocol.root.startswith(str(tmp_path))


def test_one_protocol_lists_every_kind_of_architecture(tmp_path):
    from robustarch import zoo

    protocol = load_protocol("one-protocol", {"data": str(tmp_path), "search": str(tmp_path)})
    specs = [zoo.get_spec(a.model, protocol.dataset) for a in protocol.architectures]
    assert {s.family for s in specs} == {"handcrafted", "nas"}
    assert {"DARTS", "P-DARTS", "PC-DARTS", "NSGA-Net", "AdvRush", "RACL", "E2RNAS"} <= {
        s.method for s in specs
    }
    assert protocol.recipe == "trades" and len(protocol.seeds) == 3 and protocol.params == 4.0e6
    searched = next(a for a in protocol.architectures if a.id == "searched")
    assert searched.overrides["genotype"] == f"{tmp_path}/genotype.json"


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (lambda t: t.replace('recipe = "fast-at"', 'recipe = "fast_at"'), UnknownNameError, "fast-at"),
        (lambda t: t.replace("seeds = [0]", "seed = [0]"), UnknownNameError, "seeds"),
        (lambda t: t.replace('model = "resnet18"', 'model = "resnet19"'), UnknownNameError, "resnet18"),
        (lambda t: t.replace('root = "{data}"', 'root = "{datasets}"'), RobustarchError, "--path datasets="),
        (lambda t: t.replace("width = 4,", "widht = 4,"), UnknownNameError, "width"),
        (lambda t: t + 'scale = "C"\n', UnknownNameError, "width"),
    ],
    ids=["recipe", "protocol-key", "model", "placeholder", "override", "scale"],
)
def test_bad_protocols_are_explained(tmp_path, edit, error, match):
    with pytest.raises(error, match=match):
        load_protocol(_write(tmp_path, edit(TINY)))


def test_width_matching_picks_the_closest_count():
    arch = Architecture("r", "resnet18", {"layers": [1, 1, 1, 1]}, scale="width", scale_range=(4, 24))
    for target in (5e4, 2.1e5, 6e5):
        overrides, params = match_parameters(arch, "cifar10", target)
        counts = {
            w: count_parameters("resnet18", "cifar10", layers=[1, 1, 1, 1], width=w) for w in range(4, 25)
        }
        best = min(counts, key=lambda w: abs(counts[w] - target))  # by brute force
        assert overrides["width"] == best and params == counts[best]
    darts = Architecture("d", "darts", {"layers": 5}, scale="C", scale_step=2, scale_range=(4, 20))
    overrides, _ = match_parameters(darts, "cifar10", 1e5)
    assert overrides["C"] % 2 == 0 and overrides["layers"] == 5


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df, value in enumerate(T975, 1):
        assert value == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4)


def test_intervals_wilson_for_one_seed_t_for_several():
    assert _interval([(30, 100)]) == (0.3, *wilson_interval(30, 100))
    mean, lo, hi = _interval([(30, 100), (40, 100), (35, 100)])
    assert mean == pytest.approx(0.35) and (hi - lo) / 2 == pytest.approx(4.303 * 0.05 / 3**0.5)


def test_dry_run_prints_the_matched_plan(tmp_path, capsys):
    from robustarch.cli import main

    path = _write(
        tmp_path,
        TINY + '\n[[architectures]]\nid = "d"\nmodel = "darts"\nscale = "C"\n'
        "scale_step = 2\nscale_range = [2, 12]\noverrides = { layers = 3 }\n",
    )
    path.write_text(path.read_text().replace("baseline = true", "baseline = true\nparams = 2.0e4"))
    assert main(["compare", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "r18-s0 " in out and "r18-s0-standard" in out and "d-s0 " in out and "C=" in out
    assert len(plan(load_protocol(path).select(["d"], [0, 1]))) == 4  # 2 seeds x (fast-at, standard)


@pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(), reason="needs dataset-fashion-mnist"
)
def test_a_tiny_protocol_end_to_end(tmp_path, capsys):
    from robustarch.cli import main

    path = _write(tmp_path, TINY)
    out = tmp_path / "out"
    assert main(["compare", str(path), "--out", str(out), "--no-progress"]) == 0
    rows = json.loads((out / "one-protocol.json").read_text())
    assert [(r["architecture"], r["variant"]) for r in rows] == [("r18", "fast-at"), ("r18", "standard")]
    for r in rows:
        assert (
            r["n"] == 20
            and r["seeds"] == [0]
            and r["params"] == count_parameters("resnet18", "fashion-mnist", width=4, layers=[1, 1, 1, 1])
        )
        assert r["flags_ok"] > 0 and not r["flags"]  # the store's reliability checks ran, none warns
        assert r["worst"][0] <= r["clean"][0] and r["pgd"][0] != r["pgd"][0]  # no PGD in this study: NaN
    assert "### Architectures under one protocol: tiny" in (out / "one-protocol.md").read_text()
    assert 'attacks = ["fgsm"]' in (out / "study.toml").read_text()
    meta = json.loads((out / "train" / "r18-s0-standard" / "train.json").read_text())
    assert meta["recipe"] == "fast-at/standard" and meta["adversarial"] is None
    assert "r18" in capsys.readouterr().out


def test_the_table_reads_the_pgd_run_and_the_worst_case_at_the_budget(tmp_path):
    """With the standard preset a model has several PGD runs (the eps sweep): the PGD column is the run
    labelled pgd, and the worst case is over the attacks at the dataset's budget only."""
    from dataclasses import replace

    from robustarch.search.protocol import _seed_counts
    from robustarch.store import ExampleOutcome, Store
    from test_store import make_key

    store = Store(tmp_path / "s.sqlite")
    n, ids = 10, list(range(10))

    def run(label: str, attack: str, eps: float | None, adv_right: set[int]) -> None:
        params = {} if eps is None else {"eps": eps}
        key = make_key(attack=attack, attack_params=params, profile="standard", n_planned=n, chunk_size=n)
        rid = store.begin_run(key, {"label": label})
        outs = [
            ExampleOutcome(i, 0, 0, True, True, 0 if i in adv_right else 1, i in adv_right, True, 0.0, 0.0)
            for i in ids
        ]
        store.commit_chunk(rid, 0, outs)
        store.finish_run(rid)

    run("clean", "clean", None, set(ids))
    run("pgd-eps1", "pgd", 1 / 255, set(range(9)))  # a sweep point below the budget
    run("pgd", "pgd", 8 / 255, set(range(6)))
    run("pgd-eps16", "pgd", 16 / 255, set())  # above the budget: not part of the worst case
    run("fgsm", "fgsm", 8 / 255, {0, 1, 2, 3, 7})
    results = store.results()
    assert _seed_counts(store, results, "pgd", 8 / 255) == (6, n)
    assert _seed_counts(store, results, "*", 8 / 255) == (4, n)  # examples 0-3 survive PGD and FGSM at 8/255
    assert _seed_counts(store, [replace(r) for r in results], None, 8 / 255) == (10, n)
