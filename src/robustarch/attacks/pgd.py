"""PGD: Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks" (L-inf).

``x_0 = clip01(x + U(-eps, eps))`` when ``random_start`` (else ``x``), then ``steps`` times
``x_{k+1} = clip01(x + clamp(x_k + alpha * sign(grad CE(f(x_k), y)) - x, -eps, eps))``; the final iterate.

- ``standard``: random start by default and ``restarts`` independent runs combined as the per-example worst
  case: an example counts as broken if *any* restart breaks it (its first breaking restart is returned;
  an example no restart breaks gets the restart with the highest loss). Later restarts only run on the
  examples still unbroken.
- ``paper`` (torchattacks 1.3): no random start by default, one run, final iterate (``restarts`` must be 1).
  With the study's alpha*steps = 0.07 < eps = 0.3 the ball never binds.

Random draws: per restart, one ``rand`` of the (remaining) images' shape, only when ``random_start``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from robustarch.attacks._base import Attack, Model, project, rand
from robustarch.attacks._loss import loss_and_grad, per_example_loss
from robustarch.attacks._registry import register_attack
from robustarch.errors import RobustarchError


@register_attack
class PGD(Attack):
    """Projected gradient descent (L-inf). Parameters: ``eps``, ``alpha``, ``steps``, ``random_start``,
    ``restarts``."""

    name = "pgd"
    title = "PGD"
    paper = (
        "Madry et al. 2018, Towards Deep Learning Models Resistant to Adversarial Attacks (arXiv:1706.06083)"
    )
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"eps": 0.3, "alpha": 0.007, "steps": 10, "random_start": False, "restarts": 1},
        "standard": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "random_start": True, "restarts": 1},
    }

    def validate(self) -> None:
        if self.profile == "paper" and self.restarts != 1:
            raise RobustarchError("pgd/paper runs once per batch as torchattacks 1.3 did: restarts must be 1")
        if self.restarts > 1 and not self.random_start:
            raise RobustarchError("pgd: restarts > 1 without random_start would repeat the same run")

    def randomized(self) -> bool:
        return self.random_start

    def gradient_passes(self) -> int:
        return self.steps * self.restarts

    def forward_passes(self) -> int:
        return self.restarts if self.restarts > 1 else 0

    def _describe_extra(self) -> list[str]:
        extra = [f"step {self._amount(self.alpha)}"]
        if self.random_start:
            extra.append("random start")
        if self.restarts > 1:
            extra.append(f"{self.restarts} restarts")
        return extra

    def _single_run(self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Tensor:
        x_adv = x
        if self.random_start:
            x_adv = (x + (2.0 * rand(x.shape, generator, x) - 1.0) * self.eps).clamp(0.0, 1.0)
        for _ in range(self.steps):
            _, _, grad = loss_and_grad(model, x_adv, y)
            x_adv = project(x_adv + self.alpha * grad.sign(), x, self.eps)
        return x_adv

    def _perturb(
        self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None, extras: dict[str, Any]
    ) -> Tensor:
        if self.restarts == 1:
            return self._single_run(model, x, y, generator)
        best = x.clone()
        best_loss = torch.full((len(x),), float("-inf"), device=x.device)
        todo = torch.arange(len(x), device=x.device)
        for r in range(self.restarts):
            adv = self._single_run(model, x[todo], y[todo], generator)
            with torch.no_grad():
                logits = model(adv)
            loss = per_example_loss(logits, y[todo])
            broken = logits.argmax(1) != y[todo]
            take = broken | (loss > best_loss[todo])
            best[todo[take]] = adv[take]
            best_loss[todo[take]] = torch.where(broken[take], torch.inf, loss[take])
            todo = todo[~broken]
            extras[f"unbroken_after_restart_{r + 1}"] = len(todo)
            if not len(todo):
                break
        return best
