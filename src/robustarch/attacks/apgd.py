"""APGD-CE and APGD-T: Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (ICML 2020), L-inf, Algorithm 1.

Step size starts at ``2*eps`` and is halved at checkpoints ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``,
``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` when (1) the loss increased in fewer than
``rho`` of the steps since the last checkpoint, or (2) the step size was not reduced at the last checkpoint
and the best loss has not improved since; after a halving the iterate restarts from the best point.
Updates use momentum 0.75: ``z = P(x_k + eta * sign(grad))``,
``x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}))``.

- ``apgd-ce`` maximises cross-entropy.
- ``apgd-t`` maximises the targeted DLR loss, once per target among the ``n_target_classes`` (default 9)
  highest-scoring classes other than the top one at the clean input, each with ``restarts`` runs.

Per-example worst case: only initially correct, still unbroken examples are attacked by later restarts and
targets; an example is returned at the first point that misclassifies it, else at its highest-loss point.

Random draws: per run (restart/target), one ``rand`` of the attacked images' shape for the start point
``x + eps * t / ||t||_inf``, ``t ~ U(-1, 1)``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from robustarch.attacks._base import Attack, Model, rand
from robustarch.attacks._loss import loss_and_grad
from robustarch.attacks._registry import register_attack
from robustarch.errors import RobustarchError


def checkpoints(steps: int) -> list[int]:
    """Iteration indices at which APGD checks its two step-size conditions (Croce & Hein 2020, Sec. 3.2)."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    out = sorted({math.ceil(q * steps) for q in p[1:] if math.ceil(q * steps) < steps})
    return [w for w in out if w > 0]


class _APGDBase(Attack):
    profiles = ("standard",)
    paper = (
        "Croce & Hein 2020, Reliable evaluation of adversarial robustness with an ensemble of diverse "
        "parameter-free attacks (arXiv:2003.01690)"
    )
    loss_kind = "ce"

    def randomized(self) -> bool:
        return True

    def runs(self) -> int:
        """Restarts x targets: independent APGD runs per example, at most."""
        return self.restarts

    def gradient_passes(self) -> int:
        return self.runs() * (self.steps + 1)

    def forward_passes(self) -> int:
        return 1  # which examples are correct at the clean input

    def _title(self) -> str:
        return self.title  # AutoAttack's names; the iteration count goes with the details

    def _describe_extra(self) -> list[str]:
        return [f"{self.steps} steps"] + ([f"{self.restarts} restarts"] if self.restarts > 1 else [])

    def validate(self) -> None:
        self._check_number("rho", 0.0, 1.0)
        if self.steps < 1:
            raise RobustarchError(f"{self.name}: steps must be >= 1, got {self.steps}")

    def _run(
        self, model: Model, x: Tensor, y: Tensor, target: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """One APGD run; returns (returned point, whether it misclassifies)."""
        eps, n = self.eps, len(x)
        lo, hi = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
        t = 2.0 * rand(x.shape, generator, x) - 1.0
        t_max = t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        x_adv = torch.minimum(torch.maximum(x + eps * t / t_max, lo), hi)
        kw = {"kind": self.loss_kind, "target": target, "targeted": False, "reduction": "sum"}
        logits, loss, grad = loss_and_grad(model, x_adv, y, **kw)
        fooled = logits.argmax(1) != y
        out = x_adv.clone()
        x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()
        step = torch.full((n, 1, 1, 1), 2.0 * eps, device=x.device, dtype=x.dtype)
        checks = checkpoints(self.steps)
        last_check, n_increase = 0, torch.zeros(n, device=x.device)
        loss_prev = loss.clone()
        loss_best_at_check = loss_best.clone()
        reduced_at_check = torch.ones(n, dtype=torch.bool, device=x.device)
        x_prev = x_adv
        for i in range(self.steps):
            z = torch.minimum(torch.maximum(x_adv + step * grad.sign(), lo), hi)
            if i == 0:
                x_new = z
            else:
                x_new = x_adv + 0.75 * (z - x_adv) + 0.25 * (x_adv - x_prev)
                x_new = torch.minimum(torch.maximum(x_new, lo), hi)
            x_prev, x_adv = x_adv, x_new
            logits, loss, grad = loss_and_grad(model, x_adv, y, **kw)
            now_fooled = (logits.argmax(1) != y) & ~fooled
            out[now_fooled] = x_adv[now_fooled]
            fooled |= now_fooled
            n_increase += (loss > loss_prev).float()
            loss_prev = loss
            better = loss > loss_best
            x_best[better], grad_best[better], loss_best[better] = x_adv[better], grad[better], loss[better]
            if i + 1 in checks:
                window = i + 1 - last_check
                cond1 = n_increase < self.rho * window
                cond2 = ~reduced_at_check & (loss_best <= loss_best_at_check)
                reduce = cond1 | cond2
                reduced_at_check = reduce
                loss_best_at_check = loss_best.clone()
                n_increase.zero_()
                last_check = i + 1
                if bool(reduce.any()):
                    step[reduce] /= 2.0
                    x_adv = x_adv.clone()
                    grad = grad.clone()
                    x_adv[reduce], grad[reduce] = x_best[reduce], grad_best[reduce]
                    # restarting from x_best: momentum restarts too (x_prev = x_adv gives no momentum term)
                    x_prev = x_prev.clone()
                    x_prev[reduce] = x_best[reduce]
        out[~fooled] = x_best[~fooled]
        return out, fooled

    def _targets(self, logits: Tensor) -> list[Tensor | None]:
        return [None]

    def _perturb(
        self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None, extras: dict[str, Any]
    ) -> Tensor:
        with torch.no_grad():
            logits = model(x)
        adv = x.clone()
        todo = torch.nonzero(logits.argmax(1) == y).flatten()
        for target in self._targets(logits):
            for _ in range(self.restarts):
                if not len(todo):
                    break
                tgt = target[todo] if target is not None else None
                out, fooled = self._run(model, x[todo], y[todo], tgt, generator)
                adv[todo] = out
                todo = todo[~fooled]
        extras["robust"] = len(todo)
        return adv


@register_attack
class APGDCE(_APGDBase):
    """APGD with cross-entropy loss (L-inf). Parameters: ``eps``, ``steps``, ``restarts``, ``rho``."""

    name = "apgd-ce"
    title = "APGD-CE"
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "standard": {"eps": 8 / 255, "steps": 100, "restarts": 1, "rho": 0.75}
    }


@register_attack
class APGDT(_APGDBase):
    """Targeted APGD with the DLR loss (L-inf). Parameters: ``eps``, ``steps``, ``restarts``, ``rho``,
    ``n_target_classes`` (targets = the 2nd..(n+1)-th highest clean logits)."""

    name = "apgd-t"
    title = "APGD-T"
    targeted = True
    loss_kind = "dlr-targeted"
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "standard": {"eps": 8 / 255, "steps": 100, "restarts": 1, "rho": 0.75, "n_target_classes": 9}
    }

    def validate(self) -> None:
        super().validate()
        self._check_int("n_target_classes", 1)

    def runs(self) -> int:
        return self.restarts * self.n_target_classes

    def _describe_extra(self) -> list[str]:
        return [f"{self.n_target_classes} targets", *super()._describe_extra()]

    def _targets(self, logits: Tensor) -> list[Tensor | None]:
        if logits.shape[1] < 4:
            raise RobustarchError("apgd-t's DLR loss needs a model with at least 4 classes")
        order = logits.argsort(1, descending=True)
        k = min(self.n_target_classes, logits.shape[1] - 1)
        return [order[:, j] for j in range(1, k + 1)]
