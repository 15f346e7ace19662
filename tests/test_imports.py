"""Light imports: the packages re-export their names lazily (PEP 562), so ``import robustarch`` and the
tables that need no torch (datasets, attack presets, the paper's numbers) cost no torch, numpy or
matplotlib import, and ``robustarch --help`` none either. (Its CPU time is a benchmark line:
``benchmarks/startup.py``; here only what gets imported is tested.)"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

LAZY_PACKAGES = ["robustarch.attacks", "robustarch.report", "robustarch.runtime", "robustarch.zoo"]
HEAVY = ("torch", "numpy", "matplotlib")

# what each package offers without importing torch, numpy or matplotlib
LIGHT_READS = {
    "robustarch": "robustarch.__version__",
    "robustarch.attacks": "robustarch.attacks.PRESETS, robustarch.attacks.PROFILES",
    "robustarch.report": "robustarch.report.paper_values",
    "robustarch.runtime": "robustarch.runtime.tune_allocator()",
    "robustarch.store": "robustarch.store.Store",
    "robustarch.zoo": "robustarch.zoo.dataset_shape('cifar10'), robustarch.zoo.DATASETS",
    "robustarch.cli": "robustarch.cli.build_parser().format_help()",
}


def _heavy_modules_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("package", list(LIGHT_READS))
def test_light_reads_import_no_torch(package: str) -> None:
    assert _heavy_modules_after(f"import {package}\n{LIGHT_READS[package]}") == []


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


def test_subpackages_are_reachable_from_a_plain_import() -> None:
    import robustarch

    assert robustarch.zoo is importlib.import_module("robustarch.zoo")
    assert robustarch.runtime.prepare.RTOL == robustarch.runtime.RTOL  # a submodule through the package
    with pytest.raises(AttributeError):
        robustarch.no_such_package  # noqa: B018
