"""The attack engine: the study's FGSM, R-FGSM, StepLL and PGD in two profiles (``paper`` = torchattacks 1.3
semantics as the study ran them, ``standard`` = correct modern semantics), plus APGD-CE, APGD-DLR, APGD-T,
Square and the AutoAttack cascade; L-inf and (``norm="L2"``, standard profile) L2.

>>> import robustarch.attacks as ra
>>> attack = ra.create("pgd", eps=8/255, steps=10)          # standard profile
>>> adv = attack(model, images, labels, generator=torch.Generator().manual_seed(0))
>>> result = attack.run(model, images, labels)              # adv plus realized norms
>>> ra.preset("paper")                                       # the study's four attacks
>>> ra.preset("autoattack", "cifar10")                       # AutoAttack "standard" as one attack

``emulate_normalized_inputs=True`` (any attack) reproduces the released code's flaw of attacking normalized
tensors; see ``docs/attacks.md``.

The names are imported lazily (``import robustarch.attacks`` costs no torch); reading any of them except the
profile and preset tables imports the attack files of :data:`ATTACK_MODULES`, which register themselves.
"""

from __future__ import annotations

import importlib
from typing import Any

from robustarch.lazy import lazy_exports

# one file per attack; each registers its class on import
ATTACK_MODULES = ("apgd", "autoattack", "fab", "fgsm", "pgd", "rfgsm", "square", "stepll")

# public name -> the submodule that defines it, imported when the name is first read
_EXPORTS = {
    "L2_EPS_DEFAULT": "_base",
    "NORMS": "_base",
    "Attack": "_base",
    "AttackResult": "_base",
    "AttackTraits": "_base",
    "budget_255": "_base",
    "forward_at": "_passes",
    "row_budget": "_runs",
    "shared_passes": "_passes",
    "check_inputs": "_base",
    "check_model": "_base",
    "PRESETS": "_presets",
    "dataset_budget": "_presets",
    "own_params": "_presets",
    "preset": "_presets",
    "rescale": "_presets",
    "standard_attack": "_presets",
    "PROFILES": "_registry",
    "attack_class": "_registry",
    "attack_profiles": "_registry",
    "create": "_registry",
    "from_record": "_registry",
    "list_attacks": "_registry",
    "register_attack": "_registry",
    "unavailable_reason": "_registry",
}
_TABLES = {
    "PRESETS",
    "PROFILES",
    "NORMS",
    "L2_EPS_DEFAULT",
}  # plain data: no attack needs to be registered to read them
__all__ = sorted(_EXPORTS)
_lazy_getattr, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


def __getattr__(name: str) -> Any:
    if name not in _TABLES:
        for module in ATTACK_MODULES:  # registration; a no-op once imported
            importlib.import_module(f"{__name__}.{module}")
    return _lazy_getattr(name)
