"""robustarch: adversarial robustness of handcrafted and NAS-found architectures.

Reproduces and extends Devaguptapu et al., "On Adversarial Robustness: A Neural Architecture Search
perspective" (the study in ``../shared/seed``): a model zoo (``robustarch.zoo``), the study's attacks
(``robustarch.attacks``), datasets (``robustarch.data``), an evaluation engine with a crash-safe store
(``robustarch.evaluation``, ``robustarch.store``), reports (``robustarch.report``) and training
(``robustarch.train``). Any model in one call:

>>> import robustarch
>>> robustarch.evaluate(model, (x, y), preset="standard", mean=MEAN, std=STD).table()
>>> robustarch.benchmark(model, "cifar10", "~/data/cifar10", n_examples=1000)  # (clean, robust)
"""

import logging
from typing import Any

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# robustarch.evaluate / robustarch.benchmark import torch only when used (``import robustarch`` stays light)
_LAZY = {"evaluate": "robustarch.evaluation.api", "benchmark": "robustarch.evaluation.api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'robustarch' has no attribute {name!r}")


__all__ = ["__version__", "benchmark", "evaluate"]
