"""robustarch: adversarial robustness of handcrafted and NAS-found architectures.

Reproduces and extends Devaguptapu et al., "On Adversarial Robustness: A Neural Architecture Search
perspective" (the study in ``../shared/seed``): a model zoo (``robustarch.zoo``), the study's attacks
(``robustarch.attacks``), datasets (``robustarch.data``), an evaluation engine with a crash-safe store
(``robustarch.evaluation``, ``robustarch.store``), reports (``robustarch.report``) and training
(``robustarch.train``). Any model in one call:

>>> import robustarch
>>> robustarch.evaluate(model, (x, y), preset="standard", mean=MEAN, std=STD).table()
>>> robustarch.benchmark(model, "cifar10", "~/data/cifar10", n_examples=1000)  # (clean, robust)

``import robustarch`` imports none of them (nor torch): each subpackage, and ``evaluate`` / ``benchmark``,
is imported when first read, e.g. ``robustarch.zoo.load(...)`` after a plain ``import robustarch``.
"""

import importlib
import logging
from typing import Any

__version__ = "0.2.0.dev0"

SUBMODULES = ("attacks", "data", "errors", "evaluation", "report", "runtime", "store", "train", "zoo")

logging.getLogger(__name__).addHandler(logging.NullHandler())

# the one-call API, from robustarch.evaluation.api
FUNCTIONS = ("evaluate", "benchmark")


def __getattr__(name: str) -> Any:  # PEP 562: import a subpackage (or the API) on first use
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in FUNCTIONS:
        return getattr(importlib.import_module(f"{__name__}.evaluation.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SUBMODULES) | set(FUNCTIONS))


__all__ = ["__version__", *FUNCTIONS]
