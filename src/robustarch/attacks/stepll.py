"""StepLL / iterative least-likely class: Kurakin, Goodfellow & Bengio 2017, "Adversarial Examples in the
Physical World" (ILLC). A targeted iterative attack whose target is the least-likely class at the clean input.

- ``standard``: target = least-likely class *excluding* the true label; ``steps`` times
  ``x_{k+1} = Proj_{eps-ball(x) & [0,1]}(x_k - alpha * sign(grad CE(f(x_k), t)))``; realized L-inf <= eps.
  Examples the model already misclassifies are returned unchanged (as AutoAttack does): they count as
  errors anyway, and a step towards another wrong class could flip them to correct, so that accuracy under
  attack would exceed clean accuracy. ``early_stop`` (default on): an example stops being stepped at the
  first iterate that misclassifies it, which is returned (never weaker under the robust metric); the rest
  of the batch runs without it. ``eot_samples``: gradients averaged over that many forwards.
- ``paper`` (torchattacks 1.3): target = plain argmin of the clean logits (the true label is *not*
  excluded); each step ``u = x_k - alpha * sign(grad CE(f(x_k), t))`` goes through 1.3's own hand-written
  clip, which is *not* ``clamp(0, 1)``: ``x_{k+1} = min(min(max(u, max(x_k - eps, 0)), x_k + eps), 1)``.
  The ball is around the *current* iterate, so it never binds and the realized L-inf is ``n * alpha``. On
  [0,1] inputs this equals ``clip01(u)``; on values below 0 (which only the released code's normalized
  inputs have) it does not: a value below ``-eps`` rises by eps per step, whatever the gradient, instead of
  becoming 0 (see :func:`clip_13`).

``steps=0`` (the default in both profiles) means Kurakin et al.'s count ``int(min(255*eps + 4,
1.25*255*eps))``. Draws no random numbers.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from robustarch.attacks._base import Attack, Model, iterate_with_early_stop, project
from robustarch.attacks._loss import loss_and_grad
from robustarch.attacks._passes import forward_at
from robustarch.attacks._registry import register_attack


def clip_13(u: Tensor, x_k: Tensor, eps: float) -> Tensor:
    """torchattacks 1.3 StepLL's clip of a step ``u`` taken from ``x_k``, as 1.3 wrote it: ``a = max(x_k -
    eps, 0)``, ``b = max(u, a)``, ``c = min(b, x_k + eps)``, ``min(c, 1)``. Not ``clamp(0, 1)``: with
    ``x_k < -eps`` it gives ``x_k + eps`` (``a = 0 > u``, then capped at ``x_k + eps``), so a normalized
    value far below 0 climbs by eps per step instead of jumping to 0. Exact on any input: max/min only pick
    one of their arguments, and ``x_k -+ eps`` are computed as 1.3 computed them."""
    a = (x_k - eps).clamp(min=0.0)
    b = torch.maximum(u, a)
    c = torch.minimum(b, x_k + eps)
    return c.clamp(max=1.0)


def auto_steps(eps: float) -> int:
    """Kurakin et al.'s iteration count for the basic iterative / least-likely methods."""
    return int(min(eps * 255 + 4, 1.25 * eps * 255))


@register_attack
class StepLL(Attack):
    """Iterative least-likely class method (L-inf). Parameters: ``eps``, ``alpha``, ``steps`` (0 = auto)."""

    name = "stepll"
    title = "StepLL"
    targeted = True  # the least-likely class
    paper = "Kurakin et al. 2017, Adversarial Examples in the Physical World (arXiv:1607.02533)"
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"eps": 0.01, "alpha": 0.003, "steps": 0},
        "standard": {"eps": 8 / 255, "alpha": 1 / 255, "steps": 0, "early_stop": True, "eot_samples": 1},
    }

    @property
    def n_steps(self) -> int:
        return self.steps or auto_steps(self.eps)

    def gradient_passes(self) -> int:
        return self.n_steps * self.eot

    def forward_passes(self) -> int:
        return 1  # the least-likely class at the clean input

    def reach(self) -> float | None:
        return self.alpha * self.n_steps

    def _title(self) -> str:
        return f"StepLL-{self.n_steps}"  # the automatic count (steps=0) too

    def _describe_extra(self) -> list[str]:
        return [f"step {self._amount(self.alpha)}"]

    def _perturb(
        self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None, extras: dict[str, Any]
    ) -> Tensor:
        logits = forward_at(model, x)
        if self.profile == "standard":
            keep = logits.argmax(1) != y
            target = logits.scatter(1, y[:, None], float("inf")).argmin(1)
            extras["target"] = target
            return torch.where(keep[:, None, None, None], x, self._standard(model, x, y, target))
        target = logits.argmin(1)
        extras["target"] = target
        x_adv = x
        for _ in range(self.n_steps):
            _, _, grad = loss_and_grad(model, x_adv, y, target=target, targeted=True)
            # 1.3's own clip, around the current iterate (docs/attacks.md): not clamp(0, 1)
            x_adv = clip_13(x_adv + self.alpha * grad.sign(), x_adv, self.eps)
        return x_adv

    def _standard(self, model: Model, x: Tensor, y: Tensor, target: Tensor) -> Tensor:
        """The standard profile's steps, each projected onto the eps-ball around ``x``."""

        def gradient(x_k: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
            logits, _, grad = loss_and_grad(
                model, x_k, y[rows], target=target[rows], targeted=True, samples=self.eot
            )
            return logits, grad

        def step(x_k: Tensor, grad: Tensor, rows: Tensor) -> Tensor:
            return project(x_k + self.alpha * grad.sign(), x[rows], self.eps)

        return iterate_with_early_stop(x, y, self.n_steps, gradient, step, self.stops_early)
