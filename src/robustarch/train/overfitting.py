"""The per-epoch robustness check of adversarial training, and the catastrophic-overfitting detector.

Catastrophic overfitting (Wong, Rice, Kolter, ICLR 2020, Sec. 5; Andriushchenko & Flammarion, NeurIPS 2020):
during single-step (FGSM) adversarial training the network suddenly becomes robust to FGSM alone: accuracy
under PGD collapses towards 0 within an epoch while accuracy under FGSM *rises*, because the loss surface
becomes so curved that one linear step no longer finds its maximum. Wong et al.'s ``--early-stop`` checks
PGD accuracy after every epoch and stops when it falls by more than 0.2 from the previous epoch, keeping the
previous weights.

Here every epoch measures clean, FGSM and PGD accuracy (``robustarch.attacks``, eval mode, a fixed seed) on
images held out from the training split, and :func:`detect_overfitting` reports the collapse when PGD accuracy
falls more than ``drop`` below the best epoch so far *and* FGSM accuracy did not fall below that epoch's (the
signature that tells it from a run that simply diverges). The trainer then stops and restores the best
epoch's weights (``action="stop"``), or records it and goes on (``"flag"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from robustarch.errors import RobustarchError

Action = Literal["stop", "flag"]
ACTIONS: tuple[str, ...] = ("stop", "flag")


@dataclass(frozen=True)
class RobustnessCheck:
    """What the per-epoch check measures. ``images``: examples held out from the training split (never
    trained on). ``drop``: the fall of PGD accuracy (absolute, a fraction) that counts as a collapse."""

    images: int = 500
    eps: float = 8 / 255
    pgd_steps: int = 10
    pgd_alpha: float = 2 / 255
    drop: float = 0.2
    action: Action = "flag"
    batch_size: int = 250
    seed: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise RobustarchError(
                f"on catastrophic overfitting: expected one of {ACTIONS}, got {self.action!r}"
            )
        if self.images < 0 or self.batch_size < 1 or self.pgd_steps < 1 or not 0 < self.drop < 1:
            raise RobustarchError("check images must be >= 0, batch size and PGD steps >= 1, drop in (0, 1)")


def measure(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, check: RobustnessCheck, device: torch.device
) -> dict[str, float]:
    """Clean, FGSM and PGD robust accuracy (correct on ``x`` and on ``x_adv``, as the results store's
    ``robust`` metric) of ``model`` in eval mode on uint8 or [0, 1] ``images``. The attack draws come from a
    generator seeded per batch with ``check.seed``, so every epoch faces the same random starts."""
    from robustarch import attacks

    fgsm = attacks.create("fgsm", eps=check.eps)
    pgd = attacks.create("pgd", eps=check.eps, alpha=check.pgd_alpha, steps=check.pgd_steps)
    was_training = model.training
    model.eval()
    counts = {"clean": 0, "fgsm": 0, "pgd": 0}
    try:
        for b, start in enumerate(range(0, len(images), check.batch_size)):
            x = images[start : start + check.batch_size].to(device)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            y = labels[start : start + check.batch_size].to(device)
            with torch.no_grad():
                clean = model(x).argmax(1) == y
            counts["clean"] += int(clean.sum())
            for name, attack in (("fgsm", fgsm), ("pgd", pgd)):
                gen = torch.Generator().manual_seed(check.seed * 1_000_003 + b)
                adv = attack(model, x, y, generator=gen)
                with torch.no_grad():
                    counts[name] += int((clean & (model(adv).argmax(1) == y)).sum())
    finally:
        model.train(was_training)
    n = len(images)
    return {"n": float(n), **{k: v / max(1, n) for k, v in counts.items()}}


def detect_overfitting(checks: Sequence[Mapping[str, Any]], drop: float) -> dict[str, Any] | None:
    """Whether the last of the per-epoch ``checks`` (each with ``epoch``, ``pgd``, ``fgsm``) shows
    catastrophic overfitting: PGD accuracy more than ``drop`` below the best earlier epoch's while FGSM
    accuracy is at least that epoch's. Returns what happened (epochs and accuracies) or None."""
    if len(checks) < 2:
        return None
    last = checks[-1]
    best = max(checks[:-1], key=lambda c: c["pgd"])
    if best["pgd"] - last["pgd"] > drop and last["fgsm"] >= best["fgsm"]:
        return {
            "epoch": int(last["epoch"]),
            "best_epoch": int(best["epoch"]),
            "pgd": float(last["pgd"]),
            "best_pgd": float(best["pgd"]),
            "fgsm": float(last["fgsm"]),
            "best_fgsm": float(best["fgsm"]),
            "drop": drop,
        }
    return None


def describe_overfitting(event: Mapping[str, Any]) -> str:
    return (
        f"catastrophic overfitting at epoch {event['epoch']}: PGD accuracy {100 * event['pgd']:.1f}% on the "
        f"held-out images (best {100 * event['best_pgd']:.1f}% at epoch {event['best_epoch']}) while FGSM "
        f"accuracy rose to {100 * event['fgsm']:.1f}% (was {100 * event['best_fgsm']:.1f}%)"
    )
