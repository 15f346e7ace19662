"""End-to-end images/s of a study (the paper preset, one model) versus a plain loop calling torchattacks.

Both sides evaluate the same examples with the same model (random initialisation under seed 0, since only
speed is measured) under the study's four attacks: FGSM eps 0.007; R-FGSM eps 0.06, alpha 0.03; StepLL eps
0.01, alpha 0.003 (3 steps); PGD eps 0.3, alpha 0.007, 10 steps, no random start.

- ``robustarch``: ``run_study`` on a generated study file, wall time from start to the last commit: loading
  the data and the model, the shared clean forward, the attacks, the adversarial forwards, per-example
  outcomes committed to a fresh SQLite store. Variants: with the model prepared for attack (BatchNorm folded,
  channels_last; the default) or not, and with the reliability checks (extra attack passes on one chunk).
- ``torchattacks loop``: the loop a user writes by hand: per batch, a clean forward and, per attack,
  ``torchattacks.X(model, ...)(images, labels)`` then a forward, accumulating top-1 counts (nothing stored).
  StepLL is torchattacks' BIM in ``set_mode_targeted_least_likely`` mode (3.x has no StepLL class).

- ``torchattacks loop, glibc allocator tuned``: the same loop after ``robustarch.runtime.tune_allocator()``,
  which the robustarch CLI and engine call: it separates the allocator's share of the difference.

Each measurement runs in a fresh process (wall and CPU time, all threads, measured inside it after the
imports; on a shared machine CPU time is the steadier of the two), since the allocator
setting and a warmed-up heap are per process; variants are interleaved and the best of ``--repeats`` kept.

Data: the real CIFAR-10 JPEG test split (``../shared/data/cifar10-jpeg``, a balanced subset) when present,
else generated CIFAR-10 files.

    python benchmarks/study.py [--n 64] [--batch-size 64] [--model resnet18] [--repeats 2] [--threads T]
                               [--markdown]
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _machine import SHARED, cpu_name  # benchmarks/_machine.py (scripts run from this folder)

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def dataset_table(tmp: Path, n: int) -> tuple[str, str]:
    """The [[datasets]] head of the study file and a description of the data."""
    jpeg = SHARED / "data" / "cifar10-jpeg"
    if jpeg.exists():
        return (
            f'name = "cifar10-jpeg"\nroot = "{jpeg}"\nsubset = "balanced:{n}"\n',
            f"cifar10-jpeg test, balanced:{n}",
        )
    folder = tmp / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 10
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": data, "labels": labels.tolist()}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CLASSES}))
    return (
        f'name = "cifar10"\nroot = "{folder.parent}"\nverify = false\nallow_partial = true\n',
        f"generated CIFAR-10, {n} images",
    )


def run_robustarch(tmp: Path, n: int, batch: int, model: str, *, prepare: bool, checks: bool) -> float:
    from dataclasses import replace

    from robustarch.evaluation import load_study, run_specs

    head, _ = dataset_table(tmp, n)
    store = tmp / f"bench-{prepare}-{checks}.sqlite"
    path = tmp / "study.toml"
    path.write_text(
        f'[study]\ndevice = "cpu"\nbatch_size = {batch}\nchecks = {str(checks).lower()}\n'
        f'attacks = ["preset:paper"]\nstore = "{store}"\n[[datasets]]\n{head}'
        f'models = [{{ name = "{model}", random_init = true }}]\n'
    )
    t = time.perf_counter()
    specs = [replace(s, prepare=prepare) for s in load_study(path).specs()]
    run_specs(specs, progress=False)
    return time.perf_counter() - t


def run_torchattacks(tmp: Path, n: int, batch: int, model_name: str) -> float:
    import torchattacks

    from robustarch import data as rdata
    from robustarch import zoo

    head, _ = dataset_table(tmp, n)
    t = time.perf_counter()
    if "cifar10-jpeg" in head:
        ds, _ = rdata.load("cifar10-jpeg", SHARED / "data" / "cifar10-jpeg", subset=f"balanced:{n}")
    else:
        ds, _ = rdata.load("cifar10", tmp / "cifar", verify=False, allow_partial=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = zoo.load(model_name, "cifar10")
    attacks = {
        "fgsm": torchattacks.FGSM(model, eps=0.007),
        "rfgsm": torchattacks.RFGSM(model, eps=0.06, alpha=0.03, steps=1),
        "stepll": torchattacks.BIM(model, eps=0.01, alpha=0.003, steps=3),
        "pgd": torchattacks.PGD(model, eps=0.3, alpha=0.007, steps=10, random_start=False),
    }
    attacks["stepll"].set_mode_targeted_least_likely()
    correct = dict.fromkeys(["clean", *attacks], 0)
    for start in range(0, len(ds), batch):
        items = [ds[i] for i in range(start, min(start + batch, len(ds)))]
        x = torch.stack([a for a, _ in items])
        y = torch.tensor([b for _, b in items])
        with torch.no_grad():
            correct["clean"] += int((model(x).argmax(1) == y).sum())
        for name, atk in attacks.items():
            adv = atk(x, y)
            with torch.no_grad():
                correct[name] += int((model(adv).argmax(1) == y).sum())
    return time.perf_counter() - t


VARIANTS = {
    "ta": "torchattacks 3.5.1 loop (per attack, nothing stored)",
    "ta-tuned": "torchattacks 3.5.1 loop, glibc allocator tuned as robustarch does",
    "ra": "robustarch study (prepared model, checks off)",
    "ra-plain": "robustarch study (plain model, checks off)",
    "ra-checks": "robustarch study (prepared model, checks on)",
}


def measure(variant: str, n: int, batch: int, model: str) -> float:
    """One measurement, in this (fresh) process."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if variant.startswith("ta"):
            if variant == "ta-tuned":
                from robustarch.runtime import tune_allocator

                tune_allocator()
            return run_torchattacks(tmp, n, batch, model)
        return run_robustarch(
            tmp, n, batch, model, prepare=variant != "ra-plain", checks=variant == "ra-checks"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="examples (a multiple of 10)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--repeats", type=int, default=2, help="best of R interleaved runs per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one measurement (internal)
    args = parser.parse_args()
    n, b, m = args.n, args.batch_size, args.model
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        cpu = time.process_time()
        wall = measure(args.variant, n, b, m)
        print(f"SECONDS {wall} {time.process_time() - cpu}")
        return
    # every measurement in a fresh process: the allocator setting and warm heaps are per process
    best = dict.fromkeys(VARIANTS, float("inf"))
    best_cpu = dict.fromkeys(VARIANTS, float("inf"))
    for r in range(args.repeats):  # interleaved, so a burst of load on a shared machine hits every variant
        for v, label in VARIANTS.items():
            cmd = [sys.executable, __file__, "--variant", v, "--n", str(n), "--batch-size", str(b)]
            cmd += ["--model", m]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            secs, cpu = (float(t) for t in out.rsplit("SECONDS", 1)[1].split())
            best[v], best_cpu[v] = min(best[v], secs), min(best_cpu[v], cpu)
            print(
                f"[{r + 1}/{args.repeats}] {label}: {secs:.1f} s wall, {cpu:.1f} CPU-s, "
                f"{n / secs:.2f} images/s",
                flush=True,
            )
    with tempfile.TemporaryDirectory() as d:
        _, data_desc = dataset_table(Path(d), n)
    machine = (
        f"{cpu_name()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}"
    )
    if args.markdown:
        print(f"\n{m} (CIFAR, full size), {data_desc}, batch {b}, best of {args.repeats}; {machine}\n")
        print("| variant | wall s | images/s | CPU s (all threads) | images per CPU-s |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for v, label in VARIANTS.items():
            print(
                f"| {label} | {best[v]:.1f} | {n / best[v]:.2f} | {best_cpu[v]:.1f} | {n / best_cpu[v]:.2f} |"
            )


if __name__ == "__main__":
    main()
