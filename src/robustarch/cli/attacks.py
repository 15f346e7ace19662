"""``robustarch attacks list`` and ``robustarch attacks bench`` (robustarch's own entry point for timing an
attack: builds the zoo model, prepares it for fast evaluation, times the attack, prints images/s)."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

from robustarch.errors import RobustarchError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("attacks", help="list attacks and presets; time an attack")
    sub = parser.add_subparsers(dest="attacks_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    lst = sub.add_parser("list", help="registered attacks, their profiles and default parameters")
    lst.add_argument(
        "--preset",
        help="show the attacks of a preset instead (paper, paper-defaults, standard, explain, autoattack, "
        "autoattack-l2, autoattack-rand, autoattack-rand-l2)",
    )
    lst.add_argument(
        "--dataset",
        default=None,
        help="dataset for the 'standard', 'explain' and 'autoattack*' presets (sets the budget)",
    )
    lst.set_defaults(func=_list)

    bench = sub.add_parser("bench", help="time an attack on a zoo model (images/s)")
    bench.add_argument("--model", default="resnet18")
    bench.add_argument("--dataset", default="cifar10")
    bench.add_argument(
        "--weights", default=None, help="checkpoint for the model (default: seeded random init)"
    )
    bench.add_argument("--attack", default="pgd")
    bench.add_argument("--profile", default="standard", choices=("paper", "standard"))
    bench.add_argument("--eps", type=float, default=None)
    bench.add_argument("--alpha", type=float, default=None)
    bench.add_argument("--steps", type=int, default=None)
    bench.add_argument("--random-start", default=None, choices=("true", "false"))
    bench.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other parameter of the attack, e.g. --param early_stop=false (TOML literals; repeatable)",
    )
    bench.add_argument("--batch-size", type=int, default=128)
    bench.add_argument("--repeats", type=int, default=3, help="timed runs of the attack on the batch")
    bench.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    bench.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    bench.add_argument("--seed", type=int, default=0, help="seed of the model init, the batch and the attack")
    bench.add_argument("--no-prepare", action="store_true", help="attack the model as loaded (no BN folding)")
    bench.add_argument("--floor", action="store_true", help="also time steps x (fwd+bwd) + one forward")
    bench.add_argument(
        "--save-adv", default=None, help="save the adversarial batch (torch.save) to this path"
    )
    bench.add_argument("--json", action="store_true", help="print one JSON line with the measurements")
    bench.set_defaults(func=_bench)


def _list(args: argparse.Namespace) -> int:
    from robustarch.attacks import attack_profiles, list_attacks, preset
    from robustarch.attacks._registry import attack_class

    if args.preset:
        for key, attack in preset(args.preset, args.dataset).items():
            print(f"{key:14s} {attack!r}")
        return 0
    for name in list_attacks():
        cls = attack_class(name)
        for profile in attack_profiles(name):
            params = ", ".join(
                f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in cls.defaults[profile].items()
            )
            print(f"{name:10s} {profile:8s} {params}")
        print(f"{'':10s} {'':8s} {cls.paper}")
    return 0


def _median_spread(times: list[float]) -> tuple[float, float, float]:
    return statistics.median(times), min(times), max(times)


def _bench(args: argparse.Namespace) -> int:
    import torch

    from robustarch import zoo
    from robustarch.attacks import create
    from robustarch.runtime import prepare_for_attack, tune_allocator
    from robustarch.zoo._registry import dataset_shape

    tuned = tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        raise RobustarchError("--batch-size and --repeats must be >= 1, --warmup >= 0")
    params: dict[str, Any] = {}
    for key in ("eps", "alpha", "steps"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if args.random_start is not None:
        params["random_start"] = args.random_start == "true"
    from robustarch.cli.evaluate import _literal, _pairs

    params.update({k: _literal(v) for k, v in _pairs(args.param, "--param").items()})
    attack = create(args.attack, args.profile, **params)

    torch.manual_seed(args.seed)
    model = zoo.load(args.model, args.dataset, weights=args.weights)
    shape = dataset_shape(args.dataset)
    gen = torch.Generator().manual_seed(args.seed)
    size = shape.input_size
    x = torch.rand(args.batch_size, shape.in_channels, size, size, generator=gen)
    with torch.no_grad():
        # labels = the model's own predictions: every example starts correctly classified, so attacks that
        # skip misclassified examples (APGD, Square) do their full work and the timing is comparable
        y = model(x).argmax(1)

    info = None
    target = model
    if not args.no_prepare:
        target, info = prepare_for_attack(model, x)

    def once() -> Any:
        return attack(target, x, y, generator=torch.Generator().manual_seed(args.seed))

    for _ in range(args.warmup):
        once()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        adv = once()
        times.append(time.perf_counter() - t0)
    med, lo, hi = _median_spread(times)
    with torch.no_grad():
        acc = float((model(adv).argmax(1) == y).float().mean())
    out: dict[str, Any] = {
        "impl": "robustarch",
        "attack": args.attack,
        "profile": args.profile,
        "params": {k: v for k, v in attack.params.items() if k not in ("mean", "std")},
        "model": args.model,
        "dataset": args.dataset,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "allocator_tuned": tuned,
        "prepared": None if info is None else info.as_dict(),
        "seconds": times,
        "img_per_s": args.batch_size / med,
        "img_per_s_min": args.batch_size / hi,
        "img_per_s_max": args.batch_size / lo,
        "adv_accuracy": acc,
        "cpu": _cpu_name(),
        "torch": torch.__version__,
    }
    if args.floor:
        out["floor_seconds"] = floor_seconds(target, x, y, _gradient_steps(attack), args.repeats)
    if args.save_adv:
        torch.save(adv, args.save_adv)
    print(
        f"{args.attack} ({args.profile}) on {args.model}/{args.dataset}, batch {args.batch_size}, "
        f"{out['threads']} threads, allocator tuned: {tuned}, prepared: {info}"
    )
    print(
        f"  {out['img_per_s']:.2f} img/s (median of {args.repeats}; {out['img_per_s_min']:.2f}-"
        f"{out['img_per_s_max']:.2f}), adversarial accuracy {acc:.3f}"
    )
    if args.floor:
        print(f"  floor (steps x fwd+bwd + fwd): {args.batch_size / out['floor_seconds']:.2f} img/s")
    if args.json:
        print(json.dumps(out))
    return 0


def _gradient_steps(attack: Any) -> int:
    """Input-gradient evaluations an attack makes per example (for the floor), as its class declares."""
    passes = attack.traits.gradient_passes
    if not passes:
        raise RobustarchError(
            f"{attack.name} makes no gradient passes (forward passes only): no floor to time"
        )
    return passes


def floor_seconds(model: Any, x: Any, y: Any, steps: int, repeats: int = 3) -> float:
    """Median time of ``steps`` forward+backward passes to the input plus one forward: what any attack making
    ``steps`` gradient evaluations must spend at least."""
    import torch
    import torch.nn.functional as F

    def once() -> None:
        for _ in range(steps):
            xx = x.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xx), y), xx)
        with torch.no_grad():
            model(x)

    once()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
