"""Square Attack (L-inf, score-based black box): Andriushchenko, Croce, Flammarion & Hein 2020, "Square
Attack: a query-efficient black-box adversarial attack via random search" (ECCV 2020), Algorithm 1/2.

Uses only the model's scores, never its gradients. Start: vertical stripes ``x + eps * s``, one random sign
per (channel, column). Each iteration proposes, for every still-unbroken example, a square window of side
``round(sqrt(p * H * W))`` (at least 1, at most H-1) at a random position whose perturbation is set to a
random sign per channel (``+-eps`` around ``x``, re-drawn when it would change nothing), and keeps it when the
margin loss ``z_y - max_{j != y} z_j`` decreases. ``p`` starts at ``p_init`` and is halved after 10, 50, 200,
500, 1000, 2000, 4000, 6000 and 8000 of every 10,000 iterations. An example stops being queried once its
margin is negative (misclassified). ``queries`` counts model evaluations per example, the start included.

Random draws, in order: per restart, the stripe signs ``(N, C, 1, W)``; then per iteration the window row
and column for each unbroken example and its signs ``(n, C)``, plus re-draws for no-op proposals.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from robustarch.attacks._base import Attack, Model, rand, randint
from robustarch.attacks._loss import per_example_loss
from robustarch.attacks._registry import register_attack
from robustarch.errors import RobustarchError

_HALVING = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, it: int, n_iters: int) -> float:
    """The fraction of pixels a square covers at iteration ``it`` of ``n_iters`` (the paper's schedule)."""
    scaled = int(it / max(n_iters, 1) * 10000)
    return p_init / 2 ** sum(scaled > h for h in _HALVING)


def _signs(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    return torch.where(rand(shape, generator, like) < 0.5, -1.0, 1.0).to(like.dtype)


@register_attack
class Square(Attack):
    """Square Attack (L-inf). Parameters: ``eps``, ``queries`` (per example), ``p_init``, ``restarts``."""

    name = "square"
    title = "Square"
    box = "black"
    profiles = ("standard",)
    paper = (
        "Andriushchenko et al. 2020, Square Attack: a query-efficient black-box adversarial attack via "
        "random search (arXiv:1912.00049)"
    )
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "standard": {"eps": 8 / 255, "queries": 5000, "p_init": 0.8, "restarts": 1}
    }

    def validate(self) -> None:
        self._check_int("queries", 1)
        self._check_number("p_init", 0.0, 1.0)
        if self.p_init <= 0:
            raise RobustarchError(f"{self.name}: p_init must be > 0")

    def randomized(self) -> bool:
        return True

    def gradient_passes(self) -> int:
        return 0

    def forward_passes(self) -> int:
        return 1 + self.restarts * (self.queries + 1)

    def _describe_extra(self) -> list[str]:
        return [f"{self.queries} queries"] + ([f"{self.restarts} restarts"] if self.restarts > 1 else [])

    def _margin(self, model: Model, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            return -per_example_loss(model(x), y, "margin")

    def _run(
        self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        n, c, h, w = x.shape
        eps = self.eps
        lo, hi = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
        best = torch.minimum(torch.maximum(x + eps * _signs((n, c, 1, w), generator, x), lo), hi)
        margin = self._margin(model, best, y)
        queries = torch.ones(n, device=x.device)
        rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
        for it in range(1, self.queries):
            idx = torch.nonzero(margin > 0).flatten()
            if not len(idx):
                break
            side = round(math.sqrt(square_fraction(self.p_init, it, self.queries) * h * w))
            side = max(1, min(side, h - 1, w - 1)) if min(h, w) > 1 else 1
            m = len(idx)
            r0 = randint(h - side + 1, (m,), generator, x).view(m, 1, 1, 1)
            c0 = randint(w - side + 1, (m,), generator, x).view(m, 1, 1, 1)
            window = (rows >= r0) & (rows < r0 + side) & (cols >= c0) & (cols < c0 + side)
            xi, cur = x[idx], best[idx]
            cand = cur
            pending = torch.ones(m, dtype=torch.bool, device=x.device)
            for _ in range(10):  # re-draw proposals that would leave the window unchanged
                signs = _signs((m, c), generator, x).view(m, c, 1, 1)
                prop = torch.where(window, xi + eps * signs, cur)
                prop = torch.minimum(torch.maximum(prop, lo[idx]), hi[idx])
                cand = torch.where(pending.view(m, 1, 1, 1), prop, cand)
                same = ((cand - cur).abs().flatten(1).amax(1) < 1e-7) & pending
                pending = same
                if not bool(pending.any()):
                    break
            new_margin = self._margin(model, cand, y[idx])
            queries[idx] += 1
            improved = new_margin < margin[idx]
            best[idx[improved]] = cand[improved]
            margin[idx[improved]] = new_margin[improved]
        return best, queries

    def _perturb(
        self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None, extras: dict[str, Any]
    ) -> Tensor:
        adv = x.clone()
        if self.eps == 0:  # nothing to search; every proposal would be a no-op
            extras["queries"] = torch.zeros(len(x), device=x.device)
            return adv
        todo = torch.nonzero(self._margin(model, x, y) > 0).flatten()
        total_queries = torch.zeros(len(x), device=x.device)
        for _ in range(self.restarts):
            if not len(todo):
                break
            out, q = self._run(model, x[todo], y[todo], generator)
            adv[todo] = out
            total_queries[todo] += q
            todo = todo[self._margin(model, out, y[todo]) > 0]
        extras["queries"] = total_queries
        extras["robust"] = len(todo)
        return adv
