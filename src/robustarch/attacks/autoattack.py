"""AutoAttack as one attack: the cascade of Croce & Hein 2020, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks" (ICML 2020), as AutoAttack's ``run_standard_evaluation``
runs it, each attack only on the examples every earlier one left robust.

Versions (``version``, AutoAttack's names):

- ``standard``: APGD-CE (``steps`` = 100 iterations, 1 restart), APGD-T (``n_target_classes`` = 9 targets x
  100 iterations), FAB-T (9 targets; the registry's ``fab-t``), Square (``queries`` = 5000, AutoAttack's
  own schedule: ``variant="autoattack"``).
- ``rand``, for randomized models: APGD-CE and APGD-DLR, each with EoT over ``eot_samples`` = 20 forwards.

Both for ``norm`` ``"Linf"`` (default eps 8/255) and ``"L2"`` (default eps 0.5). The stages are created
through the registry with these parameters (``stages()``); ``early_stop`` (default on) is passed to the
APGD stages (they drop an example from their batch once it is broken).

Per call, ``result.extras`` holds ``broken_by`` (per example: the key of the stage that broke it,
``"clean"`` where the model misclassifies the clean image so nothing was attacked, ``""`` where it stayed
robust), ``contributions`` (per stage, in order: how many examples it broke), ``stage_seconds`` and
``robust`` (the count still robust).

Batches: the cascade opens a :func:`robustarch.attacks.row_budget` of its batch's size, so APGD-T's and
FAB-T's targets are stacked into batches of up to that many rows and Square evaluates several proposals per
example at once (:mod:`robustarch.attacks._runs`): after APGD-CE the robust examples are few, and passes
over few examples run far below a device's throughput.

Random draws: one seed ``randint(2**31 - 1)`` from the caller's generator; every stage then draws from a
fresh generator seeded with it (on the caller's generator's device), as AutoAttack re-seeds every attack
with its one ``seed``: a stage's draws do not depend on how many the earlier stages made.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from robustarch.attacks._base import Attack, Model, randint
from robustarch.attacks._passes import forward_at
from robustarch.attacks._registry import attack_class, create, list_attacks, register_attack
from robustarch.attacks._runs import row_budget
from robustarch.errors import RobustarchError

# version -> ordered stages: (key, attack id, fixed parameters); eps, norm and the shared knobs below are
# added where the stage's attack declares them
STAGES: dict[str, tuple[tuple[str, str, dict[str, Any]], ...]] = {
    "standard": (
        ("apgd-ce", "apgd-ce", {"restarts": 1}),
        ("apgd-t", "apgd-t", {"restarts": 1}),
        ("fab-t", "fab-t", {"restarts": 1}),
        ("square", "square", {"variant": "autoattack", "restarts": 1}),
    ),
    "rand": (
        ("apgd-ce", "apgd-ce", {"restarts": 1}),
        ("apgd-dlr", "apgd-dlr", {"restarts": 1}),
    ),
}
EOT_DEFAULT = {"standard": 1, "rand": 20}
# the cascade's knobs and the stage parameter each one sets
SHARED = {"steps": "steps", "n_target_classes": "n_target_classes", "queries": "queries"}


@register_attack
class AutoAttack(Attack):
    """AutoAttack's cascade (``standard`` or ``rand``). Parameters: ``eps``, ``norm``, ``version``,
    ``steps`` (APGD/FAB iterations), ``n_target_classes``, ``queries`` (Square), ``eot_samples``,
    ``early_stop``; see the module docstring."""

    name = "autoattack"
    title = "AutoAttack"
    recorded_extras = ("contributions", "stage_seconds")
    profiles = ("standard",)
    paper = (
        "Croce & Hein 2020, Reliable evaluation of adversarial robustness with an ensemble of diverse "
        "parameter-free attacks (arXiv:2003.01690)"
    )
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"version": tuple(STAGES)}
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "standard": {
            "eps": 8 / 255,
            "norm": "Linf",
            "version": "standard",
            "steps": 100,
            "n_target_classes": 9,
            "queries": 5000,
            "eot_samples": 1,
            "early_stop": True,
        }
    }

    @classmethod
    def unavailable_reason(cls, **params: Any) -> str | None:
        version = params.get("version", cls.defaults["standard"]["version"])
        missing = [a for _, a, _ in STAGES.get(version, ()) if a not in list_attacks()]
        if missing:
            return (
                f"autoattack version {version!r} needs the attack(s) {', '.join(map(repr, missing))}, which "
                "this installation does not register"
            )
        return None

    def implied_defaults(self, given: Mapping[str, Any]) -> dict[str, Any]:
        out = super().implied_defaults(given)
        if "eot_samples" not in given and given.get("version") in EOT_DEFAULT:
            out["eot_samples"] = EOT_DEFAULT[given["version"]]
        return out

    def validate(self) -> None:
        for key in ("steps", "n_target_classes", "queries"):
            self._check_int(key, 1)
        reason = self.unavailable_reason(version=self.version)
        if reason:
            raise RobustarchError(f"{reason}; version='rand' needs only APGD")
        self._stages = self._build_stages()

    def _build_stages(self) -> dict[str, Attack]:
        out = {}
        for key, attack_id, fixed in STAGES[self.version]:
            declared = attack_class(attack_id).defaults["standard"]
            wanted = {
                "eps": self.eps,
                "norm": self.norm,
                "eot_samples": self.eot_samples,
                "early_stop": self.early_stop,
                **{stage_key: getattr(self, own) for own, stage_key in SHARED.items()},
                **fixed,
            }
            out[key] = create(attack_id, **{k: v for k, v in wanted.items() if k in declared})
        return out

    def stages(self) -> dict[str, Attack]:
        """The configured stage attacks, in cascade order, keyed as ``extras`` names them."""
        return dict(self._stages)

    # ---- what it is like --------------------------------------------------------------------------------
    def randomized(self) -> bool:
        return True

    def gradient_passes(self) -> int:
        return sum(a.gradient_passes() for a in self._stages.values())

    def forward_passes(self) -> int:
        # the clean check, each stage's own forwards and one check of each stage's output
        return 1 + sum(a.forward_passes() + 1 for a in self._stages.values())

    def _title(self) -> str:
        return self.title

    def _describe_extra(self) -> list[str]:
        names = ", ".join(a.title for a in self._stages.values())
        extra = [f"{self.version}: {names}"]
        fixed = self.defaults["standard"]
        if self.steps != fixed["steps"]:
            extra.append(f"{self.steps} steps")
        if "apgd-t" in self._stages and self.n_target_classes != fixed["n_target_classes"]:
            extra.append(f"{self.n_target_classes} targets")
        if "square" in self._stages and self.queries != fixed["queries"]:
            extra.append(f"Square {self.queries} queries")
        return extra

    # ---- the cascade ----------------------------------------------------------------------------------
    def _stage_generator(self, seed: int, generator: torch.Generator | None) -> torch.Generator:
        device = generator.device if generator is not None else torch.device("cpu")
        return torch.Generator(device=device).manual_seed(seed)

    def _perturb(
        self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None, extras: dict[str, Any]
    ) -> Tensor:
        robust = forward_at(model, x).argmax(1) == y
        broken_by = ["" if r else "clean" for r in robust.tolist()]
        seed = int(randint(2**31 - 1, (1,), generator, x))
        adv = x.clone()
        contributions: dict[str, int] = {}
        seconds: dict[str, float] = {}
        # a stage with several runs per example (APGD-T's, FAB-T's targets) stacks them up to len(x) rows
        with row_budget(len(x)):
            for key, attack in self._stages.items():
                idx = torch.nonzero(robust).flatten()
                contributions[key], seconds[key] = 0, 0.0
                if not len(idx):
                    continue
                t0 = time.perf_counter()
                # the stage's own _perturb: the inputs were validated once, and under the emulated flaw
                # ``model`` and ``x`` are the normalized view, which only the attack machinery may see
                out = attack._perturb(model, x[idx], y[idx], self._stage_generator(seed, generator), {})
                with torch.no_grad():
                    fooled = model(out).argmax(1) != y[idx]
                hit = idx[fooled]
                adv[hit], robust[hit] = out[fooled], False
                for i in hit.tolist():
                    broken_by[i] = key
                contributions[key], seconds[key] = len(hit), time.perf_counter() - t0
        extras.update(
            broken_by=broken_by, contributions=contributions, stage_seconds=seconds, robust=int(robust.sum())
        )
        return adv
