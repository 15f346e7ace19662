"""``torchrun --nproc-per-node 2 -m robustarch study run`` on CPU (gloo) gives exactly one process's store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustarch.cli import main
from robustarch.errors import RobustarchError
from robustarch.evaluation import distributed
from robustarch.store import Store
from test_kill import snapshot
from test_study import write_study

REPO = Path(__file__).resolve().parents[1]


def test_two_gloo_ranks_equal_one_process(tmp_path):
    study = write_study(tmp_path, limit=12, batch=4, models=("resnet18",), attacks='["preset:paper"]')
    single = tmp_path / "single.sqlite"
    assert main(["study", "run", str(study), "--store", str(single), "--no-progress"]) == 0
    multi = tmp_path / "multi.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "robustarch",
        "study",
        "run",
        str(study),
        "--store",
        str(multi),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert snapshot(multi) == snapshot(single)
    # both ranks computed: 3 chunks per run, chunk c on rank c % 2
    writers = Store(multi)._db.execute("SELECT chunk_index, writer FROM chunks").fetchall()
    assert {(c % 2, w.rsplit(":", 1)[-1]) for c, w in writers} == {(0, "rank0"), (1, "rank1")}
    # rank 0 alone prints the table
    assert proc.stdout.count("CIFAR-10") == 1


def test_context_from_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    ctx = distributed.init("cpu")
    assert (ctx.rank, ctx.world_size, ctx.distributed) == (0, 1, False)
    ctx.barrier()  # a no-op for one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(RobustarchError, match="outside WORLD_SIZE"):
        distributed.init("cpu")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(RobustarchError, match="not an integer"):
        distributed.init("cpu")
