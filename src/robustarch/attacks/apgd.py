"""APGD-CE, APGD-DLR and APGD-T: Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks" (ICML 2020), Algorithm 1, L-inf and L2, step for step as
AutoAttack's own code (``autopgd_base.py`` of fra31/auto-attack, packaged as ``pyautoattack``): with the
same random draws, the iterates are the same to the last bit (``tests/test_attacks_reference.py``).

Start: ``x_0 = clip01(x + eps * t / (||t|| + 1e-12))`` with ``t ~ U(-1, 1)`` (L-inf) or ``t ~ N(0, I)`` (L2),
the norm being the threat model's. Step size ``eta = 2 * eps`` per example. Each iteration:
``z = P(x_k + eta * d(g_k))`` with ``d = sign`` (L-inf) or ``g / (||g||_2 + 1e-12)`` (L2), then
``x_{k+1} = P(x_k + a (z - x_k) + (1 - a) (x_k - x_{k-1}))``, ``a = 1`` at the first iteration and 0.75 after
(``P``: onto the eps-ball, then [0,1]). Momentum is never reset: after a step-size halving the iterate
restarts from the best point but ``x_{k-1}`` stays the last iterate, as AutoAttack's code has it.

Checkpoints: after ``w_1 = max(int(0.22 n), 1)`` iterations, then windows shrinking by ``max(int(0.03 n), 1)``
down to ``max(int(0.06 n), 1)`` (n = 100: 22, 41, 57, 70, 80, 87, 93, 99; the paper's ``ceil(p_j n)`` would
give 58 for the third). At each, an example's step size is halved and its iterate reset to its best point
when (1) its loss increased in at most ``rho * w`` of the ``w`` consecutive-iterate comparisons of the
window, or (2) the step was not halved at the previous checkpoint and the best loss has not improved since.
The first window's comparisons are those of AutoAttack's loss buffer, which compares the first loss with
the buffer's unfilled last slot (0) and never uses the loss at ``x_0``.

- ``apgd-ce`` maximises cross-entropy; ``apgd-dlr`` the DLR loss (untargeted, needs >= 3 classes).
- ``apgd-t`` maximises the targeted DLR loss, once per target among the ``n_target_classes`` (default 9)
  highest-scoring classes other than the top one at the clean input, each with ``restarts`` runs.

Per-example worst case: only initially correct, still unbroken examples are attacked by later restarts and
targets; an example is returned at the first point that misclassifies it (AutoAttack returns the last),
else at its highest-loss point. ``early_stop`` (default on) drops an example from the batch at that first
point, so the rest run without it: the same outcome for every example, fewer passes. ``eot_samples``:
gradients averaged over that many forwards (AutoAttack's ``eot_iter``, for randomized models). Inside
:func:`robustarch.attacks.row_budget` (the ``autoattack`` cascade opens one) consecutive runs are stacked
into one batch (:mod:`robustarch.attacks._runs`).

Random draws: per run (restart/target), one ``rand`` (L-inf) or ``randn`` (L2) of the attacked images'
shape for the start point.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from robustarch.attacks._base import Attack, Model, rand, randn
from robustarch.attacks._loss import loss_and_grad
from robustarch.attacks._passes import forward_at
from robustarch.attacks._registry import register_attack
from robustarch.attacks._runs import repeat_rows, run_in_sequence
from robustarch.errors import RobustarchError


def checkpoints(steps: int) -> list[int]:
    """Iteration counts after which APGD checks its step size, as AutoAttack's code schedules them."""
    first, least, shrink = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, at, window = [], 0, first
    while at + window <= steps:
        at += window
        out.append(at)
        window = max(window - shrink, least)
    return out


def _norms(t: Tensor) -> Tensor:
    """Per-example L2 norms written as AutoAttack writes them (``sqrt(sum(t**2))``; ``torch.norm`` rounds
    differently), shaped to broadcast."""
    return (t**2).flatten(1).sum(-1).sqrt().view(-1, *([1] * (t.dim() - 1)))


def _unit(t: Tensor, norm: str) -> Tensor:
    """``t / (||t|| + 1e-12)`` per example, in the threat model's norm (AutoAttack's ``normalize``)."""
    size = t.abs().flatten(1).amax(1).view(-1, *([1] * (t.dim() - 1))) if norm == "Linf" else _norms(t)
    return t / (size + 1e-12)


class _APGDBase(Attack):
    profiles = ("standard",)
    paper = (
        "Croce & Hein 2020, Reliable evaluation of adversarial robustness with an ensemble of diverse "
        "parameter-free attacks (arXiv:2003.01690)"
    )
    loss_kind = "ce"
    min_classes = 2

    def randomized(self) -> bool:
        return True

    def runs(self) -> int:
        """Restarts x targets: independent APGD runs per example, at most."""
        return self.restarts

    def gradient_passes(self) -> int:
        return self.runs() * (self.steps + 1) * self.eot

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

    # ---- one run ----------------------------------------------------------------------------------------
    def _project(self, v: Tensor, x: Tensor) -> Tensor:
        """Onto the eps-ball around ``x``, then [0,1], with AutoAttack's expressions."""
        if self.threat_norm() == "L2":
            delta = v - x
            return torch.clamp(x + _unit(delta, "L2") * torch.clamp(_norms(delta), max=self.eps), 0.0, 1.0)
        return torch.clamp(torch.min(torch.max(v, x - self.eps), x + self.eps), 0.0, 1.0)

    def _direction(self, grad: Tensor) -> Tensor:
        return _unit(grad, "L2") if self.threat_norm() == "L2" else torch.sign(grad)

    def _start(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        if self.threat_norm() == "L2":
            t = randn(x.shape, generator, x)
        else:
            t = 2 * rand(x.shape, generator, x) - 1
        return (x + self.eps * torch.ones_like(x) * _unit(t, self.threat_norm())).clamp(0.0, 1.0)

    def _run(
        self, model: Model, x: Tensor, y: Tensor, target: Tensor | None, x_adv: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One APGD run from the start point ``x_adv``; returns (returned point, whether it misclassifies)."""
        n = len(x)
        logits, loss, grad = self._gradient(model, x_adv, y, target)
        out = x_adv.clone()
        fooled = logits.argmax(1) != y
        # one row per example still attacked; early stopping drops the rows of broken examples
        s: dict[str, Tensor] = {
            "rows": torch.arange(n, device=x.device),
            "x": x,
            "y": y,
            "x_adv": x_adv,
            "x_old": x_adv.clone(),
            "grad": grad,
            "x_best": x_adv.clone(),
            "grad_best": grad.clone(),
            "loss_best": loss.clone(),
            "step": torch.full((n, *([1] * (x.dim() - 1))), 2.0 * self.eps, device=x.device, dtype=x.dtype),
            "losses": torch.zeros((n, self.steps), device=x.device, dtype=loss.dtype),
            "best_at_check": loss.clone(),
            "reduced_at_check": torch.ones(n, dtype=torch.bool, device=x.device),
            "fooled": fooled.clone(),
        }
        if target is not None:
            s["target"] = target
        if self.stops_early:
            s = {k: v[~fooled] for k, v in s.items()}
        windows = dict(zip(checkpoints(self.steps), self._windows(), strict=True))
        for i in range(self.steps):
            if not len(s["rows"]):
                break
            s = self._iteration(model, s, i, (out, fooled), windows.get(i + 1))
        keep = ~s["fooled"]
        out[s["rows"][keep]] = s["x_best"][keep]
        return out, fooled

    def _windows(self) -> list[int]:
        marks = checkpoints(self.steps)
        return [b - a for a, b in zip([0, *marks[:-1]], marks, strict=True)]

    def _gradient(
        self, model: Model, x_adv: Tensor, y: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        return loss_and_grad(
            model, x_adv, y, kind=self.loss_kind, target=target, reduction="sum", samples=self.eot
        )

    def _iteration(
        self,
        model: Model,
        s: dict[str, Tensor],
        i: int,
        result: tuple[Tensor, Tensor],
        window: int | None,
    ) -> dict[str, Tensor]:
        """Iteration ``i``: the momentum step, the new gradient, the bookkeeping, a checkpoint if one is due.
        ``result`` = (returned points, fooled flags) of the whole run, written where an example breaks."""
        a = 0.75 if i > 0 else 1.0
        x_adv, momentum = s["x_adv"], s["x_adv"] - s["x_old"]
        s["x_old"] = x_adv
        z = self._project(x_adv + s["step"] * self._direction(s["grad"]), s["x"])
        x_adv = self._project(x_adv + (z - x_adv) * a + momentum * (1 - a), s["x"])
        logits, loss, grad = self._gradient(model, x_adv, s["y"], s.get("target"))
        s["x_adv"], s["grad"] = x_adv, grad
        wrong = logits.argmax(1) != s["y"]
        first = wrong & ~s["fooled"]
        out, fooled = result
        out[s["rows"][first]] = x_adv[first]
        fooled[s["rows"][first]] = True
        s["fooled"] = s["fooled"] | wrong
        if self.stops_early and bool(first.any()):
            keep = ~s["fooled"]
            s, loss = {k: v[keep] for k, v in s.items()}, loss[keep]
        s["losses"][:, i] = loss
        better = loss > s["loss_best"]
        s["x_best"][better], s["grad_best"][better] = s["x_adv"][better], s["grad"][better]
        s["loss_best"][better] = loss[better]
        if window is not None:
            self._checkpoint(s, i, window)
        return s

    def _checkpoint(self, s: dict[str, Tensor], i: int, window: int) -> None:
        """Halve the step and go back to the best point where the loss oscillated or stalled."""
        cols = torch.arange(i - window + 1, i + 1, device=s["losses"].device)
        # (cols - 1) % steps: the first window's last comparison reads the buffer's unfilled last slot
        # (0), as AutoAttack's ``loss_steps[j - k - 1]`` does with Python's negative indexing
        increases = (s["losses"][:, cols] > s["losses"][:, (cols - 1) % self.steps]).sum(1)
        oscillating = increases <= window * self.rho
        stalled = ~s["reduced_at_check"] & (s["best_at_check"] >= s["loss_best"])
        reduce = oscillating | stalled
        s["reduced_at_check"], s["best_at_check"] = reduce, s["loss_best"].clone()
        if bool(reduce.any()):
            s["step"][reduce] /= 2.0
            s["x_adv"] = s["x_adv"].clone()
            s["x_adv"][reduce] = s["x_best"][reduce]
            s["grad"] = s["grad"].clone()
            s["grad"][reduce] = s["grad_best"][reduce]

    # ---- runs over restarts and targets ---------------------------------------------------------------
    def _targets(self, logits: Tensor) -> list[Tensor | None]:
        return [None]

    def _perturb(
        self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None, extras: dict[str, Any]
    ) -> Tensor:
        logits = forward_at(model, x)
        if logits.dim() == 2 and logits.shape[1] < self.min_classes:
            raise RobustarchError(
                f"{self.name}'s loss needs a model with at least {self.min_classes} classes, got "
                f"{logits.shape[1]}"
            )
        adv = x.clone()
        todo = torch.nonzero(logits.argmax(1) == y).flatten()
        targets = [t for t in self._targets(logits) for _ in range(self.restarts)]  # one per run

        def attack(runs: range, todo: Tensor) -> tuple[Tensor, Tensor]:
            xs, k = x[todo], len(runs)
            starts = torch.cat([self._start(xs, generator) for _ in runs])  # drawn in run order
            tgt = None if targets[0] is None else torch.cat([targets[r][todo] for r in runs])
            return self._run(model, repeat_rows(xs, k), repeat_rows(y[todo], k), tgt, starts)

        todo = run_in_sequence(len(targets), todo, adv, attack)
        extras["robust"] = len(todo)
        return adv


_APGD_DEFAULTS: dict[str, Any] = {
    "eps": 8 / 255,
    "steps": 100,
    "restarts": 1,
    "rho": 0.75,
    "norm": "Linf",
    "early_stop": True,
    "eot_samples": 1,
}


@register_attack
class APGDCE(_APGDBase):
    """APGD with cross-entropy loss. Parameters: ``eps``, ``steps``, ``restarts``, ``rho``, ``norm``,
    ``early_stop``, ``eot_samples``."""

    name = "apgd-ce"
    title = "APGD-CE"
    defaults: ClassVar[dict[str, dict[str, Any]]] = {"standard": dict(_APGD_DEFAULTS)}


@register_attack
class APGDDLR(_APGDBase):
    """APGD with the (untargeted) DLR loss, invariant to shifting and rescaling the logits. Parameters as
    ``apgd-ce``; needs >= 3 classes. With EoT it is the second attack of AutoAttack's ``rand`` version."""

    name = "apgd-dlr"
    title = "APGD-DLR"
    loss_kind = "dlr"
    min_classes = 3
    defaults: ClassVar[dict[str, dict[str, Any]]] = {"standard": dict(_APGD_DEFAULTS)}


@register_attack
class APGDT(_APGDBase):
    """Targeted APGD with the DLR loss. Parameters as ``apgd-ce`` plus ``n_target_classes`` (targets = the
    2nd..(n+1)-th highest clean logits); needs >= 4 classes."""

    name = "apgd-t"
    title = "APGD-T"
    targeted = True
    loss_kind = "dlr-targeted"
    min_classes = 4
    defaults: ClassVar[dict[str, dict[str, Any]]] = {"standard": {**_APGD_DEFAULTS, "n_target_classes": 9}}

    def validate(self) -> None:
        super().validate()
        self._check_int("n_target_classes", 1)

    def runs(self) -> int:
        return self.restarts * self.n_target_classes

    def _describe_extra(self) -> list[str]:
        return [f"{self.n_target_classes} targets", *super()._describe_extra()]

    def _targets(self, logits: Tensor) -> list[Tensor | None]:
        # AutoAttack's order: ascending sort, the target of round j is column -(j + 1)
        order = logits.sort(dim=1)[1]
        k = min(self.n_target_classes, logits.shape[1] - 1)
        return [order[:, -(j + 1)] for j in range(1, k + 1)]
