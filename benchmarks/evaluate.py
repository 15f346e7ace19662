"""End to end, as a user runs it: ``robustarch evaluate`` with its defaults (the reliability checks, the
cost estimate, the store, preparation, early stopping) against a plain script calling torchattacks 3.5.1 /
AutoAttack's own APGD, as whole processes on the same images with the same model, interleaved, with the
load average. Every process is timed from outside (wall, and CPU of the whole process tree).

- ``paper``: the paper preset (FGSM, R-FGSM, StepLL, PGD-10 as the study ran them, on [0,1] inputs) on N
  CIFAR-10 JPEG test images (spread over the classes), the trained model below; the plain script runs
  torchattacks' FGSM, RFGSM, BIM targeted at the least-likely class (its StepLL) and PGD. Per-example
  outcomes are compared for FGSM and PGD (the same computation: they must agree).
- ``standard``: PGD-10 (random start) and APGD-CE (100 iterations) at 8/255 on a trained CIFAR-10 model
  (a width-16 ResNet-18 trained for a few epochs on the CIFAR-10 JPEG training split, cached), robustarch's
  standard profile against torchattacks.PGD and AutoAttack's APGDAttack; the robust accuracies of both.

    python benchmarks/evaluate.py paper --n 200 [--rounds 2]
    python benchmarks/evaluate.py standard --n 500 [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import SHARED, compile_sources, cpu_name

REPO = Path(__file__).resolve().parents[1]
JPEG = SHARED / "data" / "cifar10-jpeg"
CACHE = REPO / "artifacts" / "benchmarks"  # git-ignored: the trained model of the standard comparison

PLAIN = r"""
import json, sys, torch
from robustarch import data, zoo
which, n, ckpt, root, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
test, _ = data.load("cifar10-jpeg", root, split="test", subset=f"spread:{n}")
model = zoo.load("resnet18", "cifar10-jpeg", weights=ckpt)
x_all, y_all = test.uint8().float() / 255, test.labels
if which == "paper":
    import torchattacks
    stepll = torchattacks.BIM(model, eps=0.01, alpha=0.003, steps=3)
    stepll.set_mode_targeted_least_likely()
    attacks = {
        "fgsm": torchattacks.FGSM(model, eps=0.007),
        "rfgsm": torchattacks.RFGSM(model, eps=0.06, alpha=0.03, steps=1),
        "stepll": stepll,
        "pgd": torchattacks.PGD(model, eps=0.3, alpha=0.007, steps=10, random_start=False),
    }
else:
    import torchattacks
    from pyautoattack.autopgd_base import APGDAttack
    attacks = {
        "pgd": torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True),
        "apgd-ce": APGDAttack(model, n_iter=100, norm="Linf", eps=8 / 255, seed=0, device="cpu").perturb,
    }
outcomes = {}
with torch.no_grad():
    clean = [bool(v) for v in (model(x_all).argmax(1) == y_all)]
for name, atk in attacks.items():
    right = []
    for s in range(0, len(y_all), 128):
        x, y = x_all[s : s + 128], y_all[s : s + 128]
        adv = atk(x, y)
        with torch.no_grad():
            right += [bool(v) for v in (model(adv).argmax(1) == y)]
    outcomes[name] = right
json.dump({"clean": clean, **outcomes}, open(out, "w"))
"""


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children) of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def trained_model(env: dict[str, str]) -> Path:
    """A width-16 CIFAR ResNet-18 trained on 10,000 CIFAR-10 JPEG training images (cached)."""
    out = CACHE / "resnet18-w16"
    if not (out / "model.pt").is_file():
        cmd = [
            sys.executable, "-m", "robustarch", "train", "--model", "resnet18", "--arch", "width=16",
            "--dataset", "cifar10-jpeg", "--data-root", str(JPEG), "--epochs", "4", "--train-subset",
            "balanced:10000", "--test-limit", "1000", "--out", str(out), "--no-progress",
        ]  # fmt: skip
        subprocess.run(cmd, env=env, check=True)
    return out / "model.pt"


def ours_cmd(which: str, n: int, ckpt: Path, store: Path, out: Path) -> list[str]:
    attacks = ["--preset", "paper"] if which == "paper" else ["--attacks", "pgd,apgd-ce"]
    return [
        sys.executable, "-m", "robustarch", "evaluate", "--model", "resnet18", "--weights", str(ckpt),
        "--dataset", "cifar10-jpeg", "--data-root", str(JPEG), "--limit", str(n), *attacks,
        "--store", str(store), "--format", "json",
    ]  # fmt: skip


def outcomes_of(store: Path) -> dict[str, list[bool]]:
    from robustarch.store import Store

    with Store(store) as s:
        return {r.meta["label"]: [o.adv_correct1 for o in s.examples(r.run_id)] for r in s.results()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("paper", "standard"))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved pairs of whole processes")
    args = parser.parse_args()
    compile_sources()
    if not JPEG.exists():
        raise SystemExit(f"benchmarks/evaluate.py needs the CIFAR-10 JPEG copy at {JPEG}")
    threads = os.environ.get("OMP_NUM_THREADS", "2")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": threads}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ckpt = trained_model(env)
        times: dict[str, list[tuple[float, float]]] = {"robustarch": [], "plain": []}
        loads = []
        for r in range(args.rounds):
            store = tmp / f"s{r}.sqlite"
            loads.append(os.getloadavg()[0])
            times["robustarch"].append(run(ours_cmd(args.which, args.n, ckpt, store, tmp), env))
            loads.append(os.getloadavg()[0])
            plain = [sys.executable, "-c", PLAIN, args.which, str(args.n), str(ckpt), str(JPEG)]
            times["plain"].append(run([*plain, str(tmp / "p.json")], env))
            print(f"round {r + 1}: {times['robustarch'][-1]} vs {times['plain'][-1]}", flush=True)
        ours, theirs = outcomes_of(tmp / "s0.sqlite"), json.loads((tmp / "p.json").read_text())
    best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in times.items()}
    print(
        f"\n{args.which}: {args.n} CIFAR-10 JPEG test images, CIFAR ResNet-18"
        f" (width 16, trained); {cpu_name()}, "
        f"OMP_NUM_THREADS={threads}, {args.rounds} interleaved rounds, best of each; 1-min load average "
        f"{min(loads):.2f}-{max(loads):.2f}\n"
    )
    print("| process | wall s | CPU s | images/s (wall) |")
    print("| --- | ---: | ---: | ---: |")
    label = "torchattacks" if args.which == "paper" else "torchattacks PGD + AutoAttack APGD-CE"
    for key, what in (
        ("robustarch", "`robustarch evaluate` (defaults)"),
        ("plain", f"plain script ({label})"),
    ):
        wall, cpu = best[key]
        print(f"| {what} | {wall:.1f} | {cpu:.1f} | {args.n / wall:.2f} |")
    print(
        f"\nratio (plain / robustarch): wall {best['plain'][0] / best['robustarch'][0]:.2f}x, "
        f"CPU {best['plain'][1] / best['robustarch'][1]:.2f}x (best of each)"
    )
    # the machine's speed drifts over minutes; a round's two processes ran back to back, so the ratio of
    # each round is less exposed to the drift than the ratio of the two bests
    per_round = [p[0] / o[0] for o, p in zip(times["robustarch"], times["plain"], strict=True)]
    print(
        f"per-round wall ratios {', '.join(f'{r:.2f}' for r in per_round)}; median "
        f"{statistics.median(per_round):.2f}x"
    )
    for name in theirs:
        if name == "clean" or name not in ours:
            continue
        plain = theirs[name]
        if args.which == "standard":  # robust accuracy: right on x and on x_adv, as robustarch stores it
            plain = [a and c for a, c in zip(plain, theirs["clean"], strict=True)]
        agree = sum(a == b for a, b in zip(ours[name], plain, strict=True)) / len(plain)
        print(
            f"{name}: robustarch {sum(ours[name]) / len(plain):.1%} correct, plain "
            f"{sum(plain) / len(plain):.1%}, per-example agreement {agree:.1%}"
        )


if __name__ == "__main__":
    main()
