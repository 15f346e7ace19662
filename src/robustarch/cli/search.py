"""``robustarch search`` (robust differentiable architecture search) and ``robustarch compare``
(architectures under one protocol)."""

from __future__ import annotations

import argparse

from robustarch.errors import RobustarchError


def _paths(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RobustarchError(f"--path expects KEY=DIR (e.g. --path data=/datasets), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_search(subparsers)
    _register_compare(subparsers)


def _register_search(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser(
        "search",
        help="robust architecture search: PC-DARTS over the DARTS cell space with an adversarial inner step",
        description=(
            "Differentiable architecture search over the DARTS cell space with partial channel "
            "connections and edge normalization (PC-DARTS, first order), an adversarial inner step for both "
            "the weight and the architecture loss (--adversarial), AdvRush's input-smoothness term "
            "(--smoothness) and P-DARTS' cap on skip connections. The training split is cut into a "
            "class-balanced weight half and architecture half. Writes OUT/search.pt after every epoch "
            "(running the command again resumes) and OUT/genotype.json, which zoo.build('darts', DATASET, "
            "genotype='OUT/genotype.json'), robustarch train --model darts --arch "
            "genotype=OUT/genotype.json and study files take. Under torchrun the search is data parallel "
            "(gloo on CPU, NCCL on GPU); --micro-batches K splits a process's share."
        ),
    )
    s.add_argument("--dataset", required=True, help="dataset id, e.g. cifar10, cifar10-jpeg, fashion-mnist")
    s.add_argument(
        "--data-root", help="dataset location (default: the dataset's default root, if it has one)"
    )
    s.add_argument("--out", required=True, help="output directory (search.pt, genotype.json)")
    s.add_argument("--epochs", type=int, default=50, help="search epochs (default 50, PC-DARTS)")
    s.add_argument(
        "--subset",
        metavar="SPEC",
        help="search on a subset of the training split: balanced:N[:SEED], "
        "first:N or ids:FILE (default: all of it)",
    )
    s.add_argument(
        "--adversarial",
        choices=["none", "fgsm-rs", "pgd", "trades"],
        default="fgsm-rs",
        help="inner maximisation of both losses: fast-at's FGSM with a random start (default), "
        "pgd-at's PGD-10, TRADES' KL objective, or none (standard PC-DARTS)",
    )
    s.add_argument(
        "--eps", type=float, default=8 / 255, help="L-inf budget of the inner step (default 8/255)"
    )
    s.add_argument(
        "--smoothness",
        type=float,
        default=0.0,
        metavar="GAMMA",
        help="weight of AdvRush's curvature term in the architecture loss (AdvRush: 0.04; default 0)",
    )
    s.add_argument(
        "--smoothness-warmup",
        type=int,
        metavar="E",
        help="epochs before the smoothness term is used (default: 5/6 of the epochs, as AdvRush)",
    )
    s.add_argument(
        "--skip-cap",
        type=int,
        default=2,
        help="most skip connections in the normal cell (default 2; -1 = no cap)",
    )
    s.add_argument(
        "--arch-warmup",
        type=int,
        metavar="E",
        help="epochs of weight training before the first architecture step (default: 30%%)",
    )
    s.add_argument("--C", type=int, default=16, help="initial channels of the search network (default 16)")
    s.add_argument("--layers", type=int, default=8, help="cells of the search network (default 8)")
    s.add_argument(
        "--partial",
        type=int,
        default=4,
        metavar="K",
        help="PC-DARTS' K: 1/K of the channels go through the mixed ops (default 4; 1 = DARTS)",
    )
    s.add_argument("--batch-size", type=int, default=256, help="global batch per half (default 256)")
    s.add_argument("--lr", type=float, default=0.1, help="weight learning rate (cosine to 0; default 0.1)")
    s.add_argument("--arch-lr", type=float, default=6e-4, help="architecture (Adam) learning rate")
    s.add_argument("--micro-batches", type=int, default=1, metavar="K", help="shards per process (memory)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=run_search)


def run_search(args: argparse.Namespace) -> int:
    from robustarch.search.search import SearchConfig, search

    data_root = args.data_root
    if data_root is None:
        from robustarch.data import dataset_info

        data_root = dataset_info(args.dataset).default_root
        if data_root is None:
            raise RobustarchError(f"--data-root is required for dataset {args.dataset!r}")
    for name in ("epochs", "C", "layers", "partial", "batch_size", "micro_batches"):
        if getattr(args, name) < 1:
            raise RobustarchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    result = search(
        SearchConfig(
            dataset=args.dataset,
            data_root=data_root,
            out=args.out,
            subset=args.subset,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            arch_lr=args.arch_lr,
            arch_warmup=args.arch_warmup,
            C=args.C,
            layers=args.layers,
            partial=args.partial,
            adversarial=args.adversarial,
            eps=args.eps,
            smoothness=args.smoothness,
            smoothness_warmup=args.smoothness_warmup,
            skip_cap=None if args.skip_cap < 0 else args.skip_cap,
            micro_batches=args.micro_batches,
            seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
        )
    )
    last = result.history[-1] if result.history else {}
    print(
        f"searched {len(result.history)} epochs ({result.wall_s:.0f} s); max |alpha change| "
        f"{last.get('alpha_change', 0):.4f}\n{result.genotype}\n-> {result.genotype_path}"
    )
    return 0


def _register_compare(subparsers: argparse._SubParsersAction) -> None:
    c = subparsers.add_parser(
        "compare",
        help="architectures under one protocol: train each with the same recipe at matched size, evaluate",
        description=(
            "Run a protocol file (bundled: one-protocol, cpu-evidence; or a path): every listed "
            "architecture is width-matched to the parameter target, trained with the protocol's recipe for "
            "every seed (and, with baseline = true, with the same recipe without its adversarial step), "
            "evaluated by an ordinary study file (OUT/study.toml) into OUT/results.sqlite, and tabulated as "
            "'architectures under one protocol' (OUT/one-protocol.md, .json): parameters, clean, PGD and "
            "worst-case accuracy with 95%% intervals, flags, catastrophic overfitting. Running it again "
            "resumes."
        ),
    )
    c.add_argument("protocol", help="a bundled protocol name (one-protocol, cpu-evidence) or a .toml file")
    c.add_argument("--out", help="output folder (default: ./<protocol name>-out)")
    c.add_argument(
        "--path", action="append", metavar="KEY=DIR", help="value of a {KEY} placeholder, repeatable"
    )
    c.add_argument("--architectures", metavar="A,B", help="only these architecture ids")
    c.add_argument("--seeds", metavar="S,T", help="only these seeds")
    c.add_argument("--device", help="training device: cpu, cuda or cuda:N (default: cuda when available)")
    c.add_argument("--dry-run", action="store_true", help="print the width-matched plan and exit")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from robustarch.search.protocol import load_protocol, plan, render_table, run_protocol

    protocol = load_protocol(args.protocol, _paths(args.path))
    seeds = [int(s) for s in _csv(args.seeds) or []]
    protocol = protocol.select(_csv(args.architectures), seeds or None)
    if args.dry_run:
        for job in plan(protocol):
            size = ", ".join(
                f"{k}={v}" for k, v in job.overrides.items() if not isinstance(v, str) or len(v) < 40
            )
            print(
                f"{job.model_id:28s} {job.arch.model:12s} {job.variant:16s} {job.params / 1e6:6.2f}M  {size}"
            )
        return 0
    rows, out = run_protocol(
        protocol, args.out or f"{protocol.name}-out", device=args.device, progress=not args.no_progress
    )
    print(render_table(rows, protocol))
    print(
        f"table: {out / 'one-protocol.md'}; study file: {out / 'study.toml'}; store: {out / 'results.sqlite'}"
    )
    return 0
