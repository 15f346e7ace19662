"""The results store: identity, idempotent chunk commits, aggregates, intervals, crashes, several writers."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from robustarch.errors import RobustarchError
from robustarch.store import ExampleOutcome, Flag, RunKey, Store, wilson_interval


def make_key(**changes) -> RunKey:
    base = dict(
        dataset="cifar10",
        dataset_label="CIFAR-10",
        subset="first:10",
        model="resnet18",
        model_family="handcrafted",
        method="ResNet",
        params_count=11_173_962,
        weights_hash="ab12",
        attack="fgsm",
        attack_params={"eps": 0.007},
        profile="paper",
        seed=0,
        dtype="float32",
        device="cpu",
        n_planned=10,
        chunk_size=4,
    )
    base.update(changes)
    return RunKey(**base)


def random_outcomes(ids, seed: int) -> list[ExampleOutcome]:
    rng = np.random.default_rng(seed)
    out = []
    for i in ids:
        label, cp, ap = (int(v) for v in rng.integers(0, 10, 3))
        cp = label if rng.random() < 0.6 else cp
        ap = label if rng.random() < 0.3 else ap
        c5 = bool(rng.random() < 0.8) or cp == label
        a5 = bool(rng.random() < 0.5) or ap == label
        out.append(
            ExampleOutcome(
                int(i),
                label,
                cp,
                cp == label,
                c5,
                ap,
                ap == label,
                a5,
                float(rng.random() * 0.01),
                float(rng.random()),
                bool(rng.random() < 0.9),
            )
        )
    return out


def fill(store: Store, key: RunKey, seed: int = 0) -> tuple[str, list[ExampleOutcome]]:
    run_id = store.begin_run(key, {"versions": {"torch": "x"}})
    outs = random_outcomes(range(100, 100 + key.n_planned), seed)
    for c in range(key.n_chunks):
        a, b = key.chunk_bounds(c)
        assert store.commit_chunk(run_id, c, outs[a:b], seconds=0.5)
    return run_id, outs


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 50), (8, 10), (37, 100), (9_999, 10_000), (3, 7)])
def test_wilson_interval_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_bad_input():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_run_id_depends_on_identity_only():
    key = make_key()
    assert key.run_id == make_key().run_id and len(key.run_id) == 16
    assert make_key(method="renamed", dataset_label="x", params_count=1).run_id == key.run_id
    for change in (
        {"seed": 1},
        {"attack_params": {"eps": 0.008}},
        {"weights_hash": "cd"},
        {"device": "cuda"},
        {"chunk_size": 5},
        {"subset": "first:11"},
        {"adv_metric": "robust"},
        {"profile": "standard"},
    ):
        assert make_key(**change).run_id != key.run_id, change
    # parameter order does not matter
    a = make_key(attack_params={"eps": 0.3, "alpha": 0.007, "steps": 10})
    b = make_key(attack_params={"steps": 10, "alpha": 0.007, "eps": 0.3})
    assert a.run_id == b.run_id


def test_round_trip_aggregates_and_finish(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    key = make_key()
    run_id, outs = fill(store, key)
    assert store.committed_chunks(run_id) == {0, 1, 2}
    assert store.examples(run_id) == outs
    assert store.finish_run(run_id)
    [res] = store.results()
    assert res.run_id == run_id and res.complete and res.n == 10 and res.key == key
    assert res.meta == {"versions": {"torch": "x"}} and res.attack_params == {"eps": 0.007}
    arr = {f: np.array([getattr(o, f) for o in outs]) for f in ExampleOutcome.__dataclass_fields__}
    for name, col in (
        ("clean_top1", "clean_correct1"),
        ("clean_top5", "clean_correct5"),
        ("adv_top1", "adv_correct1"),
        ("adv_top5", "adv_correct5"),
    ):
        k = int(arr[col].sum())
        assert getattr(res, name) == k / 10
        assert getattr(res, f"{name}_count") == k
        assert getattr(res, f"{name}_ci") == wilson_interval(k, 10)
    assert res.linf_max == arr["linf"].max() and res.linf_mean == pytest.approx(arr["linf"].mean())
    assert res.l2_max == arr["l2"].max() and res.n_attacked == int(arr["attacked"].sum())
    broken = (arr["clean_correct1"] & ~arr["adv_correct1"]).sum()
    assert res.attack_success_rate == pytest.approx(broken / arr["clean_correct1"].sum())
    # reopening sees the same thing
    store.close()
    assert Store(tmp_path / "s.sqlite").results() == [res]


def test_begin_and_commit_are_idempotent(tmp_path, caplog):
    store = Store(tmp_path / "s.sqlite")
    key = make_key()
    run_id, outs = fill(store, key)
    assert store.begin_run(key, {"other": "meta"}) == run_id
    assert store.results()[0].meta == {"versions": {"torch": "x"}}  # first provenance kept
    assert not store.commit_chunk(run_id, 1, outs[4:8])
    assert store.examples(run_id) == outs
    changed = [dataclasses.replace(o, adv_pred=o.adv_pred + 1) for o in outs[4:8]]
    assert not store.commit_chunk(run_id, 1, changed)
    assert "different outcomes" in caplog.text
    assert store.examples(run_id) == outs
    n_rows = store._db.execute("SELECT COUNT(*) FROM examples").fetchone()[0]
    assert n_rows == 10


def test_partial_run_is_not_complete(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    key = make_key()
    run_id = store.begin_run(key, {})
    outs = random_outcomes(range(10), 1)
    store.commit_chunk(run_id, 2, outs[8:10])
    assert not store.finish_run(run_id)
    [res] = store.results()
    assert not res.complete and res.n == 2
    assert store.results(complete=True) == []
    empty = store.begin_run(make_key(seed=5), {})
    assert store.result(empty).n == 0 and np.isnan(store.result(empty).clean_top1)


def test_commit_checks_its_input(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    run_id = store.begin_run(make_key(), {})
    outs = random_outcomes(range(10), 2)
    with pytest.raises(RobustarchError, match="needs 4 outcomes"):
        store.commit_chunk(run_id, 0, outs[:3])
    with pytest.raises(RobustarchError, match="outside run"):
        store.commit_chunk(run_id, 3, outs[:2])
    with pytest.raises(RobustarchError, match="no run"):
        store.commit_chunk("0" * 16, 0, outs[:4])
    assert store.committed_chunks(run_id) == set()


def test_filters_and_flags(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    r1, _ = fill(store, make_key())
    r2, _ = fill(store, make_key(model="darts", model_family="nas", method="DARTS", attack="pgd"), seed=3)
    assert {r.run_id for r in store.results(model="darts")} == {r2}
    assert {r.run_id for r in store.results(attack=["fgsm", "pgd"])} == {r1, r2}
    assert store.results(profile="standard") == []
    with pytest.raises(RobustarchError, match="unknown results filter"):
        store.results(colour="red")
    store.add_flag(r1, "eps0_identity", "ok", 0.0, "clean accuracy reproduced")
    store.add_flag(r1, "eps0_identity", "fail", 0.1, "re-checked")  # replaces
    store.add_flag(r1, "budget", "warn", None, "unused budget")
    assert store.result(r1).flags == [
        Flag("budget", "warn", None, "unused budget"),
        Flag("eps0_identity", "fail", 0.1, "re-checked"),
    ]
    assert store.result(r2).flags == []
    with pytest.raises(RobustarchError, match="status"):
        store.add_flag(r1, "budget", "bad", None, "")
    with pytest.raises(RobustarchError, match="no run"):
        store.add_flag("f" * 16, "budget", "ok", None, "")


def test_bad_paths_and_newer_schema(tmp_path):
    with pytest.raises(RobustarchError, match="directory"):
        Store(tmp_path)
    with pytest.raises(RobustarchError, match="does not exist"):
        Store(tmp_path / "missing" / "s.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(RobustarchError, match="cannot open"):
        Store(tmp_path / "junk.sqlite")
    db = sqlite3.connect(tmp_path / "new.sqlite")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(RobustarchError, match="schema version 99"):
        Store(tmp_path / "new.sqlite")


def _writer(path: str, chunks: list[int]) -> None:
    store = Store(path)
    key = make_key(n_planned=40, chunk_size=2)
    run_id = store.begin_run(key, {"writer": os.getpid()})
    outs = random_outcomes(range(40), 7)
    for c in chunks:
        a, b = key.chunk_bounds(c)
        store.commit_chunk(run_id, c, outs[a:b])


def test_several_processes_write_one_store(tmp_path):
    path = str(tmp_path / "s.sqlite")
    Store(path).close()
    ctx = mp.get_context("spawn")
    # overlapping chunk lists: a chunk both write must appear once
    procs = [ctx.Process(target=_writer, args=(path, [*range(i, 20, 2), 0, 1])) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = Store(path)
    [res] = store.results()
    assert res.n == 40 and store.committed_chunks(res.run_id) == set(range(20))
    assert store.examples(res.run_id) == random_outcomes(range(40), 7)
    assert store.finish_run(res.run_id)


def test_kill_mid_commit_leaves_whole_chunks(tmp_path):
    path, marker = tmp_path / "s.sqlite", tmp_path / "paused"
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_store import _writer\n"
        f"_writer({str(path)!r}, [0, 1, 2, 3])\n"
    )
    env = {**os.environ, "ROBUSTARCH_TEST_PAUSE": "mid-commit@3", "ROBUSTARCH_TEST_PAUSE_FILE": str(marker)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "writer exited before its pause point"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    store = Store(path)
    [res] = store.results()
    # chunk 2 had its rows written but not committed: nothing of it is visible
    assert store.committed_chunks(res.run_id) == {0, 1} and res.n == 4
    _writer(str(path), [0, 1, 2, 3])
    assert store.committed_chunks(res.run_id) == {0, 1, 2, 3}
    assert store.examples(res.run_id) == random_outcomes(range(40), 7)[:8]


def test_many_openers_of_a_fresh_store(tmp_path):
    """torchrun ranks open a store that does not exist yet at the same moment: none may fail."""
    path = tmp_path / "fresh.sqlite"
    start, errors = threading.Barrier(8), []

    def open_it():
        start.wait()
        try:
            Store(path).close()
        except Exception as err:  # collected and asserted below, not swallowed
            errors.append(err)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Store(path)._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
