"""``robustarch data``: list datasets, check a copy on disk, build / list / clear the tensor cache."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from robustarch.errors import RobustarchError


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset id (robustarch data list)")
    p.add_argument(
        "--data-root",
        dest="root",
        help="folder holding the files (fashion-mnist: /usr/share/datasets/fashion-mnist)",
    )
    p.add_argument("--root", dest="root", help=argparse.SUPPRESS)  # the name this flag had before 0.2
    p.add_argument("--no-verify", action="store_true", help="skip the md5 check of CIFAR files")
    p.add_argument(
        "--md5",
        metavar="JSON",
        help="md5 table to check against instead of the official one, e.g. "
        '\'{"test_batch": "..."}\' or a JSON file',
    )
    p.add_argument("--ground-truth", metavar="FILE", help="ImageNet flat layout: ground-truth file")
    p.add_argument("--image-size", metavar="S|C,H,W", help="imagefolder: size of the model input")
    p.add_argument(
        "--resize", type=int, help="imagefolder: resize the shorter side to this, then center-crop"
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="a copy holding fewer examples per class than the published split is a warning, not an error",
    )
    p.add_argument("--download", action="store_true", help="CIFAR: fetch the official archive if absent")
    p.add_argument("--threads", type=int, help="decoding threads (default: the CPUs available, at most 16)")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    md5 = None
    if args.md5:
        text = Path(args.md5).read_text() if os.path.isfile(args.md5) else args.md5
        try:
            md5 = json.loads(text)
        except ValueError as err:
            raise RobustarchError(f"--md5 is neither a JSON object nor a JSON file: {err}") from None
    size = None
    if args.image_size:
        parts = [int(s) for s in args.image_size.replace("x", ",").split(",")]
        size = parts[0] if len(parts) == 1 else tuple(parts)
    opts: dict[str, Any] = {
        "verify": not args.no_verify,
        "md5": md5,
        "allow_partial": args.allow_partial,
        "download": args.download,
    }
    if args.ground_truth:
        opts["ground_truth"] = args.ground_truth
    if args.dataset == "imagefolder":
        opts.update(image_size=size, resize=args.resize)
    elif size is not None or args.resize is not None:
        raise RobustarchError("--image-size / --resize apply to imagefolder only (other datasets fix them)")
    return opts


def _cmd_list(args: argparse.Namespace) -> int:
    from robustarch.data import DATASET_INFO

    print(f"{'dataset':<14} {'label':<22} {'classes':>7} {'input (C,H,W)':<15} splits (examples per class)")
    for info in DATASET_INFO.values():
        splits = (
            ", ".join(f"{s} ({n if n is not None else 'varies'})" for s, n in info.per_class.items()) or "any"
        )
        size = ",".join(map(str, info.image_size)) if info.image_size else "given"
        print(f"{info.name:<14} {info.label:<22} {info.num_classes or 'folders':>7} {size:<15} {splits}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from robustarch.data.check import check

    report = check(
        args.dataset,
        args.root,
        args.split or None,
        decode=args.decode,
        threads=args.threads,
        **_options(args),
    )
    spec = report.spec
    print(
        f"{spec.name}: {spec.label}, {spec.num_classes} classes, input {spec.image_size}, "
        f"preprocessing {spec.preprocessing}"
    )
    print(f"root: {spec.root}")
    for s in report.splits:
        counts = sorted(set(s.class_counts))
        per = str(counts[0]) if len(counts) == 1 else f"{min(counts)}..{max(counts)}"
        decoded = f", decoded {s.decoded} images" if s.decoded is not None else ""
        print(f"  {s.split}: {s.n} examples, {per} per class; {s.checksums}{decoded} ({s.seconds:.1f} s)")
        if args.counts:
            for name, n in zip(spec.class_names, s.class_counts, strict=True):
                print(f"    {n:>6}  {name}")
    for split, why in report.missing.items():
        print(f"  {split}: absent ({why})")
    print("ok")
    return 0


def _cmd_cache_build(args: argparse.Namespace) -> int:
    import time

    from robustarch.data import load

    t0 = time.perf_counter()
    ds, spec = load(
        args.dataset,
        args.root,
        args.split,
        limit=args.limit,
        subset=args.subset,
        cache=Path(args.cache_dir) if args.cache_dir else True,
        threads=args.threads,
        progress=True,
        **_options(args),
    )
    print(
        f"cached {spec.n} images of {spec.label} ({spec.split}, subset {spec.subset}) as uint8 "
        f"{tuple(ds.uint8().shape)} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _cmd_cache_list(args: argparse.Namespace) -> int:
    from robustarch.data import cache

    entries = cache.list_entries(args.cache_dir)
    print(f"cache folder: {args.cache_dir or cache.default_cache_dir()}")
    for e in entries:
        if "problem" in e:
            print(
                f"  {Path(e['folder']).name}: {e['problem']} (rebuilt on next use; `cache clear` removes it)"
            )
            continue
        f = e.get("fields", {})
        print(
            f"  {Path(e['folder']).name}: {f.get('dataset')} {f.get('split')} subset {f.get('subset')}, "
            f"{e['n']} x {tuple(e['image_size'])}, {e['bytes'] / 2**20:.1f} MiB, built {e.get('created')}"
        )
    if not entries:
        print("  (empty)")
    return 0


def _cmd_cache_clear(args: argparse.Namespace) -> int:
    from robustarch.data import cache

    print(f"removed {cache.clear(args.cache_dir)} cache entries")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data", help="datasets: list, check a copy on disk, preprocessed-tensor cache"
    )
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    data.set_defaults(func=lambda args: data.print_help() or 2)

    p = sub.add_parser("list", help="dataset ids, labels, shapes and published split sizes")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "check", help="check layout, checksums and class counts (--decode: decode every image)"
    )
    _add_source_args(p)
    p.add_argument("--split", action="append", help="split(s) to check (default: all present)")
    p.add_argument("--decode", action="store_true", help="also decode every image (finds corrupt files)")
    p.add_argument("--counts", action="store_true", help="print the count of every class")
    p.set_defaults(func=_cmd_check)

    cache = sub.add_parser("cache", help="the memory-mapped uint8 cache of preprocessed images")
    csub = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    cache.set_defaults(func=lambda args: cache.print_help() or 2)
    p = csub.add_parser(
        "build", help="decode and preprocess once into the cache (reused by every model/attack)"
    )
    _add_source_args(p)
    p.add_argument("--split", default="test")
    p.add_argument("--subset", help="all | first:N | balanced:N[:SEED] | ids:FILE")
    p.add_argument("--limit", type=int)
    p.add_argument("--cache-dir", help="default: $ROBUSTARCH_CACHE or ~/.cache/robustarch/data")
    p.set_defaults(func=_cmd_cache_build)
    for name, func, text in (
        ("list", _cmd_cache_list, "list cache entries"),
        ("clear", _cmd_cache_clear, "remove every cache entry"),
    ):
        p = csub.add_parser(name, help=text)
        p.add_argument("--cache-dir", help="default: $ROBUSTARCH_CACHE or ~/.cache/robustarch/data")
        p.set_defaults(func=func)
