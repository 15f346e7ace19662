"""Adversarial training objectives: the inner maximisation and the loss the weights descend.

* ``pgd``: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018: train on
  PGD examples, ``min_w E max_{||d|| <= eps} CE(f(x + d), y)``.
* ``fgsm-rs``: Wong, Rice, Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020:
  one FGSM step of size ``alpha`` (1.25 eps) from a uniform random start, projected back to the eps-ball.
  This is PGD with one step, so both share one loop.
* ``trades``: Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019:
  ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))`` with ``x_adv`` maximising that KL divergence.

The perturbation is computed on the bare module (never through a ``DistributedDataParallel`` wrapper, whose
reducer expects a parameter backward after every forward), in the module mode the reference used: Madry's and
Wong's code attack the network in training mode (BatchNorm on batch statistics), TRADES switches to eval mode.
Only the input gradient is taken (``torch.autograd.grad``), so no parameter gradient accumulates.

In eval mode with a ``pgd`` spec, :func:`perturb` equals ``robustarch.attacks.create("pgd", ...)`` bit for bit
given the same random start (tested); it exists beside the attack library because training needs the KL
objective, training-mode BatchNorm and random starts drawn for the global batch (see :func:`start_noise`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustarch.errors import RobustarchError, UnknownNameError

Method = Literal["pgd", "fgsm-rs", "trades"]
METHODS: tuple[str, ...] = ("pgd", "fgsm-rs", "trades")
Start = Literal["uniform", "normal", "none"]


@dataclass(frozen=True)
class AdversarialTraining:
    """How training examples are perturbed: the inner maximisation of one adversarial-training method.

    ``start``: ``uniform`` = U(-eps, eps) then clipped to [0, 1] (Madry, Wong); ``normal`` =
    N(0, start_std^2), not clipped before the first step (TRADES); ``none`` = from ``x``. ``bn_mode``: the
    module mode while the perturbation is computed. ``beta``: TRADES' weight of the KL term (1/lambda in the
    paper)."""

    method: Method
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    start: Start = "uniform"
    start_std: float = 0.001
    beta: float = 6.0
    bn_mode: Literal["train", "eval"] = "train"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UnknownNameError("adversarial training method", str(self.method), METHODS)
        if self.start not in ("uniform", "normal", "none"):
            raise UnknownNameError("random start", str(self.start), ("uniform", "normal", "none"))
        if self.bn_mode not in ("train", "eval"):
            raise UnknownNameError("module mode", str(self.bn_mode), ("train", "eval"))
        if not (0.0 < self.eps <= 1.0 and 0.0 < self.alpha <= 1.0):
            raise RobustarchError(f"eps and alpha must lie in (0, 1], got {self.eps} and {self.alpha}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise RobustarchError(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.beta < 0 or self.start_std < 0:
            raise RobustarchError("beta and start_std must be >= 0")

    def describe(self) -> str:
        """A label like ``PGD-10 (8/255, step 2/255, uniform start, train-mode BN)``."""
        title = {"pgd": f"PGD-{self.steps}", "fgsm-rs": "FGSM-RS", "trades": f"TRADES-{self.steps}"}
        parts = [f"{self.eps * 255:.3g}/255", f"step {self.alpha * 255:.3g}/255", f"{self.start} start"]
        if self.method == "trades":
            parts.append(f"beta {self.beta:g}")
        parts.append(f"{self.bn_mode}-mode BN")
        return f"{title[self.method]} ({', '.join(parts)})"


def _logits(out: Any) -> Tensor:
    """Training-mode DARTS-family networks return (logits, logits_aux)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _full(t: Tensor) -> Tensor:
    """Losses in at least float32 (logits of a float16 / bfloat16 autocast forward), never downcast."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def start_noise(
    spec: AdversarialTraining, shape: tuple[int, ...], generator: torch.Generator, keep: slice = slice(None)
) -> Tensor | None:
    """The random start for a batch: drawn for the *global* batch of ``shape`` from ``generator`` (a CPU
    generator in the same state on every process) and cut to this process's rows ``keep``, like the
    augmentation draws, so one process and several see the same starts. ``None`` for ``start="none"``.

    ``uniform`` is drawn as ``robustarch.attacks``' PGD draws it: ``(2 * rand - 1) * eps``."""
    if spec.start == "none":
        return None
    if spec.start == "uniform":
        return ((2.0 * torch.rand(shape, generator=generator) - 1.0) * spec.eps)[keep]
    return (torch.randn(shape, generator=generator) * spec.start_std)[keep]


def _project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Onto the L-inf eps-ball around ``x``, intersected with [0, 1] (the same formula as the attacks')."""
    return (x + (x_adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)


def perturb(
    module: nn.Module,
    x: Tensor,
    y: Tensor,
    spec: AdversarialTraining,
    noise: Tensor | None,
    *,
    grad_scale: float = 1.0,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> Tensor:
    """Adversarial examples for a training batch ``x`` in [0, 1] (detached).

    ``noise`` is the random start of :func:`start_noise` (on any device). ``grad_scale`` multiplies the loss
    before differentiating (the fp16 gradient scaler's scale: the sign is unchanged, underflow avoided);
    ``autocast`` is entered around each forward."""
    was_training = module.training
    module.train(spec.bn_mode == "train")
    try:
        x = x.detach()
        target = None
        if spec.method == "trades":
            with torch.no_grad(), autocast():
                # the KL target: the reference recomputes f(x) at every step; in eval mode it is the same
                target = F.softmax(_full(_logits(module(x))), dim=1)
        if noise is None:
            x_adv = x
        elif spec.start == "uniform":
            x_adv = (x + noise.to(x)).clamp(0.0, 1.0)
        else:  # TRADES adds its small Gaussian without clipping first
            x_adv = x + noise.to(x)
        for _ in range(spec.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad(), autocast():
                logits = _full(_logits(module(x_adv)))
                if target is None:
                    loss = F.cross_entropy(logits, y)
                else:
                    loss = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="sum")
            (grad,) = torch.autograd.grad(loss * grad_scale, x_adv)
            x_adv = _project(x_adv.detach() + spec.alpha * grad.sign(), x, spec.eps)
        return x_adv.detach()
    finally:
        module.train(was_training)


def adversarial_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    spec: AdversarialTraining,
    criterion: Callable[[Tensor, Tensor], Tensor],
    aux_weight: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """(loss, logits the training accuracy is counted on) for one batch, ``model`` in training mode.

    PGD / FGSM-RS: the criterion on ``f(x_adv)`` (plus the auxiliary head's, weighted). TRADES: the criterion
    on ``f(x)`` (plus auxiliary) + ``beta * KL(softmax f(x) || softmax f(x_adv))`` summed over the batch and
    divided by its size, as the reference computes it."""
    if spec.method == "trades":
        out = model(x)
        logits = _logits(out)
        loss = criterion(logits, y)
        if aux_weight and isinstance(out, (tuple, list)) and out[1] is not None:
            loss = loss + aux_weight * criterion(out[1], y)
        adv_logits = _logits(model(x_adv))
        kl = F.kl_div(
            F.log_softmax(_full(adv_logits), dim=1), F.softmax(_full(logits), dim=1), reduction="sum"
        )
        return loss + spec.beta * kl / len(x), logits
    out = model(x_adv)
    logits = _logits(out)
    loss = criterion(logits, y)
    if aux_weight and isinstance(out, (tuple, list)) and out[1] is not None:
        loss = loss + aux_weight * criterion(out[1], y)
    return loss, logits
