"""Cost of the results store's hot path and of its integrity checks on a realistic store.

Builds a fresh store of ``--runs`` runs x ``--examples`` examples committed in chunks of ``--chunk-size``
(the engine's chunk = its batch), timing every ``Store.commit_chunk`` (wall and CPU time of this process),
then times what reads the whole store: opening it (SQLite's ``PRAGMA integrity_check``, ``docs/store.md``),
``Store.check_runs()`` (every chunk against its plan and digest) and ``Store.results()`` (the aggregates a
report reads). CPU time is the steadier number on a shared machine; the load average is printed.

    python benchmarks/store.py [--runs 100] [--examples 10000] [--chunk-size 100] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from robustarch.store import ExampleOutcome, RunKey, Store

try:  # run as a script from the repository root, or imported by a test
    from _machine import cpu_name
except ImportError:  # pragma: no cover
    from benchmarks._machine import cpu_name


def run_key(i: int, n: int, chunk_size: int) -> RunKey:
    return RunKey(
        dataset="cifar10",
        dataset_label="CIFAR-10",
        subset=f"first:{n}",
        model=f"model{i}",
        model_family="handcrafted",
        method="ResNet",
        params_count=11_173_962,
        weights_hash=f"{i:08x}",
        attack="pgd",
        attack_params={"eps": 8 / 255, "alpha": 2 / 255, "steps": 10},
        profile="standard",
        seed=0,
        dtype="float32",
        device="cpu",
        n_planned=n,
        chunk_size=chunk_size,
    )


def outcomes(n: int, seed: int) -> list[ExampleOutcome]:
    """Plausible per-example outcomes (about 90% clean, 50% adversarial accuracy)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 10, n)
    clean = np.where(rng.random(n) < 0.9, label, rng.integers(0, 10, n))
    adv = np.where(rng.random(n) < 0.5, label, rng.integers(0, 10, n))
    linf, l2 = rng.random(n) * 8 / 255, rng.random(n)
    return [
        ExampleOutcome(i, int(y), int(c), bool(c == y), True, int(a), bool(a == y), True, float(d), float(e))
        for i, (y, c, a, d, e) in enumerate(zip(label, clean, adv, linf, l2, strict=True))
    ]


def fill(path: Path, runs: int, n: int, chunk_size: int) -> tuple[list[float], list[float]]:
    """Commit every chunk of every run; returns the wall and CPU seconds of each commit."""
    wall, cpu = [], []
    with Store(path) as store:
        for i in range(runs):
            key = run_key(i, n, chunk_size)
            run_id = store.begin_run(key, {})
            outs = outcomes(n, i)
            for c in range(key.n_chunks):
                a, b = key.chunk_bounds(c)
                w0, c0 = time.perf_counter(), time.process_time()
                store.commit_chunk(run_id, c, outs[a:b], seconds=0.1)
                wall.append(time.perf_counter() - w0)
                cpu.append(time.process_time() - c0)
            store.finish_run(run_id)
    return wall, cpu


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def measure(runs: int, n: int, chunk_size: int) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite"
        wall, cpu = fill(path, runs, n, chunk_size)
        us = 1e6
        rows.append(
            (
                f"commit_chunk ({len(wall)} commits of {chunk_size} examples)",
                f"median {statistics.median(wall) * us:,.0f} us, p90 "
                f"{statistics.quantiles(wall, n=10)[-1] * us:,.0f} us",
                f"median {statistics.median(cpu) * us:,.0f} us, mean {statistics.fmean(cpu) * us:,.0f} us",
            )
        )
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        rows.append(("store files", f"{size / 2**20:,.1f} MiB", ""))

        def reopen(**kw: Any) -> None:
            Store(path, **kw).close()

        steps: list[tuple[str, Callable[[], Any]]] = [
            ("open, no check (check=False)", lambda: reopen(check=False)),
            ("open with PRAGMA integrity_check (default)", reopen),
            ("results(check=False) (all runs' aggregates)", lambda: Store(path).results(check=False)),
            ("results() (the same, with its checks)", lambda: Store(path).results()),
            ("check_runs() (every chunk: rows, bounds, ids, digest)", lambda: Store(path).check_runs()),
        ]
        if not hasattr(Store, "check_runs"):  # the store before its integrity checks (baseline)
            steps = [("open", reopen), ("results() (all runs' aggregates)", lambda: Store(path).results())]
        for label, fn in steps:
            w, c = timed(fn)
            rows.append((label, f"{w:.3f} s", f"{c:.3f} s"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--examples", type=int, default=10_000, help="examples per run")
    ap.add_argument("--chunk-size", type=int, default=100)
    ap.add_argument("--markdown", action="store_true", help="print a markdown table for docs/store.md")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    rows = measure(args.runs, args.examples, args.chunk_size)
    header = (
        f"CPU: {cpu_name()}; {args.runs} runs x {args.examples:,} examples, chunks of {args.chunk_size}; "
        f"load average before/after {load0:.1f}/{os.getloadavg()[0]:.1f}"
    )
    print(header + ("\n" if args.markdown else ""))
    if args.markdown:
        print("| step | wall | CPU |\n| --- | ---: | ---: |")
        for step, w, c in rows:
            print(f"| {step} | {w} | {c} |")
    else:
        for step, w, c in rows:
            print(f"{step:<58} {w:>32} {c:>32}")


if __name__ == "__main__":
    main()
