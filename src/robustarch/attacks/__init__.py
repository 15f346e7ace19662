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
"""

from robustarch.attacks import apgd, autoattack, fgsm, pgd, rfgsm, square, stepll  # noqa: F401  (registration)
from robustarch.attacks._base import (
    L2_EPS_DEFAULT,
    NORMS,
    Attack,
    AttackResult,
    AttackTraits,
    budget_255,
    check_inputs,
    check_model,
)
from robustarch.attacks._presets import PRESETS, preset
from robustarch.attacks._registry import (
    PROFILES,
    attack_class,
    attack_profiles,
    create,
    from_record,
    list_attacks,
    register_attack,
    unavailable_reason,
)

__all__ = [
    "L2_EPS_DEFAULT",
    "NORMS",
    "PRESETS",
    "PROFILES",
    "Attack",
    "AttackResult",
    "AttackTraits",
    "attack_class",
    "attack_profiles",
    "budget_255",
    "check_inputs",
    "check_model",
    "create",
    "from_record",
    "list_attacks",
    "preset",
    "register_attack",
    "unavailable_reason",
]
