"""DDP on CPU: ``torchrun`` with 2 gloo processes trains like one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from robustarch import zoo

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]

# A network without BatchNorm: with it, each process normalizes its half batch with its own statistics
# (SyncBatchNorm has no CPU implementation), and one process and two are then different computations.
# Without it, the only difference left is the order of floating-point sums. In float64: adversarial training
# takes the sign of input gradients, and in float32 a component near 0 flips sign under another summation
# order, moving a pixel by 2 alpha (float32 weights then differ by ~5e-5 after 12 steps, too close to the
# ~4e-4 of a wrong random-start row); in float64 they agree to ~1e-16 and that bug still moves them by 1e-4.
WORKER = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    from robustarch import data
    from robustarch.train import Trainer, exit_process, get_recipe
    from robustarch.train.trainer import _init_distributed
    from robustarch.zoo import Normalized

    torch.set_num_threads(1)
    d, device = _init_distributed("cpu")
    train_set, _ = data.load("fashion-mnist", sys.argv[2], split="train", limit=192)
    torch.manual_seed(0)
    class Double(nn.Module):
        def forward(self, x):
            return x.double()

    net = nn.Sequential(Double(), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Dropout(0.0), nn.Linear(64, 10)).double()
    model = Normalized(net, [0.286], [0.353])
    # DARTS protocol: shuffling, crop + flip + cutout, gradient clipping, cosine schedule, momentum;
    # TRADES: random starts drawn for the global batch, eval-mode attack, two forwards through DDP
    recipe = get_recipe(sys.argv[3]).with_overrides(epochs=2, batch_size=32, lr=0.05)
    trainer = Trainer(model, train_set, recipe, out=sys.argv[1], seed=3, progress=False, dist_info=d)
    trainer.fit()
    if d.main:
        torch.save({"state": net.state_dict(), "history": trainer.history}, sys.argv[1] + "/final.pt")
    d.close()
    exit_process(0)  # not a normal exit: DDP leaves gloo's threads running (docs/training.md)
    """
)


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("recipe", ["darts-cifar", "pgd-at", "trades"])
def test_two_gloo_processes_train_like_one(recipe, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _run([sys.executable, str(script), str(one), str(FMNIST), recipe])
    _run([*TORCHRUN, str(script), str(two), str(FMNIST), recipe])
    a = torch.load(one / "final.pt", weights_only=True)
    b = torch.load(two / "final.pt", weights_only=True)
    for (k, w1), w2 in zip(a["state"].items(), b["state"].values(), strict=True):
        torch.testing.assert_close(w2, w1, rtol=1e-7, atol=1e-9, msg=k)
    for h1, h2 in zip(a["history"], b["history"], strict=True):  # the all-reduced epoch statistics
        assert h1["train_loss"] == pytest.approx(h2["train_loss"], rel=1e-5)
        assert h1["train_acc"] == h2["train_acc"]


def test_train_command_under_torchrun(tmp_path):
    """``torchrun ... robustarch train``: two processes (gloo), one checkpoint zoo.load reads strictly."""
    out = tmp_path / "ddp"
    args = [
        *("train", "--model", "resnet18", "--dataset", "fashion-mnist", "--data-root", str(FMNIST)),
        *("--arch", "width=8", "--arch", "layers=[1,1,1,1]", "--epochs", "1", "--batch-size", "32"),
        *("--train-limit", "128", "--test-limit", "64", "--no-progress", "--out", str(out)),
    ]
    _run([*TORCHRUN, "-m", "robustarch", *args])
    loaded = zoo.load("resnet18", "fashion-mnist", weights=out / "model.pt")
    meta = loaded.checkpoint_metadata
    assert meta["world_size"] == 2 and meta["n_test"] == 64 and meta["recipe"] == "handcrafted-cifar"
    assert meta["overrides"] == {"width": 8, "layers": [1, 1, 1, 1]}


@pytest.mark.parametrize("fast", [False, True])
def test_exit_process_flushes_output_and_keeps_the_exit_code(fast):
    """The entry point's exit after DDP (os._exit) must not lose buffered output or the command's status."""
    code = textwrap.dedent(
        f"""
        import logging, sys
        from robustarch.runtime import exit_process, request_fast_exit
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        print("result line")  # block-buffered: stdout is a pipe
        logging.getLogger("robustarch").info("log line")
        if {fast}:
            request_fast_exit("test")
        exit_process(3)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert proc.stdout == "result line\n"
    assert "log line" in proc.stderr
