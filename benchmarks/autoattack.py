"""AutoAttack speed: robustarch's ``preset:autoattack`` vs AutoAttack's own ``run_standard_evaluation``
(pyautoattack 0.2.0), as whole processes on the same model and the same images, CPU float32.

Model: by default a zoo ResNet-18 (width 8) trained here for one short epoch on real Fashion-MNIST (Debian's
dataset-fashion-mnist), so that the cascade has robust points to work on; or any zoo checkpoint
(``--model/--dataset/--weights``, images from ``--images``: a ``torch.save``'d dict with ``x`` in [0,1]
and ``y``). Both processes load the same checkpoint and the same images. robustarch's process runs the
preset the way the library is meant to be used (``tune_allocator``, ``prepare_for_attack``'s copy, early
stopping on); AutoAttack's runs the model as loaded, with its defaults (batches of 250, ``seed=0``).

The two processes alternate ``--rounds`` times; per process the whole wall time, the attack's wall time and
the process's CPU time are recorded, with the 1-minute load average before each. The table reports both
robust accuracies, their per-example agreement and the ratios (AutoAttack / robustarch). A ratio only
counts at equal robust accuracy: the summary line says whether the two differ by more than 0.5 pp.

    python benchmarks/autoattack.py [--version standard|rand] [--norm Linf|L2] [--n 500] [--rounds 3]
    python benchmarks/autoattack.py --version rand --n 16 --rounds 1 --train-n 500 --steps 5   # smoke run

``--steps`` / ``--queries`` shrink both sides' iteration counts for smoke runs only (the numbers then are
not AutoAttack "standard"); ``preset:autoattack`` needs the FAB-T attack (``fab-t``) registered.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _machine import compile_sources, cpu_name  # benchmarks/_machine.py (scripts run from this folder)

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")

# both processes: argv = ckpt images threads version norm eps steps queries seed out
COMMON = r"""
import json, sys, time
t_start = time.perf_counter()
import torch
from robustarch import zoo
ckpt, images, threads, version, norm, eps, steps, queries, seed, out = sys.argv[1:11]
eps, steps, queries, seed = float(eps), int(steps), int(queries), int(seed)
torch.set_num_threads(int(threads))
data = torch.load(images)
x, y = data["x"], data["y"]
model = zoo.load(data["model"], data["dataset"], weights=ckpt)
"""

OURS = (
    COMMON
    + r"""
import robustarch.attacks as ra
from robustarch.runtime import prepare_for_attack, tune_allocator
tuned = tune_allocator()
name = "autoattack" + ("-rand" if version == "rand" else "") + ("-l2" if norm == "L2" else "")
attack = ra.preset(name, eps=eps)[name]
if steps or queries:  # smoke runs only
    params = {k: v for k, v in attack.params.items() if k != "emulate_normalized_inputs"}
    params.update({"steps": steps or params["steps"], "queries": queries or params["queries"]})
    attack = ra.create("autoattack", **params)
t0 = time.perf_counter()
prepared, info = prepare_for_attack(model, x[:64])
res = attack.run(prepared, x, y, generator=torch.Generator().manual_seed(seed))
t1 = time.perf_counter()
with torch.no_grad():  # judged on the model as loaded, like AutoAttack's output
    robust = model(res.adv).argmax(1) == y
torch.save(robust, out)
print(json.dumps({"impl": "robustarch", "attack_s": t1 - t0, "contributions": res.extras["contributions"],
                  "stage_s": res.extras["stage_seconds"], "prepared": info.folded_batchnorm > 0,
                  "process_cpu_s": time.process_time(), "in_process_wall_s": time.perf_counter() - t_start}))
"""
)

REFERENCE = (
    COMMON
    + r"""
import logging
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
# the seed robustarch's cascade gives each of its stages (robustarch.attacks.autoattack's docstring)
aa_seed = int(torch.randint(2**31 - 1, (1,), generator=torch.Generator().manual_seed(seed)))
adversary = AutoAttack(model, norm=norm, eps=eps, version=version, seed=aa_seed, device="cpu")
if steps:  # smoke runs only: rebuild with fewer iterations (AutoAttack derives its schedule in __init__)
    a, t = adversary.apgd, adversary.apgd_targeted
    adversary.apgd = APGDAttack(model, n_iter=steps, norm=norm, eps=eps, eot_iter=a.eot_iter,
                                n_restarts=a.n_restarts, seed=aa_seed, device="cpu", logger=a.logger)
    adversary.apgd_targeted = APGDAttack_targeted(model, n_iter=steps, norm=norm, eps=eps, seed=aa_seed,
                                                  device="cpu", n_target_classes=t.n_target_classes,
                                                  logger=t.logger)
    adversary.fab.n_iter = steps
if queries:
    adversary.square.n_queries = queries
t0 = time.perf_counter()
_, y_adv = adversary.run_standard_evaluation(x, y, batch_size=250)
t1 = time.perf_counter()
torch.save(y_adv == y, out)
print(json.dumps({"impl": "autoattack", "attack_s": t1 - t0, "process_cpu_s": time.process_time(),
                  "in_process_wall_s": time.perf_counter() - t_start}))
"""
)


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    dims = np.frombuffer(raw, dtype=">u4", count=raw[3], offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * raw[3]).reshape(dims)


def train_fashion_model(tmp: Path, train_n: int, n: int, threads: int) -> tuple[Path, Path]:
    """A zoo ResNet-18 (width 8) trained for one epoch on ``train_n`` Fashion-MNIST images, and ``n`` test
    images; returns (checkpoint, images file)."""
    from robustarch import zoo

    if not FASHION.exists():
        sys.exit(f"needs Fashion-MNIST at {FASHION} (Debian's dataset-fashion-mnist), or --weights/--images")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    xtr = torch.from_numpy(read_idx(FASHION / "train-images-idx3-ubyte.gz")[:train_n].copy())
    ytr = torch.from_numpy(read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:train_n].astype(np.int64))
    model = zoo.load("resnet18", "fashion-mnist", width=8)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xtr = xtr.float().div(255).unsqueeze(1)
    for i in range(0, train_n, 64):
        loss = torch.nn.functional.cross_entropy(model(xtr[i : i + 64]), ytr[i : i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    meta = {"model": "resnet18", "dataset": "fashion-mnist", "overrides": {"width": 8}}
    ckpt = zoo.save_checkpoint(model, tmp / "resnet18-w8.pt", meta)
    x = torch.from_numpy(read_idx(FASHION / "t10k-images-idx3-ubyte.gz")[:n].copy()).float().div(255)
    y = torch.from_numpy(read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")[:n].astype(np.int64))
    images = tmp / "images.pt"
    torch.save({"x": x.unsqueeze(1), "y": y, "model": "resnet18", "dataset": "fashion-mnist"}, images)
    return ckpt, images


def run_process(script: str, argv: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", script, *argv, str(out)], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"benchmark process failed:\n{res.stderr[-3000:]}")
    data = json.loads(res.stdout.strip().splitlines()[-1])
    return {**data, "process_wall_s": wall, "load": load, "robust": torch.load(out)}


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", default="standard", choices=("standard", "rand"))
    ap.add_argument("--norm", default="Linf", choices=("Linf", "L2"))
    ap.add_argument("--eps", type=float, default=None, help="default: 8/255 (L-inf), 0.5 (L2)")
    ap.add_argument("--n", type=int, default=500, help="test images")
    ap.add_argument("--rounds", type=int, default=3, help="alternating process pairs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-n", type=int, default=4000, help="Fashion-MNIST training images (default model)")
    ap.add_argument("--weights", default=None, help="a zoo checkpoint instead of the default model")
    ap.add_argument("--images", default=None, help="with --weights: torch.save'd dict x, y, model, dataset")
    ap.add_argument("--steps", type=int, default=0, help="smoke runs only: APGD/FAB iterations")
    ap.add_argument("--queries", type=int, default=0, help="smoke runs only: Square queries")
    ap.add_argument(
        "--seed", type=int, default=0, help="robustarch's generator seed (AutoAttack gets the same draws)"
    )
    args = ap.parse_args()
    compile_sources()

    sys.path.insert(0, str(REPO / "src"))
    import robustarch.attacks as ra

    reason = ra.unavailable_reason("autoattack", version=args.version)
    if reason:
        print(f"cannot run preset:autoattack ({args.version}): {reason}", file=sys.stderr)
        return 2
    eps = args.eps if args.eps is not None else (8 / 255 if args.norm == "Linf" else 0.5)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.weights:
            if not args.images:
                sys.exit("--weights needs --images")
            ckpt, images = Path(args.weights), Path(args.images)
        else:
            ckpt, images = train_fashion_model(tmp, args.train_n, args.n, args.threads)
        argv = [str(ckpt), str(images), str(args.threads), args.version, args.norm, repr(eps)]
        argv += [str(args.steps), str(args.queries), str(args.seed)]
        print(
            f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}; threads "
            f"{args.threads}; float32; AutoAttack {args.version}, {args.norm} eps {eps:.4g}; {args.n} "
            f"images; load average at start {load_avg()}"
        )
        rows: dict[str, list[dict]] = {"robustarch": [], "autoattack": []}
        for r in range(args.rounds):
            for impl, script in (("robustarch", OURS), ("autoattack", REFERENCE)):
                rows[impl].append(run_process(script, argv, tmp / f"{impl}-{r}.pt"))
            print(
                f"  round {r + 1}: robustarch {rows['robustarch'][-1]['attack_s']:.1f} s, AutoAttack "
                f"{rows['autoattack'][-1]['attack_s']:.1f} s (load {load_avg()})",
                file=sys.stderr,
            )
        report(rows, args)
    return 0


def report(rows: dict[str, list[dict]], args: argparse.Namespace) -> None:
    ours, ref = rows["robustarch"], rows["autoattack"]
    a, b = ours[-1]["robust"], ref[-1]["robust"]
    acc_o, acc_r = float(a.float().mean()), float(b.float().mean())
    loads = [r["load"] for r in ours + ref]
    print(f"\n{args.rounds} alternating rounds, 1-minute load average {min(loads):.2f}-{max(loads):.2f}")
    print("| process (medians) | robust accuracy | attack wall s | process wall s | process CPU s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, rs, acc in (("robustarch `preset:autoattack`", ours, acc_o), ("AutoAttack", ref, acc_r)):
        cells = [f"{median(rs, k):.2f}" for k in ("attack_s", "process_wall_s", "process_cpu_s")]
        print(f"| {label} | {100 * acc:.2f}% | {' | '.join(cells)} |")
    ratio = median(ref, "attack_s") / median(ours, "attack_s")
    print(
        f"\nSpeed-up AutoAttack / robustarch: attack wall {ratio:.2f}x, process wall "
        f"{median(ref, 'process_wall_s') / median(ours, 'process_wall_s'):.2f}x, process CPU "
        f"{median(ref, 'process_cpu_s') / median(ours, 'process_cpu_s'):.2f}x"
    )
    equal = "equal within 0.5 pp" if abs(acc_o - acc_r) <= 0.005 else "NOT equal"
    agree = 100 * float((a == b).float().mean())
    stages = ", ".join(
        f"{k} {v} ({ours[-1]['stage_s'][k]:.1f} s)" for k, v in ours[-1]["contributions"].items()
    )
    print(
        f"Robust accuracy {100 * acc_o:.2f}% vs {100 * acc_r:.2f}% ({equal}), per-example agreement "
        f"{agree:.2f}%; robustarch's stages (examples broken, seconds): {stages}"
    )


if __name__ == "__main__":
    sys.exit(main())
