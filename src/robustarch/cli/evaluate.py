"""``robustarch evaluate`` (one model, a printed table) and ``robustarch study run|status|show``.

Both build evaluation specs (``robustarch.evaluation.spec``) and run them through the one engine; the
tables are read back from the store.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustarch.errors import RobustarchError

DEFAULT_STORE = "robustarch.sqlite"  # robustarch.store.DEFAULT_STORE, written out: no import at --help


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_evaluate(subparsers)
    _register_study(subparsers)


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser(
        "evaluate",
        help="evaluate one model (zoo, your own factory, any checkpoint) under attacks and print a table",
        description="Clean and adversarial accuracy of one model on one dataset, with reliability checks. "
        "Every number is stored (with per-example outcomes) and the table is read back from the store; "
        "running the same command again resumes. Ctrl-C stops with everything committed kept.",
    )
    m = ev.add_argument_group("model")
    m.add_argument(
        "--model",
        required=True,
        help="a zoo model (robustarch models), or a factory package.module:function (or file.py:function) "
        "returning an nn.Module that maps [0,1] images to logits",
    )
    m.add_argument(
        "--weights",
        default=None,
        help="checkpoint file or URL to load into the model, or a published source of a zoo model "
        "(torchvision, authors, ...: robustarch weights list)",
    )
    m.add_argument(
        "--random-init",
        action="store_true",
        help="evaluate a zoo model's random initialisation on purpose (runs are marked as such); without "
        "it, a zoo model needs --weights",
    )
    m.add_argument(
        "--arch",
        "--model-kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="arch",
        help="architecture override of a zoo model (e.g. --arch width=16) or keyword argument of a factory "
        "(repeatable; values are TOML literals)",
    )
    m.add_argument("--override", action="append", default=[], dest="arch", help=argparse.SUPPRESS)
    m.add_argument("--mean", default=None, help="a factory model's input mean, e.g. 0.4914,0.4822,0.4465")
    m.add_argument("--std", default=None, help="a factory model's input std (normalization put inside)")
    d = ev.add_argument_group("data")
    d.add_argument(
        "--dataset",
        required=True,
        help="dataset id: cifar10, cifar100, cifar10-jpeg, fashion-mnist, imagenet, imagefolder",
    )
    d.add_argument("--data-root", default=None, help="folder holding the dataset")
    d.add_argument("--split", default="test")
    d.add_argument(
        "--limit",
        type=int,
        default=None,
        help="evaluate N examples: the first N, or, where the files are sorted by class (cifar10-jpeg, "
        "ImageNet class folders), N spread evenly over every class (subset spread:N)",
    )
    d.add_argument("--subset", default=None, help="first:N, spread:N, balanced:N[:SEED] or ids:PATH")
    d.add_argument("--image-size", default=None, metavar="S|C,H,W", help="imagefolder: the model's input")
    d.add_argument("--resize", type=int, default=None, help="imagefolder: resize the short side, then crop")
    d.add_argument("--num-classes", type=int, default=None, help="imagefolder: the model's output classes")
    a = ev.add_argument_group("attacks")
    group = a.add_mutually_exclusive_group()
    group.add_argument(
        "--preset", default=None, help="attack preset: paper, paper-defaults or standard (the default)"
    )
    group.add_argument("--attacks", default=None, help="comma-separated attack ids (robustarch attacks list)")
    a.add_argument("--profile", default="standard", help="profile for --attacks: standard or paper")
    a.add_argument("--eps", type=float, default=None, help="budget of every attack (pixels; 8/255 = 0.0314)")
    a.add_argument("--alpha", type=float, default=None, help="step size of every attack that has one")
    a.add_argument("--steps", type=int, default=None, help="iterations of every attack that has them")
    a.add_argument("--restarts", type=int, default=None, help="restarts of every attack that has them")
    a.add_argument(
        "--attack-param",
        action="append",
        default=[],
        metavar="LABEL.KEY=VALUE",
        help="one attack's parameter, e.g. --attack-param pgd.steps=20 (repeatable)",
    )
    r = ev.add_argument_group("running and output")
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument(
        "--dtype",
        default="float32",
        help="float32 (default), bf16 or fp16: autocast for the attacks and forwards (bf16 also on CPU), "
        "with a float32 re-check of --recheck examples per run stored as a flag",
    )
    r.add_argument("--recheck", type=int, default=64, help="examples re-checked in float32 per run")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--store", default=DEFAULT_STORE, help=f"results store file (default {DEFAULT_STORE})")
    r.add_argument("--format", default="table", choices=("table", "json", "csv"), help="stdout format")
    r.add_argument("--no-checks", action="store_true", help="skip the reliability checks")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_evaluate)


def _register_study(subparsers: argparse._SubParsersAction) -> None:
    st = subparsers.add_parser("study", help="run a study file (datasets x models x attacks) into the store")
    sub = st.add_subparsers(dest="study_command", metavar="ACTION", required=True)
    for name, func, helptext in (
        ("run", cmd_study_run, "run what the store lacks (resumable, torchrun-able)"),
        ("status", cmd_study_status, "show what is done"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("study", help="study TOML file, or a preset study name (paper)")
        p.add_argument("--store", default=None, help="results store (default: the study's [study].store)")
        p.add_argument(
            "--path",
            action="append",
            default=[],
            metavar="NAME=DIR",
            help="set a [paths] entry, e.g. --path data=/datasets --path weights=/ckpt",
        )
        p.add_argument("--datasets", default=None, help="only these datasets (comma-separated)")
        p.add_argument("--models", default=None, help="only these model ids (comma-separated)")
        if name == "run":
            p.add_argument("--no-progress", action="store_true")
            p.add_argument(
                "--no-download",
                action="store_true",
                help="fetch no published weights: use the cache (and ROBUSTARCH_WEIGHTS_MIRROR) only",
            )
        p.set_defaults(func=func)
    show = sub.add_parser("show", help="print a preset study file (to copy and edit)")
    show.add_argument("name", help="preset study name (paper)")
    show.set_defaults(func=cmd_study_show)


# -- parsing flags -----------------------------------------------------------------------------------------
def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RobustarchError(f"{flag} expects NAME=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _literal(text: str) -> Any:
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise RobustarchError(f"{flag} expects comma-separated numbers, got {text!r}") from None


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise RobustarchError(f"{flag} must be >= 1, got {value}")


def _attack_params(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in _pairs(items, "--attack-param").items():
        label, dot, param = key.rpartition(".")
        if not dot or not label or not param:
            raise RobustarchError(f"--attack-param expects LABEL.KEY=VALUE (e.g. pgd.steps=20), got {key!r}")
        out.setdefault(label, {})[param] = _literal(value)
    return out


def _image_size(text: str | None) -> Any:
    if text is None:
        return None
    parts = [int(p) for p in text.split(",")]
    return parts[0] if len(parts) == 1 else tuple(parts)


def _weights(text: str | None) -> str | None:
    """``--weights``: a published source name or URL as given, a file as an absolute path."""
    from robustarch.zoo import weights as registry

    if text is None or registry.looks_like_source(text) or registry.is_url(text):
        return text
    return str(Path(text).expanduser().resolve())


def evaluation_spec(args: argparse.Namespace) -> Any:
    """The evaluation spec the ``evaluate`` flags describe, validated before any work."""
    from robustarch.evaluation import (
        AttackOverrides,
        DataRef,
        EvaluationSpec,
        apply_overrides,
        resolve_attacks,
        resolve_device,
    )
    from robustarch.evaluation.api import model_ref

    for flag in ("limit", "batch_size", "steps", "restarts", "num_classes"):
        _positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.data_root and not Path(args.data_root).expanduser().exists():
        raise RobustarchError(f"data root {args.data_root} does not exist")
    weights = _weights(args.weights)
    arch = {k: _literal(v) for k, v in _pairs(args.arch, "--arch").items()}
    ref = model_ref(
        args.model, weights=weights, mean=_floats(args.mean, "--mean"), std=_floats(args.std, "--std"),
        random_init=args.random_init, arch=arch,
    )  # fmt: skip
    options = {
        k: v
        for k, v in (("image_size", _image_size(args.image_size)), ("resize", args.resize))
        if v is not None
    }
    data = DataRef(
        args.dataset, args.data_root, args.split, args.limit, args.subset, tuple(sorted(options.items())),
        num_classes=args.num_classes,
    )  # fmt: skip
    if args.attacks:
        entries: list[Any] = [(n, {"profile": args.profile}) for n in _csv(args.attacks) or []]
    else:
        entries = [f"preset:{args.preset or 'standard'}"]
    overrides = AttackOverrides(
        args.eps, args.alpha, args.steps, args.restarts, _attack_params(args.attack_param)
    )
    from robustarch import data as rdata

    if args.dataset not in rdata.list_datasets():
        from robustarch.errors import UnknownNameError

        raise UnknownNameError("dataset", args.dataset, rdata.list_datasets())
    ref.validate(data.budget_dataset)
    plans = apply_overrides(resolve_attacks(entries, data.budget_dataset), overrides)
    resolve_device(args.device)
    return EvaluationSpec(
        ref, data, tuple(plans), args.batch_size, args.device, args.dtype, args.seed, not args.no_checks,
        args.recheck, store=str(Path(args.store).expanduser()),
    )  # fmt: skip


# -- commands ----------------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from robustarch.evaluation.runner import run_specs

    spec = evaluation_spec(args)
    run_ids = run_specs([spec], spec.store, progress=not args.no_progress)
    _print_results(spec.store, run_ids, args.format, grid=False)
    return 0


def _print_results(store: str, run_ids: Sequence[str], fmt: str, *, grid: bool) -> None:
    from robustarch.evaluation.tables import FORMATTERS, format_contributions, format_grid
    from robustarch.store import Store

    with Store(store) as s:
        results = [s.result(r) for r in dict.fromkeys(run_ids)]
        cascades = format_contributions(s, results) if fmt == "table" else ""
    print(format_grid(results) if grid and fmt == "table" else FORMATTERS[fmt](results))
    if cascades:
        print(cascades)
    print(f"\nstored in {store} ({len(results)} runs)", file=sys.stderr if fmt != "table" else sys.stdout)


def _study(args: argparse.Namespace) -> Any:
    from robustarch.evaluation.study import load_study

    study = load_study(args.study, paths=_pairs(args.path, "--path"))
    return study.select(_csv(args.datasets), _csv(args.models))


def cmd_study_run(args: argparse.Namespace) -> int:
    from robustarch.evaluation.distributed import env_int
    from robustarch.evaluation.study import run_study

    study = _study(args)
    store = args.store or study.store
    run_ids = run_study(study, store, progress=not args.no_progress, download=not args.no_download)
    if env_int("RANK", 0) == 0:
        _print_results(store, run_ids, "table", grid=True)
    return 0


def cmd_study_status(args: argparse.Namespace) -> int:
    from robustarch.evaluation.study import study_status

    study = _study(args)
    rows = study_status(study, args.store)
    width = max([len(f"{r.dataset}/{r.model}") for r in rows] + [10])
    print(f"{'dataset/model':<{width}}  {'attack':<14} {'chunks':>11}  state     run_id")
    for r in rows:
        state = "complete" if r.complete else ("partial" if r.done else "missing")
        print(
            f"{r.dataset + '/' + r.model:<{width}}  {r.attack:<14} {r.done:>5}/{r.chunks:<5}  {state:<9} "
            f"{r.run_id}"
        )
    n_done = sum(r.complete for r in rows)
    print(f"\n{n_done}/{len(rows)} runs complete")
    return 0


def cmd_study_show(args: argparse.Namespace) -> int:
    from robustarch.evaluation.study import preset_study_path

    sys.stdout.write(preset_study_path(args.name).read_text())
    return 0
