"""``robustarch train`` and ``robustarch demo``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from robustarch.errors import RobustarchError


def _arch_value(text: str) -> Any:
    """``--arch KEY=VALUE`` values: JSON literals (16, 0.2, true, [1, 2]) or else plain strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_arch(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RobustarchError(f"--arch expects KEY=VALUE (e.g. --arch C=16), got {item!r}")
        out[key.strip()] = _arch_value(value.strip())
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a zoo network with its published recipe (or adversarially: pgd-at, trades, fast-at)",
        description=(
            "Train a network of the zoo from scratch with a published recipe (default: the one of the "
            "model's method), standard or adversarial (pgd-at, trades, fast-at; each epoch they check "
            "clean/FGSM/PGD accuracy on held-out training images and stop or flag catastrophic "
            "overfitting). A checkpoint is written after every epoch; running the same command again "
            "resumes from it. The result (OUT/model.pt) loads with robustarch.zoo.load(MODEL, DATASET, "
            "weights=...). Under torchrun the run uses DDP (gloo on CPU, NCCL on GPU)."
        ),
    )
    p.add_argument("--model", help="zoo model name (robustarch zoo list)")
    p.add_argument("--dataset", help="dataset id, e.g. cifar10, cifar10-jpeg, cifar100, fashion-mnist")
    p.add_argument(
        "--data-root", help="dataset location (default: the dataset's default root, if it has one)"
    )
    p.add_argument("--out", help="output directory (checkpoint, model.pt, train.json)")
    p.add_argument("--recipe", help="recipe name (default: the model's published recipe; see --list-recipes)")
    p.add_argument("--epochs", type=int, help="number of epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=int, help="global batch size (default: the recipe's)")
    p.add_argument("--lr", type=float, help="initial learning rate (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument(
        "--amp",
        choices=["auto", "off", "fp16", "bf16"],
        default="auto",
        help="mixed precision (auto: fp16 on CUDA, off on CPU)",
    )
    p.add_argument(
        "--train-subset",
        metavar="SPEC",
        help="train on a subset: balanced:N[:SEED] (class-balanced, seeded), first:N or ids:FILE",
    )
    p.add_argument("--train-limit", type=int, help="then keep the first N training examples")
    p.add_argument(
        "--test-subset", metavar="SPEC", help="the test examples the final accuracy is measured on"
    )
    p.add_argument("--test-limit", type=int, help="then keep the first N test examples")
    p.add_argument(
        "--arch",
        action="append",
        metavar="KEY=VALUE",
        help="architecture override for zoo.build, repeatable (e.g. --arch C=16 --arch layers=8; "
        "--arch genotype=DIR/genotype.json trains a cell robustarch search found)",
    )
    p.add_argument(
        "--check-images",
        type=int,
        metavar="N",
        help="hold N training images out for the per-epoch robustness check (default: the recipe's, 500 "
        "for the adversarial recipes; 0 = no check)",
    )
    p.add_argument(
        "--on-overfit",
        choices=["stop", "flag"],
        help="on catastrophic overfitting (PGD accuracy falling > 0.2 below the best epoch while FGSM "
        "accuracy rises): stop and keep the best epoch's weights, or record it and go on (default: the "
        "recipe's; fast-at stops)",
    )
    p.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes for data decoded on access"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--list-recipes", action="store_true", help="list the recipes and exit")
    p.set_defaults(func=run_train)

    d = subparsers.add_parser(
        "demo",
        help="offline demo: train small models on Fashion-MNIST, attack them, write the report",
        description=(
            "Trains small variants of handcrafted and NAS networks on Fashion-MNIST (Debian's "
            "dataset-fashion-mnist), runs the paper's attacks as the released code ran them (normalized "
            "inputs, emulated) and on [0,1] inputs, and the standard attacks, through the evaluation engine "
            "into a results store, and writes the report (tables, figures, 'What the published numbers "
            "measure'). Offline; measured times are in docs/training.md (--quick: a few minutes)."
        ),
    )
    d.add_argument("--out", default="robustarch-demo", help="output directory (default: ./robustarch-demo)")
    d.add_argument("--quick", action="store_true", help="a reduced run (smaller models, data and budgets)")
    d.add_argument("--data-root", help="Fashion-MNIST idx files (default: /usr/share/datasets/fashion-mnist)")
    d.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    d.add_argument("--jobs", type=int, help="worker processes (default: one per CPU core, at most 4)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=run_demo)


def _print_recipes() -> None:
    from robustarch.train.recipes import RECIPES

    for r in RECIPES.values():
        extras = [
            f"cutout {r.augment.cutout}" if r.augment.cutout else "",
            f"aux {r.aux_weight}" if r.aux_weight else "",
            f"drop path {r.drop_path}" if r.drop_path else "",
            f"clip {r.grad_clip}" if r.grad_clip else "",
            f"label smoothing {r.label_smoothing}" if r.label_smoothing else "",
            f"adversarial {r.adversarial.describe()}" if r.adversarial else "",
            f"check {r.check.images} held-out images, on overfit: {r.check.action}" if r.check else "",
        ]
        print(
            f"{r.name:22s} {r.dataset_family:8s} {r.epochs:4d} ep  batch {r.batch_size:4d}  lr {r.lr:g}  "
            f"wd {r.weight_decay:g}  {r.schedule}  {', '.join(e for e in extras if e)}"
        )
        print(f"{'':22s} {r.source}")


def run_train(args: argparse.Namespace) -> int:
    if args.list_recipes:
        _print_recipes()
        return 0
    missing = [f"--{n.replace('_', '-')}" for n in ("model", "dataset", "out") if not getattr(args, n)]
    if missing:
        raise RobustarchError(f"missing {', '.join(missing)}")
    from robustarch.train.trainer import TrainConfig, train

    data_root = args.data_root
    if data_root is None:
        from robustarch.data import dataset_info

        data_root = dataset_info(args.dataset).default_root
        if data_root is None:
            raise RobustarchError(f"--data-root is required for dataset {args.dataset!r}")
    result = train(
        TrainConfig(
            model=args.model,
            dataset=args.dataset,
            data_root=data_root,
            out=args.out,
            recipe=args.recipe,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            amp=args.amp,
            train_subset=args.train_subset,
            train_limit=args.train_limit,
            test_subset=args.test_subset,
            test_limit=args.test_limit,
            arch=parse_arch(args.arch),
            check_images=args.check_images,
            on_overfit=args.on_overfit,
            workers=args.workers,
            progress=not args.no_progress,
        )
    )
    print(
        f"{args.model} on {args.dataset}: clean accuracy {result.clean_accuracy:.4f} on {result.n_test} test "
        f"examples after {result.epochs_trained} epochs of {result.recipe} ({result.wall_s:.0f} s) -> "
        f"{result.path}"
    )
    if result.catastrophic_overfitting:
        from robustarch.train.overfitting import describe_overfitting

        print(f"warning: {describe_overfitting(result.catastrophic_overfitting)}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from robustarch.train.demo import run_demo as demo

    summary = demo(
        out=args.out, quick=args.quick, data_root=args.data_root, device=args.device, jobs=args.jobs,
        progress=not args.no_progress,
    )  # fmt: skip
    print(
        f"\nrobustarch demo ({summary['mode']}) finished in {summary['wall_seconds']:.0f} s with "
        f"{summary['jobs']} process(es): training {summary['train_seconds']:.0f} s, attacks "
        f"{summary['attack_seconds']:.0f} s, report {summary['report_seconds']:.0f} s (process time)"
    )
    for name, m in summary["models"].items():
        print(f"  {name:10s} clean accuracy {100 * m['clean_accuracy']:5.1f}% on {m['n_test']} Fashion-MNIST "
              f"test images ({m['recipe']})")  # fmt: skip
    report = summary["report"].get("html") or summary["report"].get("md")
    print(f"report: {report}")
    return 0
