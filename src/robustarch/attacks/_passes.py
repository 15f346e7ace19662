"""Passes at the clean input, shared by the attacks of one batch.

Several attacks begin with the same computation at the clean input ``x``: StepLL, APGD, FAB, Square and the
AutoAttack cascade take the logits at ``x``; FGSM and PGD without a random start (the study's ``paper``
PGD) take the gradient of the batch-mean cross-entropy at ``x``. An evaluation runs them one after another
on the same batch, so inside :func:`shared_passes` each of these passes is computed once and handed to the
next attack that asks for it.

A shared pass is handed out only for the very model object and an input equal to ``x`` element for
element, and only once two forwards at ``x`` gave identical logits bit for bit: the caller's clean
forward and the first pass an attack computes there. A randomized model (new noise at every forward) fails
that comparison, and from then on every pass is computed afresh, as without sharing. A deterministic
model computes the same bits again, so sharing changes no result; it only saves the passes (in the
``paper`` preset PGD's first gradient and StepLL's clean forward: about 8% of its work).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor

log = logging.getLogger(__name__)

# (loss kind, targeted, reduction) -> (labels, target, logits, losses, grad)
_GradEntry = tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor]


@dataclass
class _Shared:
    model: Callable[[Tensor], Tensor]
    x: Tensor
    clean_logits: Tensor
    confirmed: bool = False  # a second forward at x gave clean_logits exactly
    disabled: bool = False  # a second forward at x differed: compute everything afresh
    grads: dict[tuple[str, bool, str], _GradEntry] = field(default_factory=dict)

    def covers(self, model: Callable[[Tensor], Tensor], x: Tensor) -> bool:
        if self.disabled or model is not self.model or x.shape != self.x.shape or x.dtype != self.x.dtype:
            return False
        return x.device == self.x.device and (x is self.x or torch.equal(x, self.x))

    def confirm(self, logits: Tensor) -> None:
        """Compare a freshly computed forward at x with the clean one; a difference ends the sharing."""
        if self.confirmed:
            return
        if torch.equal(logits.detach(), self.clean_logits):
            self.confirmed = True
        else:
            self.disabled, self.grads = True, {}
            log.debug("two forwards at the clean input differ: passes are not shared for this batch")


_ACTIVE: ContextVar[_Shared | None] = ContextVar("robustarch_shared_passes", default=None)


@contextlib.contextmanager
def shared_passes(model: Callable[[Tensor], Tensor], x: Tensor, logits: Tensor) -> Iterator[None]:
    """Within the block, the attacks' passes at ``x`` through ``model`` are computed once; ``logits`` is
    the caller's own forward at ``x`` (under the autocast the attacks run in)."""
    token = _ACTIVE.set(_Shared(model, x.detach(), logits.detach()))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def forward_at(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``model(x)`` without a graph; inside :func:`shared_passes`, the clean logits where ``x`` is the
    clean input and two forwards there have agreed."""
    shared = _ACTIVE.get()
    covered = shared is not None and shared.covers(model, x)
    if covered and shared.confirmed:  # type: ignore[union-attr]
        return shared.clean_logits.clone()  # type: ignore[union-attr]
    with torch.no_grad():
        logits = model(x)
    if covered:
        shared.confirm(logits)  # type: ignore[union-attr]
    return logits


def cached_gradient(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    key: tuple[str, bool, str],
    labels: Tensor,
    target: Tensor | None,
    compute: Callable[[], tuple[Tensor, Tensor, Tensor]],
) -> tuple[Tensor, Tensor, Tensor]:
    """``compute()`` -> (logits, losses, grad) at ``x``, or the same triple computed earlier for this model,
    clean input, loss ``key``, labels and target inside :func:`shared_passes` (copies: a caller may modify
    them in place)."""
    shared = _ACTIVE.get()
    if shared is None or not shared.covers(model, x):
        return compute()
    entry = shared.grads.get(key)
    if entry is not None and shared.confirmed and _same(entry[0], labels) and _same(entry[1], target):
        return entry[2].clone(), entry[3].clone(), entry[4].clone()
    logits, losses, grad = compute()
    shared.confirm(logits)
    if not shared.disabled:
        shared.grads[key] = (labels, target, logits, losses, grad)
        return logits.clone(), losses.clone(), grad.clone()
    return logits, losses, grad


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.device == b.device and torch.equal(a, b)
