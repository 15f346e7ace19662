"""``robustarch evaluate`` (one model, a printed table) and ``robustarch study run|status|show``."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustarch.errors import RobustarchError
from robustarch.store import DEFAULT_STORE, RunResult, Store


def register(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser(
        "evaluate",
        help="evaluate one model under attacks and print a table (results go to the store)",
        description="Clean and adversarial accuracy of one model on one dataset; every number is stored "
        "(with per-example outcomes) and the table is read back from the store.",
    )
    ev.add_argument("--model", required=True, help="zoo model name (robustarch models)")
    ev.add_argument(
        "--dataset", required=True, help="dataset id (cifar10, cifar100, cifar10-jpeg, imagenet, ...)"
    )
    ev.add_argument("--data-root", default=None, help="folder holding the dataset")
    ev.add_argument(
        "--weights", default=None, help="checkpoint file (default: the seeded random initialisation)"
    )
    group = ev.add_mutually_exclusive_group()
    group.add_argument("--preset", default=None, help="attack preset: paper, paper-defaults or standard")
    group.add_argument("--attacks", default=None, help="comma-separated attack ids (with --profile)")
    ev.add_argument("--profile", default="standard", help="profile for --attacks: paper or standard")
    ev.add_argument(
        "--limit",
        type=int,
        default=None,
        help="evaluate the first N examples (where the files are sorted by class, as in cifar10-jpeg, "
        "these are one class: use --subset balanced:N)",
    )
    ev.add_argument("--subset", default=None, help="subset: first:N, balanced:N[:SEED], ids:PATH")
    ev.add_argument("--split", default="test")
    ev.add_argument("--batch-size", type=int, default=128)
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ev.add_argument("--dtype", default="float32", help="float32 (default), amp-bfloat16 or amp-float16")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--store", default=DEFAULT_STORE, help=f"results store file (default {DEFAULT_STORE})")
    ev.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture override, e.g. --override C=16 (repeatable)",
    )
    ev.add_argument("--no-checks", action="store_true", help="skip the reliability checks")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=cmd_evaluate)

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
        p.set_defaults(func=func)
    show = sub.add_parser("show", help="print a preset study file (to copy and edit)")
    show.add_argument("name", help="preset study name (paper)")
    show.set_defaults(func=cmd_study_show)


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


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise RobustarchError(f"{flag} must be >= 1, got {value}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from robustarch.evaluation.study import Study, StudyDataset, StudyModel, run_study

    _positive(args.limit, "--limit")
    _positive(args.batch_size, "--batch-size")
    if args.preset:
        entries = [f"preset:{args.preset}"]
        defs: dict[str, dict[str, Any]] = {}
    else:
        names = _csv(args.attacks) or []
        defs = {n: {"attack": n, "profile": args.profile} for n in names}
        entries = names
    overrides = {k: _literal(v) for k, v in _pairs(args.override, "--override").items()}
    weights = str(Path(args.weights).expanduser().resolve()) if args.weights else None
    if weights and not Path(weights).is_file():
        raise RobustarchError(f"weights file {weights} does not exist")
    if args.data_root and not Path(args.data_root).expanduser().exists():
        raise RobustarchError(f"data root {args.data_root} does not exist")
    store = Path(args.store).expanduser()
    study = Study(
        Path("evaluate"),
        "evaluate",
        str(store),
        args.device,
        args.batch_size,
        args.seed,
        args.dtype,
        not args.no_checks,
        64,
        [],
        defs,
    )
    ds = StudyDataset(
        args.dataset,
        args.data_root,
        args.split,
        args.limit,
        args.subset,
        entries,
        [StudyModel(args.model, args.model, weights, overrides)],
    )
    study.datasets = [ds]
    _validate_direct(study)
    run_ids = run_study(study, progress=not args.no_progress)
    with Store(store) as s:
        results = [s.result(r) for r in dict.fromkeys(run_ids)]
    print(format_results(results))
    print(f"\nstored in {store} ({len(results)} runs)")
    return 0


def _validate_direct(study: Any) -> None:
    """The checks load_study makes, for a study built from flags (evaluate)."""
    from robustarch import zoo
    from robustarch.evaluation.engine import DTYPES, resolve_device

    ds = study.datasets[0]
    from robustarch import data as rdata

    if ds.name not in rdata.list_datasets():
        from robustarch.errors import UnknownNameError

        raise UnknownNameError("dataset", ds.name, rdata.list_datasets())
    zoo.get_spec(ds.models[0].name, ds.name)
    zoo.build_kwargs(ds.models[0].name, ds.name, **ds.models[0].overrides)
    if study.dtype not in DTYPES:
        raise RobustarchError(f"--dtype must be one of {', '.join(DTYPES)}, got {study.dtype!r}")
    resolve_device(study.device)
    study.attack_plans(ds)


def _study(args: argparse.Namespace) -> Any:
    from robustarch.evaluation.study import load_study

    study = load_study(args.study, paths=_pairs(args.path, "--path"))
    return study.select(_csv(args.datasets), _csv(args.models))


def cmd_study_run(args: argparse.Namespace) -> int:
    from robustarch.evaluation.distributed import _env_int
    from robustarch.evaluation.study import run_study

    study = _study(args)
    store = args.store or study.store
    run_ids = run_study(study, store, progress=not args.no_progress)
    if _env_int("RANK", 0) == 0:
        with Store(store) as s:
            results = [s.result(r) for r in dict.fromkeys(run_ids)]
        print(format_grid(results))
        print(f"\nstored in {store} ({len(results)} runs)")
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


# -- tables (read from the store) ------------------------------------------------------------------------
def _pct(x: float) -> str:
    return "  n/a" if math.isnan(x) else f"{100 * x:5.2f}"


def _flags(r: RunResult) -> str:
    bad = [f"{f.check}:{f.status}" for f in r.flags if f.status != "ok"]
    return ", ".join(bad) if bad else ("ok" if r.flags else "-")


def format_results(results: Sequence[RunResult]) -> str:
    """One row per run: accuracies (%) with 95% Wilson intervals, realized L-inf, flags."""
    head = (
        f"{'model':<14} {'attack':<10} {'profile':<8} {'eps':>8} {'n':>6}  {'top-1 %':>7} {'95% CI':>13}  "
        f"{'top-5 %':>7}  {'Linf max':>9}  flags"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        clean = r.attack == "clean"
        acc1, ci, acc5 = (
            (r.clean_top1, r.clean_top1_ci, r.clean_top5)
            if clean
            else (r.adv_top1, r.adv_top1_ci, r.adv_top5)
        )
        label = r.meta.get("label", r.attack)
        eps = r.attack_params.get("eps")
        lines.append(
            f"{r.model:<14} {label:<10} {r.profile:<8} {'' if eps is None else f'{eps:.4g}':>8} {r.n:>6}  "
            f"{_pct(acc1):>7} {_pct(ci[0]).strip() + '-' + _pct(ci[1]).strip():>13}  {_pct(acc5):>7}  "
            f"{r.linf_max * 255:>6.2f}/255  {_flags(r)}"
        )
    return "\n".join(lines)


def format_grid(results: Sequence[RunResult]) -> str:
    """Per dataset: models as rows, attacks as columns (top-1 %), as the paper's tables."""
    out = []
    for dataset in dict.fromkeys(r.dataset for r in results):
        rows = [r for r in results if r.dataset == dataset]
        labels = list(dict.fromkeys(r.meta.get("label", r.attack) for r in rows))
        models = list(dict.fromkeys(r.model for r in rows))
        cell = {(r.model, r.meta.get("label", r.attack)): r for r in rows}
        label = rows[0].dataset_label
        out.append(f"{label} ({rows[0].subset}, top-1 %)")
        out.append(f"{'model':<16}" + "".join(f"{lab:>11}" for lab in labels))
        for m in models:
            vals = []
            for lab in labels:
                r = cell.get((m, lab))
                vals.append("" if r is None else _pct(r.clean_top1 if r.attack == "clean" else r.adv_top1))
            out.append(f"{m:<16}" + "".join(f"{v:>11}" for v in vals))
        out.append("")
    return "\n".join(out).rstrip()
