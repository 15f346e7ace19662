"""Speed on one GPU (``scripts/gpu-check.sh`` runs it): robustarch against torchattacks 3.5.1 and
AutoAttack's own APGD on the same model, batch and device, and bf16 against float32 end to end.

Rows (CUDA-synchronized wall time, median of ``--repeats`` after one warm-up; models are zoo networks with
their seeded random initialisation, images uniform random with the model's own predictions as labels, so
every example starts correct and no attack skips work):

- PGD-10 (standard, no random start, early stopping off: the same work on both sides), CIFAR ResNet-18:
  ``prepare_for_attack``'s copy vs ``torchattacks.PGD`` on the model as loaded; the share of identical
  adversarial pixels.
- APGD-CE (100 iterations): robustarch (early stopping on, its default) vs AutoAttack's own
  ``APGDAttack`` (``pyautoattack``); robust accuracy of each.
- ``robustarch.evaluate`` with PGD-10 in float32 vs bf16 autocast, end to end, with the amp_recheck flag.
- PGD-10 on the ImageNet ResNet-50 (224x224), robustarch vs torchattacks.

    python benchmarks/gpu.py [--device cuda] [--batch 512] [--repeats 3] [--tiny]   # prints markdown
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a clone without an install

from robustarch import attacks as ra
from robustarch import zoo
from robustarch.runtime import prepare_for_attack, tune_allocator


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up (cuDNN autotuning, allocator)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def batch_for(
    model: torch.nn.Module, n: int, size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


def model_for(name: str, dataset: str, device: torch.device, **arch: object) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return zoo.load(name, dataset, **arch).to(device)


def pgd_row(name: str, dataset: str, size: int, n: int, device: torch.device, repeats: int, **arch) -> str:
    import torchattacks

    model = model_for(name, dataset, device, **arch)
    x, y = batch_for(model, n, size, device)
    prepared, _ = prepare_for_attack(model, x[: min(n, 64)])
    ours = ra.create("pgd", eps=8 / 255, alpha=2 / 255, steps=10, random_start=False, early_stop=False)
    theirs = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)
    t_ours = timed(lambda: ours(prepared, x, y), device, repeats)
    t_theirs = timed(lambda: theirs(x, y), device, repeats)
    same = float((ours(prepared, x, y) == theirs(x, y)).float().mean())
    return (
        f"| PGD-10, {name} ({dataset}), batch {n} | {n / t_ours:.0f} | {n / t_theirs:.0f} (torchattacks) | "
        f"{t_theirs / t_ours:.2f}x | identical pixels {same:.4f} |"
    )


def apgd_row(n: int, device: torch.device, repeats: int, steps: int) -> str:
    from pyautoattack.autopgd_base import APGDAttack

    model = model_for("resnet18", "cifar10", device)
    x, y = batch_for(model, n, 32, device)
    prepared, _ = prepare_for_attack(model, x[: min(n, 64)])
    ours = ra.create("apgd-ce", eps=8 / 255, steps=steps)
    theirs = APGDAttack(model, n_iter=steps, norm="Linf", eps=8 / 255, seed=0, device=device)
    t_ours = timed(lambda: ours(prepared, x, y, generator=torch.Generator().manual_seed(0)), device, repeats)
    t_theirs = timed(lambda: theirs.perturb(x, y), device, repeats)
    with torch.no_grad():
        acc_ours = float((model(ours(prepared, x, y)).argmax(1) == y).float().mean())
        acc_theirs = float((model(theirs.perturb(x, y)).argmax(1) == y).float().mean())
    return (
        f"| APGD-CE ({steps} it.), resnet18 (cifar10), batch {n} | {n / t_ours:.0f} | "
        f"{n / t_theirs:.0f} (AutoAttack) | {t_theirs / t_ours:.2f}x | "
        f"robust {acc_ours:.3f} vs {acc_theirs:.3f} |"
    )


def precision_row(n: int, device: torch.device) -> str:
    import robustarch

    model = model_for("resnet18", "cifar10", device)
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x.to(device)).argmax(1).cpu()
    seconds, flag = {}, ""
    for dtype in ("float32", "bf16"):
        t0 = time.perf_counter()
        res = robustarch.evaluate(
            model, (x, y), attacks=[("pgd", {"random_start": False})], device=device.type, dtype=dtype,
            batch_size=256, name=f"resnet18-{dtype}",
        )  # fmt: skip
        seconds[dtype] = time.perf_counter() - t0
        flag = next((f["detail"] for f in res.flags() if f["check"] == "amp_recheck"), flag)
    return (
        f"| evaluate PGD-10 end to end, resnet18 (cifar10), {n} images | "
        f"float32 {n / seconds['float32']:.0f} | bf16 {n / seconds['bf16']:.0f} | "
        f"{seconds['float32'] / seconds['bf16']:.2f}x | {flag} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="a few examples: check that the script runs")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "benchmarks/gpu.py: no CUDA device here (use --device cpu --tiny to check the script)"
        )
    tune_allocator()
    n = 8 if args.tiny else args.batch
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"### {name}, torch {torch.__version__}, CUDA {torch.version.cuda}\n")
    print("| measurement | robustarch images/s | other images/s | ratio | notes |")
    print("| --- | ---: | ---: | ---: | --- |")
    rows = [
        lambda: pgd_row("resnet18", "cifar10", 32, n, device, args.repeats),
        lambda: apgd_row(n, device, args.repeats, 10 if args.tiny else 100),
        lambda: precision_row(4 * n, device),
        lambda: pgd_row(
            "resnet50",
            "imagenet",
            224,
            max(2, n // 8),
            device,
            args.repeats,
            **({"width": 8} if args.tiny else {}),
        ),
    ]
    for row in rows:
        print(row(), flush=True)


if __name__ == "__main__":
    main()
