"""FAB, the fast adaptive boundary attack: Croce & Hein 2020, "Minimally distorted adversarial examples with a
fast adaptive boundary attack" (ICML 2020, arXiv:1907.02044), L-inf and L2, run for robust accuracy as
AutoAttack runs it (Croce & Hein 2020, arXiv:2003.01690).

Each iteration linearizes the decision boundary at the iterate ``x_k``: for each candidate class ``j`` it
takes ``f_j - f_y`` and its input gradient ``g_j``, and keeps the class whose linearized boundary is closest,
``|f_j - f_y| / ||g_j||_q`` (``q`` the dual norm: L1 for L-inf, L2 for L2). With ``d_k`` and ``d_0`` the
smallest steps from ``x_k`` and from the original image ``x_0`` onto that hyperplane within the box [0,1]
(:func:`boundary_step`, the paper's projection),
``alpha = min(||d_k|| / (||d_k|| + ||d_0||), alpha_max)`` and
``x_{k+1} = clip01((1 - alpha) (x_k + eta d_k) + alpha (x_0 + eta d_0))``: a step past the boundary
(``eta``), biased towards the original image. A misclassified ``x_{k+1}`` is pulled back,
``x_{k+1} <- x_0 + beta (x_{k+1} - x_0)``, so that the search follows the boundary towards ``x_0``.

- ``fab``: untargeted; the candidates are all ``n_classes - 1`` classes other than the label, so every
  iteration takes ``n_classes - 1`` backward passes (one per Jacobian row, sharing one forward).
- ``fab-t``: AutoAttack's FAB-T; one run per target among the ``n_target_classes`` (default 9) highest clean
  logits after the top one, one backward pass per iteration. As in AutoAttack an example counts as broken
  when it is misclassified, whichever the class.

Robust-accuracy use, as inside AutoAttack: FAB minimizes the perturbation, but an example counts as broken as
soon as an iterate misclassifies it at a norm ``<= eps``; it is returned at that point and leaves the batch
(AutoAttack's decision is the same: its smallest adversarial norm is ``<= eps`` exactly when some iterate's
is). Examples never broken, and examples the model already misclassifies, are returned clean. Later restarts
and targets attack only the examples still robust; inside :func:`robustarch.attacks.row_budget` (the
``autoattack`` cascade opens one) consecutive runs are stacked into one batch
(:mod:`robustarch.attacks._runs`).

Random draws: the first run (restart) per target starts at ``x_0`` and draws nothing, so with ``restarts=1``
(the default, as in AutoAttack "standard") the attack is deterministic. Each later restart draws, for the
still-robust images, one ``rand`` (L-inf: ``t = 2u - 1``) or ``randn`` (L2: ``t``) of their shape and starts
at ``clip01(x_0 + start_scale * eps * t / ||t||)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from robustarch.attacks._base import Attack, Model, rand, randn
from robustarch.attacks._passes import forward_at
from robustarch.attacks._registry import register_attack
from robustarch.attacks._runs import repeat_rows, run_in_sequence
from robustarch.errors import RobustarchError, UnknownNameError

NORMS = ("Linf", "L2")
# the default budget per norm when only the norm is given (RobustBench's CIFAR budgets)
DEFAULT_EPS = {"Linf": 8 / 255, "L2": 0.5}


def lp_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-example L-inf or L2 norm of a batch (N, ...)."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


def dual_norm(grad: Tensor, norm: str) -> Tensor:
    """Per-example dual norm of a gradient (L1 for an L-inf threat, L2 for L2): the rate at which a unit
    step in the threat norm can change the function, so ``|f| / dual_norm(grad f)`` is the distance to the
    linearized boundary ``f = 0``."""
    flat = grad.flatten(1)
    return flat.abs().sum(1) if norm == "Linf" else flat.norm(dim=1)


def _capped_level(weight: Tensor, cap: Tensor, target: Tensor) -> Tensor:
    """Per row, the ``s >= 0`` with ``sum_i weight_i * min(s, cap_i) = target`` (``weight``, ``cap`` >= 0,
    shape (n, D); ``target`` >= 0, shape (n,)); ``max_i cap_i`` where even that falls short of ``target``.

    The left side is piecewise linear and non-decreasing in ``s`` with kinks at the caps: sort them, evaluate
    the sum at each kink and solve on the segment where it first reaches ``target``."""
    caps, order = cap.sort(dim=1)
    w = weight.gather(1, order)
    capped = (w * caps).cumsum(1)  # sum over the caps up to k of weight * cap
    w_upto = w.cumsum(1)
    w_total = w_upto[:, -1:]
    at_kink = (capped + caps * (w_total - w_upto)).cummax(1).values  # non-decreasing despite rounding
    k = torch.searchsorted(at_kink, target[:, None].contiguous()).clamp(max=cap.shape[1] - 1)
    capped_before = (capped - w * caps).gather(1, k)  # caps strictly below the segment
    w_from = (w_total - w_upto + w).gather(1, k)  # weights still growing on the segment
    s = (target[:, None] - capped_before) / w_from.clamp_min(torch.finfo(cap.dtype).tiny)
    lower = torch.where(k > 0, caps.gather(1, (k - 1).clamp(min=0)), torch.zeros_like(s))
    s = torch.minimum(torch.maximum(s, lower), caps.gather(1, k))
    reachable = at_kink[:, -1:] >= target[:, None]
    return torch.where(reachable, s, caps[:, -1:])[:, 0]


def boundary_step(points: Tensor, w: Tensor, value: Tensor, norm: str) -> Tensor:
    """The smallest step ``d`` (L-inf or L2) with ``value + <w, d> = 0`` and ``points + d`` in [0,1]: the
    projection onto the hyperplane of an affine function that is ``value`` at ``points``, within the box
    (Croce & Hein 2020, Sec. 3.1). Rows of (n, D). Where the box keeps the hyperplane out of reach, the step
    goes as far towards it as the box allows.

    Moving coordinate ``i`` against the sign of ``value * w_i`` by ``m_i`` (at most ``room_i``, its distance
    to the box) changes the function by ``|w_i| m_i``. L-inf: ``m_i = min(s, room_i)`` for the smallest radius
    ``s`` that closes the gap; L2: ``m_i = |w_i| min(s, room_i / |w_i|)`` (the Euclidean projection, clipped
    coordinate-wise to the box). Both solve ``sum_i weight_i min(s, cap_i) = |value|`` for ``s``
    (:func:`_capped_level`)."""
    down = torch.where(value[:, None] < 0, -w, w) > 0  # coordinates that must decrease to close the gap
    moving = w != 0
    room = torch.where(down, points, 1.0 - points).clamp_min(0.0) * moving
    direction = torch.where(down, -1.0, 1.0).to(points.dtype) * moving
    gap = value.abs()
    mag = w.abs()
    if norm == "Linf":
        s = _capped_level(mag, room, gap)
        return direction * torch.minimum(room, s[:, None])
    usable = mag > torch.finfo(w.dtype).tiny  # below it, room / |w| would overflow
    reach = torch.where(usable, room / mag.clamp_min(torch.finfo(w.dtype).tiny), torch.zeros_like(room))
    s = _capped_level(mag * mag, reach, gap)
    return direction * mag * torch.minimum(reach, s[:, None])


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    """A per-example mask shaped to broadcast over ``like``'s (N, C, H, W)."""
    return mask.view(-1, *[1] * (like.dim() - 1))


def closest_boundary(model: Model, x: Tensor, y: Tensor, classes: Tensor, norm: str) -> tuple[Tensor, Tensor]:
    """Among the candidate classes ``classes`` (n, K), the one whose linearized boundary with the label is
    closest to ``x`` in the threat ``norm``: returns its ``f_j - f_y`` (n,) and that difference's gradient.

    One forward and K backward passes (the Jacobian rows FAB needs, one per candidate); only the closest row
    is kept, so memory does not grow with K."""
    x = x.detach().requires_grad_(True)
    n, k_total = classes.shape
    best_f, best_g = x.new_zeros(n), torch.zeros_like(x)
    best_dist = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    with torch.enable_grad():
        logits = model(x)
        diffs = logits.gather(1, classes) - logits.gather(1, y[:, None])
        for k in range(k_total):
            (g,) = torch.autograd.grad(diffs[:, k].sum(), x, retain_graph=k + 1 < k_total)
            f = diffs[:, k].detach()
            dist = f.abs() / (dual_norm(g, norm) + 1e-12)
            closer = dist < best_dist  # strict: a tie keeps the lower class, as an argmin would
            best_dist = torch.where(closer, dist, best_dist)
            best_f = torch.where(closer, f, best_f)
            best_g = torch.where(_rows(closer, x), g, best_g)
    return best_f, best_g


class _FABBase(Attack):
    """What FAB and FAB-T share: the iteration, the robust-accuracy decision, restarts and their starts."""

    profiles = ("standard",)
    paper = (
        "Croce & Hein 2020, Minimally distorted adversarial examples with a fast adaptive boundary attack "
        "(arXiv:1907.02044)"
    )

    def __init__(self, profile: str = "standard", **params: Any):
        norm = params.get("norm", "Linf")
        if "eps" not in params and norm in DEFAULT_EPS:  # the budget that goes with the chosen norm
            params["eps"] = DEFAULT_EPS[norm]
        super().__init__(profile, **params)

    def validate(self) -> None:
        if self.norm not in NORMS:
            raise UnknownNameError(f"norm of attack {self.name!r}", str(self.norm), NORMS)
        if self.steps < 1:
            raise RobustarchError(f"{self.name}: steps must be >= 1, got {self.steps}")
        self._check_number("alpha_max", 0.0, 1.0)
        self._check_number("eta", 0.0)
        self._check_number("beta", 0.0, 1.0)
        self._check_number("start_scale", 0.0)

    def randomized(self) -> bool:
        return self.restarts > 1  # only restarts after the first start at random points

    def runs(self) -> int:
        """Independent FAB runs per example, at most (restarts x targets)."""
        return self.restarts

    def candidates_per_step(self) -> int:
        """Backward passes per iteration: the candidate classes whose boundary is linearized."""
        raise NotImplementedError

    def gradient_passes(self) -> int:
        return self.runs() * self.steps * self.candidates_per_step()

    def forward_passes(self) -> int:
        return 1 + self.runs() * self.steps  # the clean prediction, then one check per iteration

    def _title(self) -> str:
        return self.title  # AutoAttack's names; the iteration count goes with the details

    def _describe_extra(self) -> list[str]:
        return [f"{self.steps} steps"] + ([f"{self.restarts} restarts"] if self.restarts > 1 else [])

    # ---- the attack ---------------------------------------------------------------------------------------
    def _candidates(self, logits: Tensor, y: Tensor) -> list[Tensor]:
        """The candidate-class sets (each (N, K)), one per sequence of runs (one per target for FAB-T)."""
        raise NotImplementedError

    def _step(self, model: Model, cur: Tensor, x0: Tensor, y: Tensor, classes: Tensor) -> Tensor:
        """One FAB iteration from ``cur`` (Croce & Hein 2020, Algorithm 1)."""
        f, g = closest_boundary(model, cur, y, classes, self.norm)
        n, w = len(cur), g.flatten(1)
        value_at_x0 = f + (w * (x0 - cur).flatten(1)).sum(1)  # the same affine function, read at x0
        d = boundary_step(
            torch.cat([cur.flatten(1), x0.flatten(1)]),
            torch.cat([w, w]),
            torch.cat([f, value_at_x0]),
            self.norm,
        )
        size = lp_norm(d, self.norm).clamp_min(1e-8)
        alpha = _rows((size[:n] / (size[:n] + size[n:])).clamp(0.0, self.alpha_max), cur)
        d_cur, d_x0 = d[:n].view_as(cur), d[n:].view_as(cur)
        return ((1 - alpha) * (cur + self.eta * d_cur) + alpha * (x0 + self.eta * d_x0)).clamp(0.0, 1.0)

    def _run(
        self, model: Model, x0: Tensor, y: Tensor, classes: Tensor, start: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One FAB run; returns (the first point misclassified within eps, else x0; whether there was one).
        Broken examples leave the batch at once."""
        out, broken = x0.clone(), torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
        idx, cur = torch.arange(len(x0), device=x0.device), start
        for _ in range(self.steps):
            if not len(idx):
                break
            orig = x0[idx]
            cur = self._step(model, cur, orig, y[idx], classes[idx])
            with torch.no_grad():
                fooled = model(cur).argmax(1) != y[idx]
            done = fooled & (lp_norm(cur - orig, self.norm) <= self.eps)
            out[idx[done]], broken[idx[done]] = cur[done], True
            # misclassified but too far: step back towards x0 to find a closer boundary point
            cur = torch.where(_rows(fooled & ~done, cur), orig + self.beta * (cur - orig), cur)
            idx, cur = idx[~done], cur[~done]
        return out, broken

    def _start(self, x0: Tensor, restart: int, generator: torch.Generator | None) -> Tensor:
        """The first run starts at x0; later ones at a random point ``start_scale * eps`` away."""
        if restart == 0:
            return x0
        if self.norm == "Linf":
            t = 2.0 * rand(x0.shape, generator, x0) - 1.0
        else:
            t = randn(x0.shape, generator, x0)
        radius = self.start_scale * self.eps / _rows(lp_norm(t, self.norm).clamp_min(1e-12), x0)
        return (x0 + radius * t).clamp(0.0, 1.0)

    def _perturb(
        self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None, extras: dict[str, Any]
    ) -> Tensor:
        adv = x.clone()
        logits = forward_at(model, x)
        self._check_logits(logits, y)
        todo = torch.nonzero(logits.argmax(1) == y).flatten()
        if self.eps == 0:  # no point within norm 0 differs from the (correctly classified) image
            extras["robust"] = len(todo)
            return adv
        runs = [(c, restart) for c in self._candidates(logits, y) for restart in range(self.restarts)]

        def attack(block: range, todo: Tensor) -> tuple[Tensor, Tensor]:
            # an unbroken example's output is x0, its value in adv: writing it back changes nothing
            xs, k = x[todo], len(block)
            starts = torch.cat([self._start(xs, runs[r][1], generator) for r in block])
            classes = torch.cat([runs[r][0][todo] for r in block])
            return self._run(model, repeat_rows(xs, k), repeat_rows(y[todo], k), classes, starts)

        todo = run_in_sequence(len(runs), todo, adv, attack)
        extras["robust"] = len(todo)
        return adv

    def _check_logits(self, logits: Tensor, y: Tensor) -> None:
        if logits.dim() != 2 or logits.shape[1] < 2:
            raise RobustarchError(
                f"{self.name}: the model must return logits (N, classes >= 2), got shape "
                f"{tuple(logits.shape)}"
            )
        if len(y) and int(y.max()) >= logits.shape[1]:
            raise RobustarchError(
                f"label {int(y.max())} out of range for a model with {logits.shape[1]} classes"
            )


# AutoAttack's FAB defaults (fab_base.py), shared by FAB and FAB-T
FAB_DEFAULTS: dict[str, Any] = {
    "eps": 8 / 255,
    "norm": "Linf",
    "steps": 100,
    "restarts": 1,
    "alpha_max": 0.1,
    "eta": 1.05,
    "beta": 0.9,
    "start_scale": 0.5,
}


@register_attack
class FAB(_FABBase):
    """Untargeted FAB (L-inf or L2). Parameters: ``eps``, ``norm``, ``steps``, ``restarts``, ``alpha_max``,
    ``eta``, ``beta``, ``start_scale``, ``n_classes`` (the model's classes: one backward pass
    per other class and step)."""

    name = "fab"
    title = "FAB"
    defaults: ClassVar[dict[str, dict[str, Any]]] = {"standard": {**FAB_DEFAULTS, "n_classes": 10}}

    def validate(self) -> None:
        super().validate()
        self._check_int("n_classes", 2)

    def candidates_per_step(self) -> int:
        return self.n_classes - 1

    def _check_logits(self, logits: Tensor, y: Tensor) -> None:
        super()._check_logits(logits, y)
        if logits.shape[1] != self.n_classes:
            raise RobustarchError(
                f"fab: the model has {logits.shape[1]} classes but the attack was made for n_classes="
                f"{self.n_classes}; untargeted FAB takes one backward pass per other class and step, so say "
                f"so: create('fab', n_classes={logits.shape[1]}) (or use 'fab-t', one pass per step)"
            )

    def _candidates(self, logits: Tensor, y: Tensor) -> list[Tensor]:
        others = torch.arange(logits.shape[1] - 1, device=y.device).expand(len(y), -1)
        return [others + (others >= y[:, None]).long()]  # every class but the label, in class order


@register_attack
class FABT(_FABBase):
    """Targeted FAB, AutoAttack's FAB-T (L-inf or L2). Parameters as ``fab`` without ``n_classes``, plus
    ``n_target_classes`` (targets = the 2nd..(n+1)-th highest clean logits, one run sequence each)."""

    name = "fab-t"
    title = "FAB-T"
    targeted = True
    defaults: ClassVar[dict[str, dict[str, Any]]] = {"standard": {**FAB_DEFAULTS, "n_target_classes": 9}}

    def validate(self) -> None:
        super().validate()
        self._check_int("n_target_classes", 1)

    def runs(self) -> int:
        return self.restarts * self.n_target_classes

    def candidates_per_step(self) -> int:
        return 1

    def _describe_extra(self) -> list[str]:
        return [f"{self.n_target_classes} targets", *super()._describe_extra()]

    def _candidates(self, logits: Tensor, y: Tensor) -> list[Tensor]:
        order = logits.argsort(1, descending=True)
        k = min(self.n_target_classes, logits.shape[1] - 1)
        return [order[:, j : j + 1] for j in range(1, k + 1)]
