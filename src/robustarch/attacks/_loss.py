"""The one loss helper every gradient attack uses: per-example losses on logits and their input gradient.

Losses (all maximised by an untargeted attacker):

- ``"ce"``: cross-entropy of the logits against ``labels``.
- ``"dlr"``: the untargeted Difference of Logits Ratio of Croce & Hein 2020 (eq. 3),
  ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``, with ``z_pi1 >= z_pi2 >= ...`` the sorted logits.
- ``"dlr-targeted"``: the targeted Difference of Logits Ratio of Croce & Hein 2020 ("Reliable evaluation of
  adversarial robustness with an ensemble of diverse parameter-free attacks", eq. 4),
  ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, invariant to shifting and rescaling the logits.
- ``"margin"``: ``max_{j != y} z_j - z_y`` (used score-only by Square).

A targeted CE attack (StepLL) passes ``targeted=True``: the helper then returns ``-CE(logits, target)`` so
that ascending it descends the loss of the target class.

Both DLR losses are written term for term as AutoAttack's code computes them (``autopgd_base.py``), so that
APGD's iterates equal AutoAttack's to the last bit where the random draws agree.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustarch.attacks._passes import cached_gradient
from robustarch.errors import RobustarchError

LOSSES = ("ce", "dlr", "dlr-targeted", "margin")


def per_example_loss(
    logits: Tensor, labels: Tensor, kind: str = "ce", target: Tensor | None = None, targeted: bool = False
) -> Tensor:
    """Per-example loss (shape ``(N,)``) to be *maximised*; see the module docstring for the kinds."""
    if logits.dim() != 2:
        raise RobustarchError(f"the model must return logits (N, classes), got shape {tuple(logits.shape)}")
    for name, lab in (("label", labels), ("target", target)):
        if lab is not None and lab.numel() and int(lab.max()) >= logits.shape[1]:
            raise RobustarchError(
                f"{name} {int(lab.max())} out of range for a model with {logits.shape[1]} classes"
            )
    if kind == "ce":
        if targeted:
            if target is None:
                raise ValueError("a targeted CE loss needs a target")
            return -F.cross_entropy(logits, target, reduction="none")
        return F.cross_entropy(logits, labels, reduction="none")
    true = logits.gather(1, labels[:, None])[:, 0]
    if kind == "margin":
        other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
        return other - true
    if kind == "dlr":
        if logits.shape[1] < 3:
            raise ValueError("the DLR loss needs at least 3 classes")
        ordered, order = logits.sort(dim=1)
        # the largest logit other than the label's: the 2nd largest where the label's is the largest
        top_is_label = (order[:, -1] == labels).to(logits.dtype)
        other = ordered[:, -2] * top_is_label + ordered[:, -1] * (1.0 - top_is_label)
        return -(true - other) / (ordered[:, -1] - ordered[:, -3] + 1e-12)
    if kind == "dlr-targeted":
        if target is None:
            raise ValueError("the targeted DLR loss needs a target")
        if logits.shape[1] < 4:
            raise ValueError("the targeted DLR loss needs at least 4 classes")
        ordered = logits.sort(dim=1).values
        tgt = logits.gather(1, target[:, None])[:, 0]
        return -(true - tgt) / (ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + 1e-12)
    raise ValueError(f"unknown loss {kind!r}; known: {', '.join(LOSSES)}")


def loss_and_grad(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    labels: Tensor,
    kind: str = "ce",
    target: Tensor | None = None,
    targeted: bool = False,
    reduction: str = "mean",
    samples: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits at ``x``, the per-example loss and the gradient of the reduced loss w.r.t. ``x`` only.

    ``reduction="mean"`` differentiates the batch-mean loss, as torchattacks does (so sign-based steps match
    it bit for bit); ``"sum"`` differentiates the sum, which gives each example its own unscaled gradient.
    ``samples > 1`` is Expectation over Transformation (Athalye et al. 2018, "Synthesizing Robust Adversarial
    Examples"): the gradient is the mean over ``samples`` forward+backward passes, for a model that draws
    new randomness at every forward; the logits and losses returned are those of the last pass, as in
    AutoAttack's ``eot_iter``. Model parameter gradients are never computed or accumulated. Inside
    :func:`robustarch.attacks.shared_passes` a single pass at the clean input is computed once for all the
    attacks that ask for it (:mod:`robustarch.attacks._passes`).
    """
    x = x.detach().requires_grad_(True)

    def one_pass() -> tuple[Tensor, Tensor, Tensor]:
        with torch.enable_grad():
            logits = model(x)
            losses = per_example_loss(logits, labels, kind, target, targeted)
            total = losses.mean() if reduction == "mean" else losses.sum()
            (grad,) = torch.autograd.grad(total, x)
        return logits.detach(), losses.detach(), grad

    if samples <= 1:
        return cached_gradient(model, x, (kind, targeted, reduction), labels, target, one_pass)
    logits, losses, grad = one_pass()
    for _ in range(samples - 1):
        logits, losses, more = one_pass()
        grad = grad + more
    return logits, losses, grad / samples
