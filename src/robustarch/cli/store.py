"""``robustarch store``: check a results store, repair damaged runs, salvage a damaged file."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    store = subparsers.add_parser(
        "store",
        help="results store: check it, repair damaged runs, salvage a damaged file",
        description="Integrity of a results store (docs/store.md, 'Integrity'). A study run against a "
        "repaired or salvaged store computes exactly the chunks that were removed.",
    )
    sub = store.add_subparsers(dest="store_command", metavar="ACTION")
    store.set_defaults(func=lambda args: store.print_help() or 2)

    p = sub.add_parser(
        "check",
        help="SQLite's check of every page, then every run against its plan (exit 1 when damaged)",
    )
    p.add_argument("store", help="results store file")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser(
        "repair",
        help="delete the damaged chunks of runs (and clear their complete mark and flags)",
    )
    p.add_argument("store", help="results store file")
    p.add_argument("--run", action="append", metavar="RUN_ID", help="only this run (repeatable)")
    p.set_defaults(func=_cmd_repair)

    p = sub.add_parser(
        "salvage",
        help="copy the intact runs and chunks of a damaged file into a new store",
        description="For a file whose pages SQLite finds damaged: reads it (never writes it) and copies "
        "every chunk that passes the checks into a new store. Without --to, the new store takes the "
        "file's place and the damaged file is kept as STORE.damaged-TIMESTAMP.",
    )
    p.add_argument("store", help="the damaged results store file")
    p.add_argument("--to", metavar="NEW", help="write the new store here and leave STORE where it is")
    p.set_defaults(func=_cmd_salvage)


def _existing(path: str) -> str:
    from robustarch.errors import RobustarchError

    if not Path(path).is_file():
        raise RobustarchError(f"no store file {path}")
    return path


def _cmd_check(args: argparse.Namespace) -> int:
    from robustarch.store import Store

    with Store(_existing(args.store), check=False) as store:
        problems = store.check_file()
        if problems:
            print(f"{args.store}: SQLite's check of the file's pages failed:")
            for line in problems:
                print(f"  {line}")
            print(f"Copy what is intact into a new store: robustarch store salvage {args.store}")
            return 1
        damaged = store.check_runs()
        n_runs = len(store.results(check=False))
    print(f"{args.store}: pages ok; {n_runs - len(damaged)} of {n_runs} runs match their plan")
    for d in damaged:
        print(f"  damaged: {d.describe()}")
    if damaged:
        print(f"Remove the damaged chunks (a study run redoes them): robustarch store repair {args.store}")
    return 1 if damaged else 0


def _cmd_repair(args: argparse.Namespace) -> int:
    from robustarch.store import Store

    with Store(_existing(args.store)) as store:
        repaired = [d for run in (args.run or [None]) for d in store.repair(run)]
    if not repaired:
        print(f"{args.store}: nothing damaged")
        return 0
    for d in repaired:
        print(f"repaired {d.describe()}")
    print("Run the study again: it computes the removed chunks and marks the runs complete.")
    return 0


def _cmd_salvage(args: argparse.Namespace) -> int:
    from robustarch.store import salvage

    source = Path(args.store)
    target = Path(args.to) if args.to else source.with_name(source.name + ".salvaged")
    left = salvage(source, target)
    if not args.to:
        kept = source.with_name(f"{source.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):  # the damaged file with its write-ahead log, as it was
            if Path(f"{source}{suffix}").exists():
                os.replace(f"{source}{suffix}", f"{kept}{suffix}")
        os.replace(target, source)
        print(f"kept the damaged file as {kept}")
        target = source
    print(f"wrote {target}: the runs and chunks of the damaged file that passed the checks")
    for d in left:
        print(f"  left behind: {d.describe()}")
    if left:
        print("Run the study against it again: it computes what was left behind.")
    return 0
