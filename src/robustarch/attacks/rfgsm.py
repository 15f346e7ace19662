"""R-FGSM: Tramer et al. 2018, "Ensemble Adversarial Training: Attacks and Defenses" (R+FGSM).

A random sign step of size ``alpha`` then a gradient sign step of size ``eps - alpha``.

- ``standard`` (Tramer et al.): ``x0 = clip01(x + alpha * sign(g))``, ``g ~ N(0, I)``; ``steps`` times
  ``x_{k+1} = Proj_{eps-ball(x) & [0,1]}(x_k + (eps - alpha) * sign(grad CE(f(x_k), y)))``. Needs
  ``alpha <= eps``; realized L-inf <= eps. With ``steps > 1``, ``early_stop`` (default on) returns an
  example at the first iterate (the random start included) that misclassifies it and stops stepping it.
  ``eot_samples``: gradients averaged over that many forwards.
- ``paper`` (torchattacks 1.3 as the study ran it): ``x0 = x + alpha * sign(g)`` *not* clamped, then
  ``x_{k+1} = clip01(x_k + (eps - alpha) * sign(grad))`` with no projection: with more than one step the
  perturbation grows past eps, and with ``eps < alpha`` the step descends the loss.

Random draws: one ``randn`` of the images' shape from the generator (only its sign is used).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
from torch import Tensor

from robustarch.attacks._base import Attack, Model, iterate_with_early_stop, project, randn
from robustarch.attacks._loss import loss_and_grad
from robustarch.attacks._registry import register_attack
from robustarch.errors import RobustarchError

log = logging.getLogger(__name__)


@register_attack
class RFGSM(Attack):
    """R-FGSM (L-inf). Parameters: ``eps``, ``alpha`` (random step), ``steps`` (gradient steps)."""

    name = "rfgsm"
    title = "R-FGSM"
    paper = "Tramer et al. 2018, Ensemble Adversarial Training: Attacks and Defenses (arXiv:1705.07204)"
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"eps": 0.06, "alpha": 0.03, "steps": 1},
        "standard": {"eps": 8 / 255, "alpha": 4 / 255, "steps": 1, "early_stop": True, "eot_samples": 1},
    }

    def validate(self) -> None:
        if self.steps < 1:
            raise RobustarchError(f"{self.name}: steps must be >= 1, got {self.steps}")
        if self.profile == "standard" and self.alpha > self.eps:
            raise RobustarchError(
                f"{self.name}: alpha ({self.alpha}) must not exceed eps ({self.eps}); the gradient step is "
                "eps - alpha"
            )
        if self.profile == "paper" and self.eps < self.alpha:
            log.warning("rfgsm/paper with eps < alpha: the gradient step eps - alpha is negative (descends)")

    @property
    def iterative(self) -> bool:  # type: ignore[override]
        return self.steps > 1

    def randomized(self) -> bool:
        return True

    def gradient_passes(self) -> int:
        return self.steps * self.eot

    def _describe_extra(self) -> list[str]:
        return [f"random step {self._amount(self.alpha)}"]

    def _perturb(
        self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None, extras: dict[str, Any]
    ) -> Tensor:
        size = self.eps - self.alpha
        x_adv = x + self.alpha * randn(x.shape, generator, x).sign()
        if self.profile == "standard":
            x_adv = x_adv.clamp(0.0, 1.0)

        def gradient(x_k: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
            logits, _, grad = loss_and_grad(model, x_k, y[rows], samples=self.eot)
            return logits, grad

        def step(x_k: Tensor, grad: Tensor, rows: Tensor) -> Tensor:
            if self.profile == "standard":
                return project(x_k + size * grad.sign(), x[rows], self.eps)
            return (x_k + size * grad.sign()).clamp(0.0, 1.0)

        return iterate_with_early_stop(x_adv, y, self.steps, gradient, step, self.stops_early)
