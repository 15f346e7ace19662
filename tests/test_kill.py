"""Crash safety: ``kill -9`` a study at several points (mid-chunk, mid-commit), run it again, and the store
equals an uninterrupted run's: the same runs, outcomes and flags, no duplicate or lost rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from robustarch.cli import main
from robustarch.store import Store
from test_study import write_study

REPO = Path(__file__).resolve().parents[1]


def snapshot(path: Path) -> dict:
    """Everything a report could read from a store, minus timestamps and writer ids."""
    store = Store(path)
    out = {}
    for r in store.results():
        out[r.run_id] = (
            r.complete,
            r.n,
            r.adv_top1,
            r.adv_top5,
            r.clean_top1,
            r.linf_max,
            tuple((f.check, f.status, f.value) for f in r.flags),
            tuple(store.examples(r.run_id)),
        )
    store.close()
    return out


def assert_whole_chunks(path: Path) -> None:
    """Only whole chunks: each run's example rows are exactly its committed chunks' rows."""
    store = Store(path)
    db = store._db
    for r in store.results():
        chunks = dict(
            db.execute("SELECT chunk_index, n FROM chunks WHERE run_id = ?", (r.run_id,)).fetchall()
        )
        per_chunk = dict(
            db.execute(
                "SELECT chunk_index, COUNT(*) FROM examples WHERE run_id = ? GROUP BY chunk_index",
                (r.run_id,),
            ).fetchall()
        )
        assert chunks == per_chunk, (r.run_id, chunks, per_chunk)
        for c, n in chunks.items():
            a, b = r.key.chunk_bounds(c)
            assert n == b - a
    store.close()


def run_until_killed(study: Path, store: Path, pause: str, tmp: Path) -> None:
    marker = tmp / f"paused-{pause.replace('@', '-')}"
    env = {
        **os.environ,
        "ROBUSTARCH_TEST_PAUSE": pause,
        "ROBUSTARCH_TEST_PAUSE_FILE": str(marker),
        "PYTHONPATH": str(REPO / "src"),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "robustarch",
        "study",
        "run",
        str(study),
        "--store",
        str(store),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"study exited ({proc.returncode}) before {pause}: {proc.stderr.read()}")
            assert time.monotonic() < deadline, f"never reached {pause}"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_kill_at_several_points_then_resume(tmp_path):
    study = write_study(tmp_path, limit=8, batch=4, models=("resnet18",), extra="checks = true")
    ref = tmp_path / "reference.sqlite"
    assert main(["study", "run", str(study), "--store", str(ref), "--no-progress"]) == 0
    expected = snapshot(ref)
    assert len(expected) == 5 and all(v[0] for v in expected.values())

    store = tmp_path / "killed.sqlite"
    # 2 chunks x 5 runs = 10 commits. Kill mid-chunk (an attack computed, nothing committed), then inside a
    # commit's transaction (rows written, not committed) twice, each time resuming from what the last
    # process left.
    for pause in ("mid-chunk@2", "mid-commit@3", "mid-commit@2"):
        run_until_killed(study, store, pause, tmp_path)
        assert_whole_chunks(store)
        partial = snapshot(store)
        assert partial and not all(v[0] for v in partial.values())
    done_before = sum(v[1] for v in snapshot(store).values())
    assert 0 < done_before < sum(v[1] for v in expected.values())
    assert main(["study", "run", str(study), "--store", str(store), "--no-progress"]) == 0
    assert_whole_chunks(store)
    assert snapshot(store) == expected
    db = Store(store)._db
    assert db.execute("SELECT COUNT(*) FROM examples").fetchone()[0] == 5 * 8
    assert db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 5 * 2
    assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 5
