"""Named sets of configured attacks.

- ``paper``: the study's four attacks with the numbers as the paper prints them (FGSM eps 0.007; R-FGSM eps
  0.06, alpha 0.03; StepLL eps 0.01, alpha 0.003; PGD eps 0.3, alpha 0.007, 10 iterations), ``paper`` profile.
- ``paper-defaults``: the same with the exact torchattacks 1.x defaults the printed numbers round down
  (R-FGSM 16/255, 8/255; StepLL 4/255, 1/255; PGD alpha 2/255), keeping the paper's 10 PGD iterations.
- ``standard``: correct attacks at the budget the field reports (RobustBench: L-inf 8/255 on CIFAR-family
  data, 4/255 on ImageNet; ``robustarch.data.DATASETS``): FGSM, R-FGSM, StepLL, PGD-10, APGD-CE, APGD-T,
  Square, and a PGD eps sweep.
- ``autoattack`` / ``autoattack-l2``: AutoAttack "standard" (APGD-CE, APGD-T, FAB-T, Square) as one attack
  (key = the preset's name) at RobustBench's budget: L-inf as ``standard``; L2 0.5 on CIFAR-10 (RobustBench
  has no L2 leaderboard for the other datasets: pass ``eps=``).
- ``autoattack-rand`` / ``autoattack-rand-l2``: AutoAttack "rand" (APGD-CE and APGD-DLR with EoT over 20
  forwards), for randomized models.

- ``explain``: what the published numbers measure, side by side (the report's "What the published numbers
  measure" section): the released pipeline's clamp alone (a paper attack with the emulated flaw at eps 0),
  the four ``paper`` attacks as released (``emulate_normalized_inputs=True``), the same four at the same
  nominal eps on [0,1] inputs, and the ``standard`` FGSM, R-FGSM, StepLL, PGD-10 and APGD-CE.

:func:`standard_attack` is the one rule for an attack named without parameters on a dataset: the standard
preset's configuration of it there (so ``--attacks pgd`` and ``--preset standard`` attack ImageNet at the
same 4/255), with the step sizes that scale with the budget (PGD's alpha = eps/4, R-FGSM's alpha = eps/2)
following an ``eps`` given for it.
"""

from __future__ import annotations

from typing import Any

from robustarch.attacks._registry import constructor_params, create
from robustarch.errors import RobustarchError, UnknownNameError

PRESETS = ("paper", "paper-defaults", "standard", "explain", "autoattack", "autoattack-l2",
           "autoattack-rand", "autoattack-rand-l2")  # fmt: skip
# the standard attacks preset("explain") puts beside the paper's (the keys of preset("standard"))
EXPLAIN_STANDARD = ("fgsm", "rfgsm", "stepll", "pgd", "apgd-ce")

# numerators of eps/255 for the standard eps sweep, per dataset family
SWEEP_255 = {"cifar": (1, 2, 4, 8, 16), "imagenet": (0.5, 1, 2, 4, 8)}
# step sizes that are a fixed share of the budget in the standard preset (Madry et al. use 2/255 at 8/255)
BUDGET_SHARE = {"pgd": {"alpha": 0.25}, "rfgsm": {"alpha": 0.5}}
# the standard preset's own parameters beyond the budget
STANDARD_FIXED = {"stepll": {"alpha": 1 / 255, "steps": 0}, "pgd": {"steps": 10}}
# RobustBench's L2 budgets, per dataset (model_info/cifar10/L2/*.json: eps 0.5; CIFAR-10 as JPEG holds the
# same images); RobustBench keeps no L2 leaderboard for CIFAR-100 or ImageNet
L2_BUDGET = {"cifar10": 0.5, "cifar10-jpeg": 0.5}
# autoattack presets: name -> (AutoAttack version, norm)
AUTOATTACK_PRESETS = {
    "autoattack": ("standard", "Linf"),
    "autoattack-l2": ("standard", "L2"),
    "autoattack-rand": ("rand", "Linf"),
    "autoattack-rand-l2": ("rand", "L2"),
}


def dataset_budget(dataset: str) -> tuple[str, float]:
    """(family, standard L-inf budget) of a dataset id, from ``robustarch.data.DATASETS``."""
    from robustarch.data import dataset_info

    info = dataset_info(dataset)
    if info.budget is None:
        raise RobustarchError(
            f"dataset {dataset!r} has no standard budget (its shape comes from the files): give eps"
        )
    return str(info.family), info.budget


def standard_attack(name: str, dataset: str | None = None, *, eps: float | None = None, **params: Any) -> Any:
    """Attack ``name`` in the standard profile as the standard preset configures it on ``dataset``: the
    dataset's budget unless ``eps`` is given, step sizes that scale with the budget unless given, then
    ``params``. Without a dataset the attack's own defaults apply (``eps`` still scales the steps)."""
    if eps is None and dataset is not None and "eps" in _defaults(name):
        eps = dataset_budget(dataset)[1]
    merged: dict[str, Any] = dict(STANDARD_FIXED.get(name, {}))
    if eps is not None:
        merged["eps"] = eps
        merged.update({k: share * eps for k, share in BUDGET_SHARE.get(name, {}).items()})
    merged.update(params)
    return create(name, "standard", **merged)


def own_params(attack: Any) -> dict[str, Any]:
    """An attack's parameters as its constructor takes them (defaults filled in, the flaw switch kept, mean
    and std only where given)."""
    return constructor_params(attack.params)


def rescale(attack: Any, eps: float, *, keep: set[str] | frozenset[str] = frozenset()) -> Any:
    """The same attack at budget ``eps``; in the standard profile the step sizes that are a share of the
    budget (``BUDGET_SHARE``) follow it, except the parameters named in ``keep``."""
    params = {**own_params(attack), "eps": eps}
    if attack.profile == "standard":
        params.update(
            {k: share * eps for k, share in BUDGET_SHARE.get(attack.name, {}).items() if k not in keep}
        )
    return create(attack.name, attack.profile, **params)


def _defaults(name: str) -> dict[str, Any]:
    from robustarch.attacks._registry import attack_class

    return dict(attack_class(name).defaults.get("standard", {}))


def _autoattack(name: str, dataset: str | None, common: dict[str, Any]) -> dict[str, Any]:
    version, norm = AUTOATTACK_PRESETS[name]
    eps = common.pop("eps", None)
    if eps is None:
        if dataset is None:
            raise RobustarchError(f"preset {name!r} needs a dataset (it sets the budget) or eps=")
        budget = dataset_budget(dataset)[1]  # an unknown dataset is an error that suggests close names
        if norm == "L2":
            if dataset not in L2_BUDGET:
                raise RobustarchError(
                    f"preset {name!r}: RobustBench reports no L2 budget for {dataset!r} (only for "
                    f"{', '.join(L2_BUDGET)}: 0.5); pass eps=, e.g. preset({name!r}, {dataset!r}, eps=0.5)"
                )
            budget = L2_BUDGET[dataset]
        eps = budget
    return {name: create("autoattack", eps=eps, norm=norm, version=version, **common)}


def preset(name: str, dataset: str | None = None, **common: Any) -> dict[str, Any]:
    """The attacks of preset ``name`` as an ordered ``{key: Attack}``. ``standard`` and the ``autoattack``
    presets need ``dataset`` (it sets the budget; the ``autoattack`` ones take ``eps=`` instead); ``common``
    parameters (e.g. ``emulate_normalized_inputs=True``) go to every attack."""
    if name in AUTOATTACK_PRESETS:
        return _autoattack(name, dataset, dict(common))
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
        family, eps = dataset_budget(dataset)
        out = {
            name: standard_attack(name, eps=eps, **common)
            for name in ("fgsm", "rfgsm", "stepll", "pgd", "apgd-ce", "apgd-t", "square")
        }
        for k in SWEEP_255[family]:
            out[f"pgd-eps{k:g}"] = standard_attack("pgd", eps=k / 255, **common)
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
