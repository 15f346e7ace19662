"""Square Attack (score-based black box, L-inf and L2): Andriushchenko, Croce, Flammarion & Hein 2020, "Square
Attack: a query-efficient black-box adversarial attack via random search" (ECCV 2020), Algorithms 1-3.

Uses only the model's scores, never its gradients. A proposal is kept when the margin
``z_y - max_{j != y} z_j`` decreases; an example stops being queried once its margin is <= 0
(misclassified). The square's area ``p`` (a fraction of the image) starts at ``p_init`` and is halved after
iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000.

Two variants (``variant``):

- ``"square"`` (default), as the authors' reference code: every example draws its own window (any position)
  and signs each iteration; an L-inf proposal that would change nothing is re-drawn (up to 10 times); the
  halving iterations are rescaled to the budget (``it * 10000 / queries``); ``queries`` counts model
  evaluations per example, the start included.
- ``"autoattack"``, as AutoAttack "standard" runs it (``square.py`` of fra31/auto-attack with
  ``resc_schedule=False``; used by the ``autoattack`` cascade): one window position (and, L-inf, one sign
  per channel) per iteration shared by the batch, drawn as AutoAttack draws them (positions
  ``int(U * (H - s))``, so never the last row/column); no re-draws; the halving iterations as written,
  not rescaled (with 5000 queries ``p`` is last halved at iteration 4000); ``queries`` iterations after the
  start, so up to ``queries + 1`` evaluations per example. L-inf: as the windows depend only on the
  iteration, inside :func:`robustarch.attacks.row_budget` (the cascade opens one) each example's next
  proposals are evaluated together in one batch (:meth:`Square._search_ahead`): the same points after the
  same number of queries, in fewer, larger forward passes.

L-inf start: vertical stripes ``x + eps * s``, one random sign per (channel, column); proposals set a square
window of side ``round(sqrt(p * H * W))`` to ``x +- eps`` (one sign per channel). L2 (Algorithm 3): the start
is a grid of 5x5-ish squares carrying the paper's centred "eta" pattern with random signs, scaled to norm
eps; a proposal moves the perturbation mass of a second window into the first (odd side >= 3), refilled
with a fresh eta pattern so that the total norm stays eps (AutoAttack's L2 code, with per-example windows in
the ``square`` variant). L2 needs images of at least 5x5.

Random draws, in order, per restart: the start's signs (L-inf ``(N, C, 1, W)``; L2 per grid square: the
pattern's transpose coin then ``(N, C)`` signs), then per iteration: ``square``/L-inf: row, column
``(n,)``, signs ``(n, C)`` and re-draws; ``square``/L2: rows and columns of the two windows ``(n,)`` each,
the transpose coins ``(n,)``, signs ``(n, C)``; ``autoattack``: AutoAttack's own order (row, column, [second
row, column, coin,] signs), each a ``rand`` mapped as AutoAttack maps it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from robustarch.attacks._base import Attack, Model, rand, randint
from robustarch.attacks._passes import forward_at
from robustarch.attacks._registry import register_attack
from robustarch.attacks._runs import runs_per_stack
from robustarch.errors import RobustarchError

_HALVING = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
VARIANTS = ("square", "autoattack")

Proposal = Callable[[int, Tensor, Tensor, Tensor], Tensor]


def square_fraction(p_init: float, it: int, n_iters: int, rescale: bool = True) -> float:
    """The fraction of pixels a square covers at iteration ``it``: the paper's schedule, defined for 10,000
    iterations and (``rescale``) stretched to ``n_iters``."""
    scaled = int(it / max(n_iters, 1) * 10000) if rescale else it
    return p_init / 2 ** sum(scaled > h for h in _HALVING)


def _signs(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    return torch.where(rand(shape, generator, like) < 0.5, -1.0, 1.0).to(like.dtype)


def _aa_signs(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """AutoAttack's ``random_choice``: ``sign(2u - 1)``."""
    return torch.sign(2 * rand(shape, generator, like) - 1)


def _aa_int(high: int, generator: torch.Generator | None, like: Tensor) -> int:
    """AutoAttack's ``random_int(0, high)``: ``int(high * u)``, in ``[0, high - 1]`` (0 when high is 0)."""
    return int((high * rand((1,), generator, like)).long())


def _margin(logits: Tensor, y: Tensor) -> Tensor:
    """``z_y - max_{j != y} z_j`` (negative: misclassified)."""
    true = logits.gather(1, y[:, None])[:, 0]
    return true - logits.scatter(1, y[:, None], float("-inf")).amax(1)


def _norms(t: Tensor) -> Tensor:
    """Per-example L2 norms as AutoAttack writes them, shaped ``(N, 1, 1, 1)``."""
    return (t**2).flatten(1).sum(-1).sqrt().view(-1, 1, 1, 1)


@functools.lru_cache(maxsize=64)
def _rectangles(rows: int, cols: int) -> Tensor:
    """The L2 attack's centred pattern on a ``rows x cols`` rectangle: nested rings of weight 1/(ring+1)^2,
    unit norm (Andriushchenko et al. 2020, Sec. 3.2; AutoAttack's ``eta_rectangles``)."""
    delta = torch.zeros(rows, cols)
    r_c, c_c = rows // 2 + 1, cols // 2 + 1
    r0, c0 = r_c - 1, c_c - 1
    for ring in range(max(r_c, c_c)):
        weight = 1.0 / (torch.tensor([[float(ring + 1)]]) ** 2)
        delta[max(r0, 0) : min(r0 + 2 * ring + 1, rows), max(0, c0) : min(c0 + 2 * ring + 1, cols)] += weight
        r0, c0 = r0 - 1, c0 - 1
    return delta / (delta**2).sum(dim=(0, 1), keepdim=True).sqrt()


@functools.lru_cache(maxsize=64)
def eta_pattern(s: int) -> Tensor:
    """The L2 proposal's ``s x s`` pattern: the centred pattern on the top half, its negative on the bottom
    half, unit norm (before the random transpose)."""
    delta = torch.zeros(s, s)
    delta[: s // 2] = _rectangles(s // 2, s)
    delta[s // 2 :] = -1.0 * _rectangles(s - s // 2, s)
    return delta / (delta**2).sum(dim=(0, 1), keepdim=True).sqrt()


def _windows(rows: Tensor, cols: Tensor, s: int | Tensor, h: int, w: int) -> Tensor:
    """Boolean masks ``(m, 1, H, W)`` of the ``s x s`` windows with top-left corners ``(rows, cols)`` (``s``
    one side for all, or one per window)."""
    r = torch.arange(h, device=rows.device).view(1, 1, h, 1)
    c = torch.arange(w, device=rows.device).view(1, 1, 1, w)
    r0, c0 = rows.view(-1, 1, 1, 1), cols.view(-1, 1, 1, 1)
    if isinstance(s, Tensor):
        s = s.view(-1, 1, 1, 1)
    return (r >= r0) & (r < r0 + s) & (c >= c0) & (c < c0 + s)


def _window_index(rows: Tensor, cols: Tensor, s: int, channels: int) -> tuple[Tensor, ...]:
    """Advanced-indexing tuple selecting each example's ``s x s`` window: ``t[idx]`` is ``(m, C, s, s)``."""
    m, ar = len(rows), torch.arange(s, device=rows.device)
    return (
        torch.arange(m, device=rows.device).view(m, 1, 1, 1),
        torch.arange(channels, device=rows.device).view(1, channels, 1, 1),
        (rows.view(m, 1) + ar).view(m, 1, s, 1),
        (cols.view(m, 1) + ar).view(m, 1, 1, s),
    )


class _SharedWindows:
    """The ``autoattack`` variant's L-inf proposals: per iteration one window (side, row, column) and one sign
    per channel for the whole batch, drawn in iteration order as AutoAttack draws them, on first need.
    Iteration ``it``'s proposal for an example at ``cur`` sets the window to ``cur +- 2 eps`` and projects
    onto the eps-ball around the image and [0,1], as AutoAttack's ``square.py`` does."""

    def __init__(self, attack: Square, x: Tensor, generator: torch.Generator | None):
        c = x.shape[1]
        self.attack, self.generator, self.like = attack, generator, x
        self.windows: list[tuple[int, int, int]] = []  # (side, row, column) per iteration drawn
        self.table = torch.zeros((attack.queries, 3), dtype=torch.long)  # the same, to index by tensor
        self.signs = torch.zeros((attack.queries, c, 1, 1), device=x.device, dtype=x.dtype)

    def _draw_until(self, count: int) -> None:
        _, c, h, w = self.like.shape
        for it in range(len(self.windows), count):
            s = min(max(round(math.sqrt(self.attack._p(it) * (c * h * w) / c)), 1), min(h, w))
            window = (s, _aa_int(h - s, self.generator, self.like), _aa_int(w - s, self.generator, self.like))
            self.windows.append(window)
            self.table[it] = torch.tensor(window)
            self.signs[it] = _aa_signs((c, 1, 1), self.generator, self.like)

    def _project(self, proposal: Tensor, x: Tensor) -> Tensor:
        eps = self.attack.eps
        return torch.clamp(torch.min(torch.max(proposal, x - eps), x + eps), 0.0, 1.0)

    def at(self, it: int, x: Tensor, cur: Tensor) -> Tensor:
        """Iteration ``it``'s proposals from every row of ``cur``."""
        self._draw_until(it + 1)
        s, vh, vw = self.windows[it]
        step = torch.zeros(x.shape[1:], device=x.device, dtype=x.dtype)
        step[:, vh : vh + s, vw : vw + s] = 2.0 * self.attack.eps * self.signs[it]
        return self._project(cur + step, x)

    def candidates(self, x: Tensor, cur: Tensor, its: Tensor) -> Tensor:
        """Row ``i``'s proposal of iteration ``its[i]`` from ``cur[i]``."""
        self._draw_until(int(its.max()) + 1)
        sides, rows, cols = self.table[its.cpu()].to(x.device).unbind(1)
        window = _windows(rows, cols, sides, x.shape[2], x.shape[3])
        return self._project(cur + torch.where(window, 2.0 * self.attack.eps * self.signs[its], 0.0), x)


@register_attack
class Square(Attack):
    """Square Attack (L-inf or L2). Parameters: ``eps``, ``queries`` (per example), ``p_init``, ``restarts``,
    ``norm``, ``variant`` (``square`` or ``autoattack``, module docstring)."""

    name = "square"
    title = "Square"
    box = "black"
    profiles = ("standard",)
    paper = (
        "Andriushchenko et al. 2020, Square Attack: a query-efficient black-box adversarial attack via "
        "random search (arXiv:1912.00049)"
    )
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"variant": VARIANTS}
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "standard": {
            "eps": 8 / 255,
            "queries": 5000,
            "p_init": 0.8,
            "restarts": 1,
            "norm": "Linf",
            "variant": "square",
        }
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
        extra = [f"{self.queries} queries"] + ([f"{self.restarts} restarts"] if self.restarts > 1 else [])
        return extra + (["AutoAttack schedule"] if self.variant == "autoattack" else [])

    @property
    def _shared(self) -> bool:
        return self.variant == "autoattack"

    def _p(self, it: int) -> float:
        return square_fraction(self.p_init, it, self.queries, rescale=not self._shared)

    # ---- the random search --------------------------------------------------------------------------
    def _search(
        self, model: Model, x: Tensor, y: Tensor, x_best: Tensor, propose: Proposal
    ) -> tuple[Tensor, Tensor]:
        """Random search from ``x_best``: ``propose(it, idx, x[idx], x_best[idx])`` gives the candidates of
        the still-unbroken examples ``idx``; a candidate is kept where it lowers the margin."""
        with torch.no_grad():
            margin = _margin(model(x_best), y)
        queries = torch.ones(len(x), device=x.device)
        iterations = range(self.queries) if self._shared else range(1, self.queries)
        for it in iterations:
            idx = torch.nonzero(margin > 0).flatten()
            if not len(idx):
                break
            cand = propose(it, idx, x[idx], x_best[idx])
            with torch.no_grad():
                new_margin = _margin(model(cand), y[idx])
            queries[idx] += 1
            improved = new_margin < margin[idx]
            x_best[idx[improved]] = cand[improved]
            margin[idx[improved]] = new_margin[improved]
        return x_best, queries

    def _run(
        self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        if self.threat_norm() == "L2":
            start, propose = self._l2_start(x, generator), self._l2_proposal(x.shape, generator)
        elif self._shared:
            start = self._linf_start(x, generator, _aa_signs)
            return self._search_ahead(model, x, y, start, _SharedWindows(self, x, generator))
        else:
            start, propose = self._linf_start(x, generator, _signs), self._linf_proposal(x, generator)
        return self._search(model, x, y, start, propose)

    # ---- L-inf ------------------------------------------------------------------------------------------
    def _linf_start(
        self, x: Tensor, generator: torch.Generator | None, signs: Callable[..., Tensor]
    ) -> Tensor:
        n, c, _, w = x.shape
        return (x + self.eps * signs((n, c, 1, w), generator, x)).clamp(0.0, 1.0)

    def _linf_proposal(self, x_all: Tensor, generator: torch.Generator | None) -> Proposal:
        _, c, h, w = x_all.shape
        eps = self.eps

        def propose(it: int, idx: Tensor, x: Tensor, cur: Tensor) -> Tensor:
            side = round(math.sqrt(self._p(it) * h * w))
            side = max(1, min(side, h - 1, w - 1)) if min(h, w) > 1 else 1
            m = len(idx)
            r0 = randint(h - side + 1, (m,), generator, x)
            c0 = randint(w - side + 1, (m,), generator, x)
            window = _windows(r0, c0, side, h, w)
            lo, hi = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
            cand, pending = cur, torch.ones(m, dtype=torch.bool, device=x.device)
            for _ in range(10):  # re-draw proposals that would leave the window unchanged
                signs = _signs((m, c), generator, x).view(m, c, 1, 1)
                prop = torch.minimum(torch.maximum(torch.where(window, x + eps * signs, cur), lo), hi)
                cand = torch.where(pending.view(m, 1, 1, 1), prop, cand)
                pending = ((cand - cur).abs().flatten(1).amax(1) < 1e-7) & pending
                if not bool(pending.any()):
                    break
            return cand

        return propose

    def _search_ahead(
        self, model: Model, x: Tensor, y: Tensor, x_best: Tensor, windows: _SharedWindows
    ) -> tuple[Tensor, Tensor]:
        """The random search of the shared-window L-inf variant, evaluating each example's next ``k``
        proposals in one batch (``k`` = 1, or as many as :func:`robustarch.attacks.row_budget` allows).

        A proposal's window and signs depend only on its iteration, so the proposals of iterations
        ``t .. t + k - 1`` can all be built from the example's current best point: each is the one the
        search would make as long as none before it is kept. Up to the first kept one they are exactly the
        search's queries; the rest are dropped and made again from the new best point. Every example ends
        where the one-at-a-time search would, after as many queries."""
        with torch.no_grad():
            margin = _margin(model(x_best), y)
        n = len(x)
        next_it = torch.zeros(n, dtype=torch.long, device=x.device)
        queries = torch.ones(n, device=x.device)
        while True:
            live = torch.nonzero((margin > 0) & (next_it < self.queries)).flatten()
            if not len(live):
                break
            k = runs_per_stack(self.queries, len(live))
            its = next_it[live, None] + torch.arange(k, device=x.device)
            valid = its < self.queries  # (m, k): the proposals each example has left
            left = valid.sum(1)
            row, ahead = valid.nonzero(as_tuple=True)  # row-major: each example's proposals in order
            if k == 1:  # k only grows as examples break: so far every live example is at one iteration
                cand = windows.at(int(its[0, 0]), x[live], x_best[live])
            else:
                cand = windows.candidates(x[live[row]], x_best[live[row]], its[row, ahead])
            new = torch.full(its.shape, float("inf"), device=x.device, dtype=margin.dtype)
            with torch.no_grad():
                new[row, ahead] = _margin(model(cand), y[live[row]])
            better = new < margin[live, None]
            kept = better.any(1)
            first = better.int().argmax(1)  # the first kept proposal (argmax: the first maximal entry)
            counted = torch.where(kept, first + 1, left)  # queries up to it, or all of them rejected
            queries[live] += counted
            next_it[live] += counted
            if bool(kept.any()):
                at = left.cumsum(0) - left + first  # its row in cand
                x_best[live[kept]] = cand[at[kept]]
                margin[live[kept]] = new[kept, first[kept]]
        return x_best, queries

    # ---- L2 ---------------------------------------------------------------------------------------------
    def _l2_start(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        n, c, h, w = x.shape
        if min(h, w) < 5:
            raise RobustarchError(f"square with norm='L2' needs images of at least 5x5, got {h}x{w}")
        s = h // 5
        first = (h - s * 5) // 2
        delta = torch.zeros_like(x)
        for vh in range(first, first + s * (h // s), s):
            for vw in range(first, first + s * (w // s), s):
                pattern = self._patterns(s, n, generator, x)
                signs = (_aa_signs if self._shared else _signs)((n, c, 1, 1), generator, x)
                delta[:, :, vh : vh + s, vw : vw + s] += pattern * signs
        return torch.clamp(x + delta / (_norms(delta) + 1e-12) * self.eps, 0.0, 1.0)

    def _patterns(self, s: int, m: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
        """``(m or 1, 1, s, s)`` eta patterns, each transposed on a coin (one coin for a shared window)."""
        eta = eta_pattern(s).to(device=like.device, dtype=like.dtype)
        coins = rand((1 if self._shared else m,), generator, like) > 0.5
        return torch.where(coins.view(-1, 1, 1, 1), eta.t(), eta)

    def _l2_positions(self, high: int, m: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
        if self._shared:
            return torch.full((m,), _aa_int(high, generator, like), device=like.device, dtype=torch.long)
        return randint(high + 1, (m,), generator, like)

    def _l2_proposal(self, shape: torch.Size, generator: torch.Generator | None) -> Proposal:
        _, c, h, w = shape
        eps = self.eps

        def propose(it: int, idx: Tensor, x: Tensor, cur: Tensor) -> Tensor:
            m = len(idx)
            s = max(round(math.sqrt(self._p(it) * (c * h * w) / c)), 3)
            s = min(s + 1 if s % 2 == 0 else s, min(h, w))
            delta = cur - x
            r1, c1 = (self._l2_positions(h - s, m, generator, x), self._l2_positions(w - s, m, generator, x))
            first = _window_index(r1, c1, s, c)
            r2, c2 = (self._l2_positions(h - s, m, generator, x), self._l2_positions(w - s, m, generator, x))
            both = (_windows(r1, c1, s, h, w) | _windows(r2, c2, s, h, w)).to(x.dtype)
            norm_first = (delta[first] ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()
            norm_image = _norms(delta)
            norm_both = ((delta * both) ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()
            fresh = torch.ones((m, c, s, s), device=x.device, dtype=x.dtype)
            pattern = self._patterns(s, m, generator, x)
            signs = (_aa_signs if self._shared else _signs)((m, c, 1, 1), generator, x)
            fresh = fresh * (pattern * signs)
            fresh = fresh + delta[first] / (1e-12 + norm_first)
            # the mass of both windows plus what the budget still allows, spread over the first window
            budget = torch.clamp(torch.full_like(norm_image, eps) ** 2 - norm_image**2, min=0.0)
            budget = (budget / c + norm_both**2).sqrt()
            fresh = fresh / (1e-12 + (fresh**2).sum(dim=(-2, -1), keepdim=True).sqrt()) * budget
            delta = delta.clone()
            delta[_window_index(r2, c2, s, c)] = 0.0
            delta[first] = fresh
            return torch.clamp(x + delta / (_norms(delta) + 1e-12) * eps, 0.0, 1.0)

        return propose

    def _perturb(
        self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None, extras: dict[str, Any]
    ) -> Tensor:
        adv = x.clone()
        if self.eps == 0:  # nothing to search; every proposal would be a no-op
            extras["queries"] = torch.zeros(len(x), device=x.device)
            return adv
        todo = torch.nonzero(forward_at(model, x).argmax(1) == y).flatten()
        total_queries = torch.zeros(len(x), device=x.device)
        for _ in range(self.restarts):
            if not len(todo):
                break
            out, q = self._run(model, x[todo], y[todo], generator)
            adv[todo] = out
            total_queries[todo] += q
            with torch.no_grad():
                todo = todo[model(out).argmax(1) == y[todo]]
        extras["queries"] = total_queries
        extras["robust"] = len(todo)
        return adv
