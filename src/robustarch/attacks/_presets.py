"""Named sets of configured attacks.

- ``paper``: the study's four attacks with the numbers as the paper prints them (FGSM eps 0.007; R-FGSM eps
  0.06, alpha 0.03; StepLL eps 0.01, alpha 0.003; PGD eps 0.3, alpha 0.007, 10 iterations), ``paper`` profile.
- ``paper-defaults``: the same with the exact torchattacks 1.x defaults the printed numbers round down
  (R-FGSM 16/255, 8/255; StepLL 4/255, 1/255; PGD alpha 2/255), keeping the paper's 10 PGD iterations.
- ``standard``: correct attacks at the budget the field reports (RobustBench: L-inf 8/255 on CIFAR-family
  data, 4/255 on ImageNet): FGSM, R-FGSM, StepLL, PGD-10, APGD-CE, APGD-T, Square, and a PGD eps sweep.
- ``explain``: what the published numbers measure, side by side (the report's "What the published numbers
  measure" section): the released pipeline's clamp alone (a paper attack with the emulated flaw at eps 0),
  the four ``paper`` attacks as released (``emulate_normalized_inputs=True``), the same four at the same
  nominal eps on [0,1] inputs, and the ``standard`` FGSM, R-FGSM, StepLL, PGD-10 and APGD-CE.
"""

from __future__ import annotations

from typing import Any

from robustarch.attacks._registry import create
from robustarch.errors import RobustarchError, UnknownNameError

PRESETS = ("paper", "paper-defaults", "standard", "explain")
# the standard attacks preset("explain") puts beside the paper's (the keys of preset("standard"))
EXPLAIN_STANDARD = ("fgsm", "rfgsm", "stepll", "pgd", "apgd-ce")

# numerators of eps/255 for the standard eps sweep, per dataset family
SWEEP_255 = {"cifar": (1, 2, 4, 8, 16), "imagenet": (0.5, 1, 2, 4, 8)}
BUDGET_255 = {"cifar": 8, "imagenet": 4}


def _family(dataset: str) -> str:
    from robustarch.zoo._registry import dataset_shape

    return dataset_shape(dataset).family


def preset(name: str, dataset: str | None = None, **common: Any) -> dict[str, Any]:
    """The attacks of preset ``name`` as an ordered ``{key: Attack}``. ``standard`` needs ``dataset`` (it
    sets the budget); ``common`` parameters (e.g. ``emulate_normalized_inputs=True``) go to every attack."""
    if name == "paper":
        return {
            "fgsm": create("fgsm", "paper", eps=0.007, **common),
            "rfgsm": create("rfgsm", "paper", eps=0.06, alpha=0.03, steps=1, **common),
            "stepll": create("stepll", "paper", eps=0.01, alpha=0.003, steps=0, **common),
            "pgd": create("pgd", "paper", eps=0.3, alpha=0.007, steps=10, random_start=False, **common),
        }
    if name == "paper-defaults":
        return {
            "fgsm": create("fgsm", "paper", eps=0.007, **common),
            "rfgsm": create("rfgsm", "paper", eps=16 / 255, alpha=8 / 255, steps=1, **common),
            "stepll": create("stepll", "paper", eps=4 / 255, alpha=1 / 255, steps=0, **common),
            "pgd": create("pgd", "paper", eps=0.3, alpha=2 / 255, steps=10, random_start=False, **common),
        }
    if name == "standard":
        if dataset is None:
            raise RobustarchError(
                "preset 'standard' needs a dataset (the budget is 8/255 on CIFAR, 4/255 on ImageNet)"
            )
        family = _family(dataset)
        eps = BUDGET_255[family] / 255
        out = {
            "fgsm": create("fgsm", eps=eps, **common),
            "rfgsm": create("rfgsm", eps=eps, alpha=eps / 2, **common),
            "stepll": create("stepll", eps=eps, alpha=1 / 255, steps=0, **common),
            "pgd": create("pgd", eps=eps, alpha=eps / 4, steps=10, **common),
            "apgd-ce": create("apgd-ce", eps=eps, **common),
            "apgd-t": create("apgd-t", eps=eps, **common),
            "square": create("square", eps=eps, **common),
        }
        for k in SWEEP_255[family]:
            out[f"pgd-eps{k:g}"] = create("pgd", eps=k / 255, alpha=k / 255 / 4, steps=10, **common)
        return out
    if name == "explain":
        return _explain(dataset, common)
    raise UnknownNameError("attack preset", name, PRESETS)


def _explain(dataset: str | None, common: dict[str, Any]) -> dict[str, Any]:
    """preset("explain"): keys ``clamp``, ``<attack>-released``, ``<attack>-paper``, ``<attack>-standard``."""
    if "emulate_normalized_inputs" in common:
        raise RobustarchError(
            "preset 'explain' sets emulate_normalized_inputs itself (it runs the paper's attacks both ways)"
        )
    if dataset is None:
        raise RobustarchError("preset 'explain' needs a dataset (its standard attacks' budget depends on it)")
    # the released pipeline's clamp of the normalized tensor alone: FGSM with eps 0 moves nothing else
    out = {"clamp": create("fgsm", "paper", eps=0.0, emulate_normalized_inputs=True, **common)}
    for key, attack in preset("paper", emulate_normalized_inputs=True, **common).items():
        out[f"{key}-released"] = attack
    for key, attack in preset("paper", **common).items():
        out[f"{key}-paper"] = attack
    standard = preset("standard", dataset, **common)
    for key in EXPLAIN_STANDARD:
        out[f"{key}-standard"] = standard[key]
    return out
