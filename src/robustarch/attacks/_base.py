"""The attack base class: parameter handling, input validation, the normalized-input flaw switch, the
random-number contract and realized-norm reporting. Each attack file implements only ``_perturb``.

Random numbers. Every random draw of an attack comes from the ``generator`` passed to the call, in a
fixed, documented order, on the generator's own device (then moved to the images' device), so the same
generator state gives the same adversarial batch on any device. With ``generator=None`` the draws come from
torch's global generator (``torch.manual_seed`` makes them reproducible). Deterministic attacks draw nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from robustarch.errors import RobustarchError, UnknownNameError

log = logging.getLogger(__name__)

Model = Callable[[Tensor], Tensor]

# Parameters every attack accepts, next to its own.
COMMON_PARAMS: dict[str, Any] = {"emulate_normalized_inputs": False, "mean": None, "std": None}

# Threat-model norms an attack's ``norm`` parameter may take (AutoAttack's and RobustBench's spelling).
NORMS: tuple[str, ...] = ("Linf", "L2")
# The L2 budget an attack defaults to with ``norm="L2"``: RobustBench's CIFAR-10 L2 threat model (its
# model_info/cifar10/L2/*.json record eps 0.5; it keeps no L2 leaderboard for CIFAR-100 or ImageNet).
L2_EPS_DEFAULT = 0.5


@dataclass(frozen=True)
class AttackTraits:
    """What an attack is like, declared by its class and read by the engine, the checks, the cost estimate
    and the benchmarks (never from tables of attack names).

    ``box``: ``"white"`` (uses input gradients) or ``"black"`` (scores only). ``norm``: the threat model's
    norm (``"Linf"`` or ``"L2"``). ``iterative``: more than one gradient step or query. ``targeted``: it
    optimises towards a target class (StepLL's least-likely class, APGD-T) rather than away from the label.
    ``randomized``: it draws random numbers (always from the caller's generator, so it is deterministic given
    the seed either way). ``per_example``: an example's result does not depend on the other examples in its
    batch (false for any randomized attack: its draws are shaped by the batch). ``gradient_passes`` /
    ``forward_passes``: forward+backward and forward-only passes per example, at most (a cost bound).
    """

    box: str
    norm: str
    iterative: bool
    targeted: bool
    randomized: bool
    per_example: bool
    gradient_passes: int
    forward_passes: int

    @property
    def one_step(self) -> bool:
        return not self.iterative

    @property
    def may_skip(self) -> bool:
        """Whether leaving some examples of a batch unattacked changes nothing for the others."""
        return self.per_example and not self.randomized


def budget_255(value: float) -> str:
    """A budget in /255 units as papers write it: ``8/255``, ``0.5/255``, ``1.785/255``."""
    return f"{value * 255:.4g}/255"


@dataclass(frozen=True)
class AttackResult:
    """An adversarial batch and its budget audit (realized norms are measured in pixel units, [0,1])."""

    adv: Tensor
    attack: str
    profile: str
    params: Mapping[str, Any]
    eps: float  # nominal eps as given (in normalized units when the flaw is emulated)
    linf: Tensor  # per-example realized L-inf norm of adv - images, pixel units
    l2: Tensor  # per-example realized L2 norm, pixel units
    emulated_normalized_inputs: bool = False
    extras: Mapping[str, Any] = field(default_factory=dict)
    norm: str = "Linf"  # the threat model's norm, which ``eps`` bounds

    @property
    def linf_max(self) -> float:
        return float(self.linf.max()) if self.linf.numel() else 0.0

    @property
    def linf_max_255(self) -> float:
        return self.linf_max * 255.0

    @property
    def l2_max(self) -> float:
        return float(self.l2.max()) if self.l2.numel() else 0.0

    @property
    def norm_max(self) -> float:
        """The largest realized perturbation in the threat model's own norm (what ``eps`` bounds)."""
        return self.l2_max if self.norm == "L2" else self.linf_max

    def summary(self) -> str:
        flaw = " [EMULATED NORMALIZED-INPUT FLAW]" if self.emulated_normalized_inputs else ""
        mean_l2 = float(self.l2.mean()) if self.l2.numel() else 0.0
        if self.norm == "L2":
            return (
                f"{self.attack}/{self.profile}: nominal L2 eps {self.eps:.6g}, realized L2 max "
                f"{self.l2_max:.6g}, mean L2 {mean_l2:.4g}, L-inf max {self.linf_max:.6g}{flaw}"
            )
        return (
            f"{self.attack}/{self.profile}: nominal eps {self.eps:.6g} ({self.eps * 255:.3g}/255), realized "
            f"L-inf max {self.linf_max:.6g} ({self.linf_max_255:.3g}/255), mean L2 {mean_l2:.4g}{flaw}"
        )


def _as_channel_tensor(values: Sequence[float] | Tensor, name: str, channels: int, like: Tensor) -> Tensor:
    t = torch.as_tensor(values, dtype=like.dtype, device=like.device).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise RobustarchError(f"{name} has {t.numel()} values but the images have {channels} channels")
    return t.view(1, channels, 1, 1)


class _NormalizedView(nn.Module):
    """The model as the study's released code saw it: a function of *normalized* tensors ``z``.

    ``model`` takes pixels in [0,1] and normalizes inside; feeding it ``z * std + mean`` makes it compute the
    bare network on ``z``, which is what the released code attacked (its loaders normalized, its models did
    not)."""

    def __init__(self, model: Model, mean: Tensor, std: Tensor):
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, z: Tensor) -> Tensor:
        net = getattr(self.model, "net", None)
        inner_mean, inner_std = getattr(self.model, "mean", None), getattr(self.model, "std", None)
        if (
            isinstance(net, nn.Module)
            and getattr(self.model, "pad_to", None) is None
            and isinstance(inner_mean, Tensor)
            and isinstance(inner_std, Tensor)
            and inner_mean.shape == self.mean.shape
            and torch.equal(inner_mean.to(self.mean), self.mean)
            and torch.equal(inner_std.to(self.std), self.std)
        ):
            # a robustarch.zoo Normalized wrapper with the same statistics: feed z to the bare network,
            # exactly what the released code computed (no round trip through pixel space)
            return net(z)
        return self.model(z * self.std + self.mean)


class Attack:
    """Base of every attack. Stateless: parameters are fixed at construction; a call maps
    ``(model, images, labels, generator)`` to an adversarial batch and never changes its inputs.

    Subclasses set ``name``, ``title`` (how tables and figures name it), ``profiles``, ``defaults`` (per
    profile, the parameters and their defaults), ``paper`` (citation), what the attack is like (``box``,
    ``targeted``, ``iterative`` and the pass counts of :attr:`traits`) and implement ``_perturb`` on
    already-validated, detached copies.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    paper: ClassVar[str] = ""
    profiles: ClassVar[tuple[str, ...]] = ("paper", "standard")
    defaults: ClassVar[dict[str, dict[str, Any]]]
    # what the attack is like (AttackTraits); the parameter-dependent parts are the methods below
    box: ClassVar[str] = "white"
    targeted: ClassVar[bool] = False
    iterative: ClassVar[bool] = True
    # keys of the result's extras worth keeping with a run (JSON-able per-batch summaries, e.g. a cascade's
    # contribution per stage); the engine stores them per chunk
    recorded_extras: ClassVar[tuple[str, ...]] = ()
    # enumerated parameters and the values they may take, besides ``norm`` (NORMS, wherever the profile has
    # it): checked at construction; the registry-wide tests run every value
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, profile: str = "standard", **params: Any):
        if profile not in self.profiles:
            raise UnknownNameError(f"profile of attack {self.name!r}", str(profile), self.profiles)
        self.profile = profile
        allowed = {**self.defaults[profile], **COMMON_PARAMS}
        for key in params:
            if key not in allowed:
                raise UnknownNameError(f"parameter of attack {self.name!r} ({profile} profile)", key, allowed)
        for key, values in self.parameter_choices(profile).items():
            if key in params and params[key] not in values:
                raise UnknownNameError(f"{key} of attack {self.name!r}", str(params[key]), values)
        merged = {**allowed, **self.implied_defaults(params), **params}
        self.emulate_normalized_inputs = bool(merged.pop("emulate_normalized_inputs"))
        self.mean, self.std = merged.pop("mean"), merged.pop("std")
        if (self.mean is None) != (self.std is None):
            raise RobustarchError("give both mean and std (or neither, to read them from the model)")
        if (self.mean is not None) and not self.emulate_normalized_inputs:
            raise RobustarchError(
                "mean/std are only used with emulate_normalized_inputs=True; models take [0,1] input and "
                "normalize inside themselves"
            )
        self._params = merged
        for key, value in merged.items():
            setattr(self, key, value)
        self._validate_common()
        self.validate()

    # ---- parameters -------------------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, Any]:
        """All parameters (defaults filled in), plus the flaw switch: what a result's provenance records."""
        out = dict(self._params)
        out["emulate_normalized_inputs"] = self.emulate_normalized_inputs
        if self.mean is not None:
            out["mean"], out["std"] = list(map(float, self.mean)), list(map(float, self.std))
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}(name={self.name!r}, profile={self.profile!r}, {args})"

    def _check_number(self, key: str, lo: float | None = None, hi: float | None = None) -> None:
        value = getattr(self, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RobustarchError(f"{self.name}: {key} must be a finite number, got {value!r}")
        if lo is not None and value < lo:
            raise RobustarchError(f"{self.name}: {key} must be >= {lo}, got {value!r}")
        if hi is not None and value > hi:
            raise RobustarchError(f"{self.name}: {key} must be <= {hi}, got {value!r}")

    def _check_int(self, key: str, lo: int) -> None:
        value = getattr(self, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RobustarchError(f"{self.name}: {key} must be an integer, got {value!r}")
        if value < lo:
            raise RobustarchError(f"{self.name}: {key} must be >= {lo}, got {value!r}")

    def _check_bool(self, key: str) -> None:
        if not isinstance(getattr(self, key), bool):
            raise RobustarchError(f"{self.name}: {key} must be True or False, got {getattr(self, key)!r}")

    def _validate_common(self) -> None:
        # an L2 budget may exceed 1 (the L2 diameter of [0,1]^d is sqrt(d)); an L-inf one may not
        max_budget = None if self.threat_norm() == "L2" else 1.0
        if "eps" in self._params:
            self._check_number("eps", 0.0, max_budget)
        if "alpha" in self._params:
            self._check_number("alpha", 0.0, max_budget)
        if "steps" in self._params:
            self._check_int("steps", 0)
        if "restarts" in self._params:
            self._check_int("restarts", 1)
        for key in ("random_start", "early_stop"):
            if key in self._params:
                self._check_bool(key)
        if "eot_samples" in self._params:
            self._check_int("eot_samples", 1)

    def implied_defaults(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults that depend on the parameters the caller ``given`` (and override the profile's), e.g. the
        L2 budget where ``norm="L2"``; a parameter the caller passes is never overridden."""
        if given.get("norm") == "L2" and "eps" not in given and "eps" in self.defaults[self.profile]:
            return {"eps": L2_EPS_DEFAULT}
        return {}

    def validate(self) -> None:
        """Attack-specific parameter checks (raise RobustarchError)."""

    @classmethod
    def parameter_choices(cls, profile: str = "standard") -> dict[str, tuple[str, ...]]:
        """The enumerated parameters of ``profile`` and their allowed values (``norm`` where it has one)."""
        norm = {"norm": NORMS} if "norm" in cls.defaults[profile] else {}
        return {**norm, **cls.choices}

    @classmethod
    def unavailable_reason(cls, **params: Any) -> str | None:
        """Why this attack cannot be built in this installation (with ``params``), or None: e.g. a cascade
        whose stage attack is not registered. Tests over the registry skip with this reason."""
        return None

    # ---- what the attack is like --------------------------------------------------------------------------
    def randomized(self) -> bool:
        """Whether this configuration draws random numbers (from the caller's generator)."""
        return False

    def gradient_passes(self) -> int:
        """Forward+backward passes per example, at most."""
        raise NotImplementedError

    def forward_passes(self) -> int:
        """Forward-only passes per example, at most (besides the gradient passes)."""
        return 0

    def reach(self) -> float | None:
        """How far (L-inf, pixels) the attack's fixed steps can move a pixel in all, where that is a fixed
        number below which the eps-ball never binds (PGD: ``alpha * steps``); None where the steps adapt
        or the attack projects every step onto the ball anyway. The budget check reads it."""
        return None

    @property
    def eot(self) -> int:
        """Forwards averaged per input gradient (Expectation over Transformation; 1 = a plain gradient)."""
        return int(self._params.get("eot_samples", 1))

    @property
    def stops_early(self) -> bool:
        """Whether an example stops being attacked once misclassified (iterative attacks, ``early_stop``)."""
        return bool(self._params.get("early_stop", False)) and self.iterative

    def threat_norm(self) -> str:
        """The threat model's norm: the ``norm`` parameter of attacks that offer several, else L-inf."""
        return str(self._params.get("norm", "Linf"))

    @property
    def traits(self) -> AttackTraits:
        randomized = self.randomized()
        return AttackTraits(
            box=self.box,
            norm=self.threat_norm(),
            iterative=self.iterative,
            targeted=self.targeted,
            randomized=randomized,
            per_example=not randomized,
            gradient_passes=self.gradient_passes(),
            forward_passes=self.forward_passes(),
        )

    def describe(self) -> str:
        """How tables and figures name this configuration, e.g. ``PGD-10 (8/255, step 2/255, random
        start)``: the title, the step count of an iterative attack, the budget in /255 (L-inf) or as a
        number (L2), and what is unusual (the study's profile, the emulated flaw)."""
        title = self._title()
        parts = [self._budget_text()] if "eps" in self._params else []
        parts += self._describe_extra() + self._describe_common()
        if self.profile == "paper":
            parts.append("paper profile")
        if self.emulate_normalized_inputs:
            parts.append("as released: normalized inputs")
        return f"{title} ({', '.join(parts)})" if parts else title

    def _title(self) -> str:
        """The title with the step count of an iterative attack (``PGD-10``), as papers name them."""
        steps = self._params.get("steps")
        if self.iterative and isinstance(steps, int) and steps > 0:
            return f"{self.title}-{steps}"
        return self.title

    def _budget_text(self) -> str:
        eps = float(self._params["eps"])
        if self.emulate_normalized_inputs:  # eps is in normalized units: no pixel budget to state
            return f"eps {eps:g}"
        if self.threat_norm() == "L2":
            return f"L2 {eps:.4g}"
        # the study's numbers as the paper prints them, with what they mean in pixels
        return f"eps {eps:g} = {budget_255(eps)}" if self.profile == "paper" else budget_255(eps)

    def _describe_extra(self) -> list[str]:
        """Attack-specific details for :meth:`describe` (e.g. PGD's step size and random start)."""
        return []

    def _describe_common(self) -> list[str]:
        """The details every gradient attack shares: EoT and the old behaviour without early stopping."""
        out = [f"EoT {self.eot}"] if self.eot > 1 else []
        if self.iterative and self._params.get("early_stop") is False:
            out.append("no early stop")
        return out

    def _amount(self, value: float) -> str:
        """A step size as :meth:`describe` writes it: in /255 (L-inf), as a number (L2), or as given where it
        is in normalized units."""
        if self.emulate_normalized_inputs or self.threat_norm() == "L2":
            return f"{value:.4g}"
        return budget_255(value)

    # ---- calling ----------------------------------------------------------------------------------------
    def __call__(
        self, model: Model, images: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Adversarial images for ``images`` (N, C, H, W in [0,1]) with true ``labels`` (N,)."""
        return self.run(model, images, labels, generator).adv

    def run(
        self, model: Model, images: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> AttackResult:
        """Like calling the attack, but returns an :class:`AttackResult` with the realized norms."""
        check_model(model)
        x, y = check_inputs(images, labels)
        extras: dict[str, Any] = {}
        if self.emulate_normalized_inputs:
            mean, std = self._mean_std(model, x)
            view = _NormalizedView(model, mean, std)
            z_adv = self._perturb(view, (x - mean) / std, y, generator, extras)
            adv = (z_adv * std + mean).detach()
        else:
            adv = self._perturb(model, x, y, generator, extras).detach()
        delta = (adv - x).flatten(1)
        result = AttackResult(
            adv=adv,
            attack=self.name,
            profile=self.profile,
            params=self.params,
            eps=float(self._params.get("eps", 0.0)),
            linf=delta.abs().amax(1) if delta.shape[1] else delta.new_zeros(len(delta)),
            l2=delta.norm(dim=1),
            emulated_normalized_inputs=self.emulate_normalized_inputs,
            extras=extras,
            norm=self.threat_norm(),
        )
        log.debug("%s", result.summary())
        return result

    def _mean_std(self, model: Model, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, std = self.mean, self.std
        if mean is None:
            mean, std = getattr(model, "mean", None), getattr(model, "std", None)
        if mean is None or std is None:
            raise RobustarchError(
                "emulate_normalized_inputs=True needs the normalization the released code applied: pass "
                "mean= and std= to the attack, or a model exposing .mean and .std (robustarch.zoo.load does)"
            )
        std_t = _as_channel_tensor(std, "std", x.shape[1], x)
        if bool((std_t <= 0).any()):
            raise RobustarchError("std must be positive")
        return _as_channel_tensor(mean, "mean", x.shape[1], x), std_t

    def _perturb(
        self, model: Model, x: Tensor, y: Tensor, generator: torch.Generator | None, extras: dict[str, Any]
    ) -> Tensor:
        raise NotImplementedError


def check_model(model: Model) -> None:
    """Refuse a model in training mode (BatchNorm would use batch statistics, dropout would be random)."""
    if isinstance(model, nn.Module):
        training = [n or type(model).__name__ for n, m in model.named_modules() if m.training]
        if training:
            raise RobustarchError(
                f"the model is in training mode ({len(training)} module(s), e.g. {training[0]!r}): call "
                "model.eval() before attacking it (train-mode BatchNorm/dropout make the attack and the "
                "evaluation inconsistent)"
            )
    elif not callable(model):
        raise RobustarchError(f"model must be an nn.Module or a callable, got {type(model).__name__}")


def check_inputs(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Validate and return detached copies (the caller's tensors are never modified)."""
    if not isinstance(images, Tensor):
        raise RobustarchError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not isinstance(labels, Tensor):
        raise RobustarchError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if images.dim() != 4:
        raise RobustarchError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise RobustarchError(f"images must be floating point in [0,1], got dtype {images.dtype}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise RobustarchError(
            f"labels must have shape (N,) = ({images.shape[0]},), got {tuple(labels.shape)}"
        )
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise RobustarchError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.numel() and int(labels.min()) < 0:
        raise RobustarchError("labels must be non-negative class indices")
    if images.numel():
        if not bool(torch.isfinite(images).all()):
            raise RobustarchError("images contain NaN or infinite values")
        lo, hi = float(images.min()), float(images.max())
        if lo < 0.0 or hi > 1.0:
            raise RobustarchError(
                f"images must lie in [0,1] (got min {lo:.4g}, max {hi:.4g}); models normalize inside "
                "themselves, so pass unnormalized pixels (to reproduce the study's flaw of attacking "
                "normalized tensors use emulate_normalized_inputs=True on [0,1] images)"
            )
    return images.detach().clone(), labels.detach().to(torch.int64).clone()


# ---- random draws (all from the caller's generator) -----------------------------------------------------
def rand(shape: Sequence[int], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """U[0,1) of ``shape``, drawn on the generator's device and moved to ``like``'s."""
    dev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(tuple(shape), generator=generator, device=dev, dtype=like.dtype).to(like.device)


def randn(shape: Sequence[int], generator: torch.Generator | None, like: Tensor) -> Tensor:
    dev = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, device=dev, dtype=like.dtype).to(like.device)


def randint(high: int, shape: Sequence[int], generator: torch.Generator | None, like: Tensor) -> Tensor:
    dev = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(high, tuple(shape), generator=generator, device=dev).to(like.device)


def project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Projection onto the L-inf eps-ball around ``x`` intersected with [0,1]."""
    return (x + (x_adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)


def l2_norms(t: Tensor) -> Tensor:
    """Per-example L2 norms of a batch, shaped ``(N, 1, ..., 1)`` to broadcast against it."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def l2_unit(t: Tensor) -> Tensor:
    """Each example scaled to unit L2 norm, ``t / (||t||_2 + 1e-10)`` (the steepest-ascent direction of an
    L2 step, as Madry et al.'s code and torchattacks' PGDL2 write it)."""
    return t / (l2_norms(t) + 1e-10)


def into_l2_ball(delta: Tensor, eps: float) -> Tensor:
    """``delta * min(1, eps / ||delta||_2)`` per example: the closest point of the L2 eps-ball."""
    norms = l2_norms(delta)
    factor = torch.where(norms > eps, eps / norms.clamp_min(1e-30), torch.ones_like(norms))
    return delta * factor


def project_l2(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Projection onto the L2 eps-ball around ``x``, then onto [0,1] (as torchattacks' PGDL2 and Madry et
    al.'s code: the two projections in this order, not the exact projection onto their intersection)."""
    return (x + into_l2_ball(x_adv - x, eps)).clamp(0.0, 1.0)


def project_norm(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Projection onto the ``norm`` eps-ball around ``x`` intersected with [0,1]."""
    return project_l2(x_adv, x, eps) if norm == "L2" else project(x_adv, x, eps)


def iterate_with_early_stop(
    x_start: Tensor,
    labels: Tensor,
    steps: int,
    gradient: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    step: Callable[[Tensor, Tensor, Tensor], Tensor],
    early_stop: bool,
) -> Tensor:
    """``steps`` iterations ``x_{k+1} = step(x_k, grad_k, rows)`` from ``x_start``; the final iterate.

    ``gradient(x_k, rows) -> (logits at x_k, input gradient)`` and ``step`` work on the rows ``rows`` of the
    batch still attacked. With ``early_stop`` an example whose logits at ``x_k`` misclassify it (argmax !=
    label) is returned at that ``x_k`` and dropped from the batch (only unbroken examples go through the
    model again), so it stays broken under the robust metric: never weaker than running every example to
    the end, and cheaper."""
    out = x_start.clone()
    rows = torch.arange(len(x_start), device=x_start.device)
    cur = x_start
    for _ in range(steps):
        logits, grad = gradient(cur, rows)
        if early_stop:
            broken = logits.argmax(1) != labels[rows]
            if bool(broken.any()):
                out[rows[broken]] = cur[broken]
                keep = ~broken
                rows, cur, grad = rows[keep], cur[keep], grad[keep]
                if not len(rows):
                    return out
        cur = step(cur, grad, rows)
    out[rows] = cur
    return out
