"""Start-up cost: CPU seconds (user + sys, of the whole child process) of commands that should answer at
once, and of importing each package; ``robustarch --help`` has a budget of 0.3 CPU-s.

Each command runs ``--repeats`` times as a fresh process; the table gives the minimum and the median (the
minimum is the better estimate on a shared machine: load only adds). ``import torch`` is measured as the
reference for what a command that needs a network cannot avoid.

    python benchmarks/startup.py [--repeats 5] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import compile_sources, cpu_name  # benchmarks/_machine.py (scripts run from this folder)

BUDGETS = {"robustarch --help": 0.3}


def robustarch_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m robustarch``."""
    script = Path(sys.executable).with_name("robustarch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "robustarch"]


def commands() -> dict[str, list[str]]:
    cli = robustarch_command()
    python = [sys.executable, "-c"]
    return {
        "robustarch --help": [*cli, "--help"],
        "robustarch models": [*cli, "models"],
        "robustarch models --dataset imagenet": [*cli, "models", "--dataset", "imagenet"],
        "robustarch report --help": [*cli, "report", "--help"],
        "import robustarch": [*python, "import robustarch"],
        "import robustarch.zoo (+ DATASETS)": [*python, "import robustarch.zoo as z; z.DATASETS"],
        "import robustarch.attacks (+ PRESETS)": [*python, "import robustarch.attacks as a; a.PRESETS"],
        "import robustarch.report": [*python, "import robustarch.report"],
        "import robustarch.runtime (+ tune_allocator)": [
            *python,
            "import robustarch.runtime as r; r.tune_allocator()",
        ],
        "import robustarch.store": [*python, "import robustarch.store"],
        "import torch (reference)": [*python, "import torch"],
    }


def cpu_seconds(argv: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="print the docs/benchmarks.md block")
    args = parser.parse_args()
    compile_sources()
    rows = []
    for label, argv in commands().items():
        times = [cpu_seconds(argv) for _ in range(args.repeats)]
        rows.append((label, min(times), statistics.median(times)))
        print(f"# {label}: min {min(times):.2f} CPU-s, median {statistics.median(times):.2f}", flush=True)
    if not args.markdown:
        return
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}, {platform.machine()}, "
        f"Python {platform.python_version()}, best and median of {args.repeats} fresh processes, load "
        f"average {load}\n"
    )
    print("| command | CPU s (min) | CPU s (median) | budget |")
    print("| --- | ---: | ---: | --- |")
    for label, best, median in rows:
        budget = BUDGETS.get(label)
        verdict = "" if budget is None else f"<= {budget}: {'met' if best <= budget else 'NOT MET'}"
        print(f"| `{label}` | {best:.2f} | {median:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
