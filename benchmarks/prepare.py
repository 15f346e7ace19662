"""``prepare_for_attack`` over the whole zoo: which transforms each registered entry keeps, its logit
differences relative to the logits' scale, and what preparing costs.

For every registry entry (CIFAR-family entries on cifar10, ImageNet entries on imagenet): seeded random
initialisation with the BatchNorm statistics and affine parameters randomized (so that folding changes the
arithmetic, as trained statistics do; fresh BatchNorms fold to a near-identity), a seeded batch in [0, 1],
then ``prepare_for_attack`` on it (which checks on its first 4 examples). Columns:

- per transform: what it changed (BatchNorms folded, channels_last, convolutions made dense), ``n/a`` where
  there was nothing to change, or ``REJECTED`` with the measured difference;
- ``diff / scale``: max |prepared - original| logits over max |original logits| on the probe, which the
  rule holds to <= 1e-4 (+ 1e-5 / scale);
- ``abs 1e-5``: whether the former absolute tolerance of 1e-5 would have kept BatchNorm folding;
- ``0.1% change``: the same relative difference for a network whose first convolution's weights are scaled
  by 1.001, i.e. what a transform that really changed the network by that little would show;
- wall and CPU seconds of ``prepare_for_attack`` (building the model excluded).

    python benchmarks/prepare.py [--size quick|real] [--models resnet50,vgg16_bn] [--threads 1] [--markdown]

``--size quick`` builds each entry with its ``quick_overrides`` (small widths, for a smoke run);
``--size real`` with the published sizes (the generic ``densenas`` entry, which needs a net_config, always
uses its quick overrides).
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import torch
from torch import nn

from _machine import cpu_name  # benchmarks/_machine.py (scripts run from this folder)

SHORT = {"fold_batchnorm": "fold", "channels_last": "channels_last", "dense_small_convolutions": "dense"}


def randomize_batchnorm(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.empty_like(m.running_mean).uniform_(-0.1, 0.1, generator=gen))
            m.running_var.copy_(torch.empty_like(m.running_var).uniform_(0.5, 2.0, generator=gen))
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5, generator=gen)
                m.bias.data.uniform_(-0.1, 0.1, generator=gen)


def relative_change_of_a_tiny_edit(model: nn.Module, x: torch.Tensor, reference: torch.Tensor) -> float:
    """max |logit change| / max |logits| when the first convolution's weights are scaled by 1.001."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    saved = conv.weight.detach().clone()
    with torch.no_grad():
        conv.weight.mul_(1.001)
        changed = model(x)
        conv.weight.copy_(saved)
    return float((changed - reference).abs().max() / reference.abs().max())


def measure(spec: Any, size: str, batch: int) -> dict[str, Any]:
    from robustarch import zoo
    from robustarch.runtime import prepare_for_attack

    dataset = "cifar10" if spec.dataset_family == "cifar" else "imagenet"
    overrides = spec.quick_overrides if size == "quick" or spec.name == "densenas" else {}
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = zoo.load(spec.name, dataset, **overrides)
    randomize_batchnorm(model, gen)
    shape = zoo.DATASETS[dataset]
    x = torch.rand(batch, shape.in_channels, shape.input_size, shape.input_size, generator=gen)
    wall, cpu = time.perf_counter(), time.process_time()
    _, info = prepare_for_attack(model, x)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    probe = x[: info.probe_examples]
    with torch.no_grad():
        reference = model(probe)
    fold = next(c for c in info.checks if c.transform == "fold_batchnorm")
    return {
        "model": spec.name + ("" if not overrides else " (quick)"),
        "dataset": dataset,
        "params_m": zoo.count_parameters(model) / 1e6,
        "checks": info.checks,
        "diff": info.max_abs_logit_diff,
        "scale": info.logit_scale,
        "old_rule_folds": fold.max_abs_logit_diff is not None and fold.max_abs_logit_diff <= 1e-5,
        "tiny_edit": relative_change_of_a_tiny_edit(model, probe, reference),
        "wall_s": wall,
        "cpu_s": cpu,
    }


def cell(check: Any) -> str:
    if check.kept:
        return "yes" if check.transform == "channels_last" else str(check.count)
    if check.max_abs_logit_diff is not None:
        return f"REJECTED ({check.max_abs_logit_diff:.1e})"
    return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("quick", "real"), default="quick")
    parser.add_argument("--models", help="comma-separated names (default: every registry entry)")
    parser.add_argument("--batch", type=int, default=8, help="batch given to prepare_for_attack")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown", action="store_true", help="print the docs/benchmarks.md block")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from robustarch import zoo

    names = set(args.models.split(",")) if args.models else None
    specs = [s for s in zoo.list_specs() if names is None or s.name in names]
    rows = []
    for spec in specs:
        row = measure(spec, args.size, args.batch)
        rows.append(row)
        print(
            f"# {row['model']}/{row['dataset']}: {', '.join(cell(c) for c in row['checks'])}; "
            f"diff/scale {row['diff'] / row['scale']:.1e}; {row['wall_s']:.2f} s",
            flush=True,
        )
    if not args.markdown:
        return
    load = ", ".join(f"{v:.1f}" for v in __import__("os").getloadavg())
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}, {platform.machine()}, torch "
        f"{torch.__version__}, {args.threads} torch thread(s), load average {load}, sizes: {args.size}\n"
    )
    print(
        "| model | dataset | params (M) | fold | channels_last | dense | max abs diff | max abs logit | "
        "diff / scale | abs 1e-5 folds | 0.1% change | wall s | CPU s |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for r in rows:
        cells = " | ".join(cell(c) for c in r["checks"])
        print(
            f"| {r['model']} | {r['dataset']} | {r['params_m']:.2f} | {cells} | {r['diff']:.1e} | "
            f"{r['scale']:.3g} | {r['diff'] / r['scale']:.1e} | {'yes' if r['old_rule_folds'] else 'no'} | "
            f"{r['tiny_edit']:.1e} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
