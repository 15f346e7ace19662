"""PGD: Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks", L-inf and L2.

L-inf: ``x_0 = clip01(x + U(-eps, eps))`` when ``random_start`` (else ``x``), then ``steps`` times
``x_{k+1} = clip01(x + clamp(x_k + alpha * sign(grad CE(f(x_k), y)) - x, -eps, eps))``; the final iterate.

L2 (``norm="L2"``, ``standard`` only; as Madry et al.'s ``robustness`` library and torchattacks' PGDL2):
``x_0 = clip01(x + P(u))``, ``u ~ U(-1/2, 1/2)`` (``P`` scales ``u`` onto the eps-sphere: a random direction
at full budget), then ``x_{k+1} = clip01(x + P(x_k + alpha * g / (||g||_2 + 1e-10) - x))`` with
``P(d) = d * min(1, eps / ||d||_2)``.

- ``standard``: random start by default and ``restarts`` independent runs combined as the per-example worst
  case: an example counts as broken if *any* restart breaks it (its first breaking restart is returned;
  an example no restart breaks gets the restart with the highest loss). Later restarts only run on the
  examples still unbroken. ``early_stop`` (default on): an example stops being attacked at the first
  iterate that misclassifies it, which is returned (never weaker than the final iterate under the robust
  metric, and the rest of the batch runs without it). ``eot_samples``: gradients averaged over that many
  forwards (for randomized models). ``alpha`` defaults to 2/255 (L-inf) or eps/4 (L2).
- ``paper`` (torchattacks 1.3): L-inf, no random start by default, one run, final iterate (``restarts``
  must be 1). With the study's alpha*steps = 0.07 < eps = 0.3 the ball never binds.

Random draws: per restart, one ``rand`` of the (remaining) images' shape, only when ``random_start``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from robustarch.attacks._base import (
    Attack,
    Model,
    into_l2_ball,
    iterate_with_early_stop,
    l2_unit,
    project,
    project_l2,
    rand,
)
from robustarch.attacks._loss import loss_and_grad, per_example_loss
from robustarch.attacks._registry import register_attack
from robustarch.errors import RobustarchError


@register_attack
class PGD(Attack):
    """Projected gradient descent (L-inf or L2). Parameters: ``eps``, ``alpha``, ``steps``, ``random_start``,
    ``restarts``; ``standard`` also ``norm``, ``early_stop``, ``eot_samples``."""

    name = "pgd"
    title = "PGD"
    paper = (
        "Madry et al. 2018, Towards Deep Learning Models Resistant to Adversarial Attacks (arXiv:1706.06083)"
    )
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"eps": 0.3, "alpha": 0.007, "steps": 10, "random_start": False, "restarts": 1},
        "standard": {
            "eps": 8 / 255,
            "alpha": 2 / 255,
            "steps": 10,
            "random_start": True,
            "restarts": 1,
            "norm": "Linf",
            "early_stop": True,
            "eot_samples": 1,
        },
    }

    def implied_defaults(self, given: Mapping[str, Any]) -> dict[str, Any]:
        out = super().implied_defaults(given)
        if given.get("norm") == "L2" and "alpha" not in given:
            out["alpha"] = given.get("eps", out.get("eps")) / 4  # 2/255 is no step for an L2 budget
        return out

    def validate(self) -> None:
        if self.profile == "paper" and self.restarts != 1:
            raise RobustarchError("pgd/paper runs once per batch as torchattacks 1.3 did: restarts must be 1")
        if self.restarts > 1 and not self.random_start:
            raise RobustarchError("pgd: restarts > 1 without random_start would repeat the same run")

    def randomized(self) -> bool:
        return self.random_start

    def gradient_passes(self) -> int:
        return self.steps * self.restarts * self.eot

    def forward_passes(self) -> int:
        return self.restarts if self.restarts > 1 else 0

    def reach(self) -> float | None:
        if self.threat_norm() != "Linf":
            return None
        return self.alpha * self.steps + (self.eps if self.random_start else 0.0)

    def _describe_extra(self) -> list[str]:
        extra = [f"step {self._amount(self.alpha)}"]
        if self.random_start:
            extra.append("random start")
        if self.restarts > 1:
            extra.append(f"{self.restarts} restarts")
        return extra

    def _start(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        if not self.random_start:
            return x
        u = rand(x.shape, generator, x)
        if self.threat_norm() == "L2":
            return (x + into_l2_ball(u - 0.5, self.eps)).clamp(0.0, 1.0)
        return (x + (2.0 * u - 1.0) * self.eps).clamp(0.0, 1.0)

    def _single_run(self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Tensor:
        l2 = self.threat_norm() == "L2"

        def gradient(x_k: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
            logits, _, grad = loss_and_grad(model, x_k, y[rows], samples=self.eot)
            return logits, grad

        def step(x_k: Tensor, grad: Tensor, rows: Tensor) -> Tensor:
            if l2:
                return project_l2(x_k + self.alpha * l2_unit(grad), x[rows], self.eps)
            return project(x_k + self.alpha * grad.sign(), x[rows], self.eps)

        return iterate_with_early_stop(
            self._start(x, generator), y, self.steps, gradient, step, self.stops_early
        )

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
