"""FGSM: Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial Examples".

``x_adv = clip01(x + eps * sign(grad_x CE(f(x), y)))``; realized L-inf = eps (less where clipping binds).
Both profiles are the same formula; they differ in the default eps (the study's 0.007 vs 8/255), and the
``standard`` profile offers ``eot_samples`` (the gradient averaged over that many forwards, for randomized
models).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from robustarch.attacks._base import Attack, Model
from robustarch.attacks._loss import loss_and_grad
from robustarch.attacks._registry import register_attack


@register_attack
class FGSM(Attack):
    """Fast Gradient Sign Method (L-inf, one gradient). Parameters: ``eps``. Draws no random numbers."""

    name = "fgsm"
    title = "FGSM"
    iterative = False
    paper = "Goodfellow et al. 2015, Explaining and Harnessing Adversarial Examples (arXiv:1412.6572)"
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"eps": 0.007},
        "standard": {"eps": 8 / 255, "eot_samples": 1},
    }

    def gradient_passes(self) -> int:
        return self.eot

    def _perturb(
        self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None, extras: dict[str, Any]
    ) -> Tensor:
        _, _, grad = loss_and_grad(model, x, y, samples=self.eot)
        return (x + self.eps * grad.sign()).clamp(0.0, 1.0)
