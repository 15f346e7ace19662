"""An evaluation copy of a model that attacks run faster on, with the same numerics (within a tolerance).

:func:`prepare_for_attack` applies the transforms of :data:`TRANSFORMS` one after the other — BatchNorm
folded into the preceding convolutions, channels_last memory format and, on CPU, convolutions over tiny
feature maps computed as dense linear maps (:mod:`robustarch.runtime.dense`) — and keeps each one only if
the transformed model's logits on a small probe batch stay within the tolerance of the original's.

The tolerance is relative to the logits' scale::

    max |prepared(x) - original(x)|  <=  rtol * max |original(x)|  +  atol      (rtol = 1e-4, atol = 1e-5)

Why ``rtol = 1e-4``: none of the transforms changes the function in exact arithmetic; they change the
rounding. Folding rounds each weight ``w * gamma / sqrt(var + eps)`` once; channels_last and the dense maps
sum each output's K products in another order. In float32 (unit roundoff u = 2^-24 ~ 6e-8) a K-term sum in
another order differs by at most ~K*u and typically ~sqrt(K)*u relative to the sum of the terms' magnitudes
(Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed. 2002, sections 3.1 and 4.2), and
independent errors of L layers add up to about sqrt(L) times one layer's. For the zoo's widest sums
(K = 3*3*512 = 4608) and deepest network (DenseNet-169, L ~ 169 layers) that is sqrt(4608*169)*u ~ 5e-5 of the
logits' scale: ``rtol`` is twice that. Measured differences are far smaller (at most 3.2e-6 of the logits'
scale over the zoo, ImageNet ResNet-50 5e-7; ``docs/benchmarks.md``), while scaling one convolution's weights
by 1.001 moves the logits of the handcrafted and DenseNAS nets by about 1e-3 of their scale. ``atol`` covers
logits that are all near zero. An absolute tolerance alone cannot work: the ImageNet ResNet-50's logits
reach 75-86 and differ by 3e-5-5e-5 after folding, a few float32 ulps of 86.

The check runs on the first ``probe_examples`` (4) examples of the batch given, so preparation costs a
handful of forward passes of 4 examples whatever the batch size; on CUDA it runs with TF32 disabled, so it
tests the transforms, not TF32's 10-bit rounding (attacks later run both models under the same settings).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from robustarch.errors import RobustarchError
from robustarch.runtime.dense import densify_small_convolutions

log = logging.getLogger(__name__)

RTOL = 1e-4  # see the module docstring: about twice the float32 reordering error of the zoo's largest nets
ATOL = 1e-5
PROBE_EXAMPLES = 4


@dataclass(frozen=True)
class TransformCheck:
    """One transform :func:`prepare_for_attack` considered: whether it was kept and, if not, why."""

    transform: str  # a name in TRANSFORMS
    kept: bool
    count: int = 0  # what it changed: BatchNorms folded, convolutions made dense, 1 for channels_last
    # max |logits - original logits| of the model with this transform applied (None: not applied)
    max_abs_logit_diff: float | None = None
    reason: str = ""  # why it was not kept ("" when kept)


@dataclass(frozen=True)
class Preparation:
    """What :func:`prepare_for_attack` did, the logit difference it measured and the bound it held it to."""

    folded_batchnorm: int
    channels_last: bool
    max_abs_logit_diff: float
    dense_convolutions: int = 0
    tolerance: float = 0.0  # rtol * logit_scale + atol
    logit_scale: float = 0.0  # max |logits| of the original model on the probe batch
    probe_examples: int = 0
    seconds: float = 0.0  # wall time of the whole preparation
    checks: tuple[TransformCheck, ...] = ()  # one per transform of TRANSFORMS, in order

    @property
    def rejected(self) -> tuple[TransformCheck, ...]:
        """The transforms not kept, each with its reason (and its measured difference, if it was applied)."""
        return tuple(c for c in self.checks if not c.kept)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (the checks as dicts)."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        kept = [f"{c.transform} ({c.count})" for c in self.checks if c.kept]
        text = (
            f"kept {', '.join(kept) or 'nothing'}; max |logit diff| {self.max_abs_logit_diff:.2g} <= "
            f"{self.tolerance:.2g} (logits up to {self.logit_scale:.3g}; {self.probe_examples} probe "
            f"examples, {self.seconds:.2f} s)"
        )
        for c in self.rejected:
            text += f"; not {c.transform}: {c.reason}"
        return text


@dataclass(frozen=True)
class Transform:
    """A model transform that keeps the function in exact arithmetic. ``apply(model, probe)`` returns the
    transformed model (it may change ``model`` in place) and a count of what it changed; 0 means there was
    nothing to change, ``model`` is left as it was and ``not_applicable`` says why."""

    name: str  # also the keyword of prepare_for_attack that turns it off
    apply: Callable[[nn.Module, Tensor], tuple[nn.Module, int]]
    not_applicable: str
    cpu_only: bool = False


class _ChannelsLastInput(nn.Module):
    """Feeds the wrapped model its input in channels_last layout, so every convolution runs NHWC."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))

    # The wrapped model's normalization stays visible: an attack emulating the released code's
    # normalized-input flaw reads mean/std (and the bare network) from the model it is given.
    @property
    def mean(self) -> Tensor | None:
        return getattr(self.model, "mean", None)

    @property
    def std(self) -> Tensor | None:
        return getattr(self.model, "std", None)

    @property
    def net(self) -> nn.Module | None:
        return getattr(self.model, "net", None)

    @property
    def pad_to(self) -> int | None:
        return getattr(self.model, "pad_to", None)


def _fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """Fold each eval-mode BatchNorm2d into the Conv2d whose output only it consumes (found with torch.fx).
    Returns the traced, folded module and the number of folds; raises if the model cannot be traced."""
    from torch.fx import symbolic_trace
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    traced = symbolic_trace(model)
    modules = dict(traced.named_modules())
    # a convolution module called at several places cannot take one call's BatchNorm: the others would
    # get it too
    calls = Counter(n.target for n in traced.graph.nodes if n.op == "call_module")
    folds = 0
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module" or calls[prev.target] != 1:
            continue
        conv, bn = modules.get(prev.target), modules[node.target]
        if not isinstance(conv, nn.Conv2d) or len(prev.users) != 1 or not bn.track_running_stats:
            continue
        fused = fuse_conv_bn_eval(conv, bn)
        parent_name, _, attr = prev.target.rpartition(".")
        setattr(traced.get_submodule(parent_name) if parent_name else traced, attr, fused)
        modules[prev.target] = fused
        node.replace_all_uses_with(prev)
        traced.graph.erase_node(node)
        folds += 1
    traced.graph.lint()
    traced.delete_all_unused_submodules()  # the folded BatchNorms
    traced.recompile()
    return traced, folds


def _fold_batchnorm_recursive(model: nn.Module) -> tuple[nn.Module, int]:
    """Fold the whole model if torch.fx can trace it, else each child separately (a wrapper whose forward
    validates its input, like robustarch's Normalized, cannot be traced, but the network inside can)."""
    try:
        return _fold_batchnorm(model)
    except Exception as err:  # tracing arbitrary user code can fail in many ways; fall back to children
        log.debug("torch.fx cannot trace %s (%s); folding its children", type(model).__name__, err)
    folds = 0
    for name, child in list(model.named_children()):
        new, n = _fold_batchnorm_recursive(child)
        if n:
            setattr(model, name, new)
            folds += n
    return model, folds


def _fold(model: nn.Module, probe: Tensor) -> tuple[nn.Module, int]:
    return _fold_batchnorm_recursive(model)


def _to_channels_last(model: nn.Module, probe: Tensor) -> tuple[nn.Module, int]:
    return _ChannelsLastInput(model.to(memory_format=torch.channels_last)), 1


def _densify(model: nn.Module, probe: Tensor) -> tuple[nn.Module, int]:
    return densify_small_convolutions(model, probe)


# In the order applied; the dense maps are read off the (folded) convolutions, so they come last.
TRANSFORMS: tuple[Transform, ...] = (
    Transform(
        "fold_batchnorm",
        _fold,
        "no eval-mode BatchNorm2d takes a Conv2d's output alone in a module torch.fx can trace",
    ),
    Transform("channels_last", _to_channels_last, "nothing to convert"),
    Transform(
        "dense_small_convolutions",
        _densify,
        "no convolution sees a feature map small enough for its dense map to halve the work",
        cpu_only=True,  # cuDNN has no such weak spot on tiny maps
    ),
)


@contextlib.contextmanager
def _ieee_float32() -> Iterator[None]:
    """TF32 off for convolutions and matrix products while the check runs (on by default for cuDNN's
    convolutions on Ampere and later GPUs), restored afterwards."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def prepare_for_attack(
    model: nn.Module,
    example: Tensor,
    *,
    fold_batchnorm: bool = True,
    channels_last: bool = True,
    dense_small_convolutions: bool = True,
    rtol: float = RTOL,
    atol: float = ATOL,
    probe_examples: int = PROBE_EXAMPLES,
) -> tuple[nn.Module, Preparation]:
    """A faster evaluation copy of ``model`` for attacking it; ``model`` itself is never modified.

    Tries each transform of :data:`TRANSFORMS` in turn (the keywords turn them off) and keeps it if the
    copy's logits on the first ``probe_examples`` examples of ``example`` (a real batch in the model's input
    domain) stay within ``rtol * max|logits| + atol`` of the original's (the rule and its justification:
    :mod:`robustarch.runtime.prepare`). Each transform not kept is reported with its reason and measured
    difference in :attr:`Preparation.checks` and the log. If nothing could be kept and even the plain eval
    copy differs (a nondeterministic model), a :class:`RobustarchError` is raised. Parameters of the copy do
    not require gradients (attacks differentiate w.r.t. the input only).
    """
    if not isinstance(model, nn.Module):
        raise RobustarchError(f"prepare_for_attack needs an nn.Module, got {type(model).__name__}")
    if not isinstance(example, Tensor) or example.dim() < 1 or example.shape[0] < 1:
        got = tuple(example.shape) if isinstance(example, Tensor) else type(example).__name__
        raise RobustarchError(f"prepare_for_attack needs a non-empty batch of inputs, got {got}")
    if not (rtol >= 0 and atol >= 0 and probe_examples >= 1):
        raise RobustarchError(
            f"prepare_for_attack needs rtol >= 0, atol >= 0 and probe_examples >= 1, got rtol={rtol}, "
            f"atol={atol}, probe_examples={probe_examples}"
        )
    start = time.perf_counter()
    wanted = {
        "fold_batchnorm": fold_batchnorm,
        "channels_last": channels_last,
        "dense_small_convolutions": dense_small_convolutions,
    }
    probe = example[:probe_examples]
    with torch.no_grad(), _ieee_float32():
        reference = (_eval_copy(model) if model.training else model)(probe)
        prepared, checks, diff, tolerance = _apply_transforms(model, probe, reference, wanted, rtol, atol)
    counts = {c.transform: c.count for c in checks if c.kept}
    info = Preparation(
        folded_batchnorm=counts.get("fold_batchnorm", 0),
        channels_last="channels_last" in counts,
        max_abs_logit_diff=diff,
        dense_convolutions=counts.get("dense_small_convolutions", 0),
        tolerance=tolerance,
        logit_scale=float(reference.abs().max()),
        probe_examples=len(probe),
        seconds=time.perf_counter() - start,
        checks=tuple(checks),
    )
    log.debug("prepared %s for attack: %s", type(model).__name__, info)
    return prepared, info


def _apply_transforms(
    model: nn.Module,
    probe: Tensor,
    reference: Tensor,
    wanted: dict[str, bool],
    rtol: float,
    atol: float,
) -> tuple[nn.Module, list[TransformCheck], float, float]:
    """Apply each wanted transform to the model kept so far and keep it if the logits hold. Returns the
    prepared model, one check per transform, its max |logit diff| and the tolerance.

    The transforms change the model in place: copying a large traced model before each one cost more than
    everything else (a deepcopy of a DARTS network's torch.fx graph regenerates its code), while rejections
    are rare, so a rejection rebuilds the model from the original with the transforms kept so far."""
    current = _eval_copy(model)
    kept: list[Transform] = []
    checks: list[TransformCheck] = []
    scale = float(reference.abs().max())
    tolerance = rtol * scale + atol
    finite = bool(torch.isfinite(reference).all())
    if not finite:
        log.warning("prepare_for_attack: the model's logits on the probe are not finite; not transforming")
    diff = 0.0
    for transform in TRANSFORMS:
        skip = _why_not_try(transform, probe, wanted, finite)
        if skip:
            checks.append(_not_kept(transform.name, skip, None))
            continue
        candidate, count = transform.apply(current, probe)
        if not count:  # nothing changed
            checks.append(_not_kept(transform.name, transform.not_applicable, None, level=logging.INFO))
            continue
        candidate.eval()
        candidate_diff = float((candidate(probe) - reference).abs().max())
        if candidate_diff <= tolerance:  # False for NaN: a transform that breaks the model is not kept
            current, diff = candidate, candidate_diff
            kept.append(transform)
            checks.append(TransformCheck(transform.name, True, count, candidate_diff))
        else:
            reason = f"logits differ by {candidate_diff:.3g} > tolerance {tolerance:.3g}"
            checks.append(_not_kept(transform.name, reason, candidate_diff, count, logging.WARNING))
            current = _rebuild(model, kept, probe)
    if finite and not any(c.kept for c in checks) and any(c.max_abs_logit_diff is not None for c in checks):
        # every transform applied was rejected: is the model itself deterministic?
        diff = float((current(probe) - reference).abs().max())
        if not diff <= tolerance:
            raise RobustarchError(
                "prepare_for_attack: even an unmodified eval copy of the model gives different logits on the "
                f"same batch (by {diff:.3g}; nondeterministic model?)"
            )
    return current, checks, diff, tolerance


def _rebuild(model: nn.Module, kept: list[Transform], probe: Tensor) -> nn.Module:
    """A fresh eval copy of ``model`` with the ``kept`` transforms applied (they are deterministic, so it
    is the model they were checked on)."""
    current = _eval_copy(model)
    for transform in kept:
        current, _ = transform.apply(current, probe)
    return current.eval()


def _why_not_try(transform: Transform, probe: Tensor, wanted: dict[str, bool], finite: bool) -> str:
    if not wanted.get(transform.name, True):  # a transform without a keyword of its own always runs
        return "not requested"
    if transform.cpu_only and probe.device.type != "cpu":
        return f"CPU only (the batch is on {probe.device.type})"
    if not finite:
        return "not checked: the model's logits on the probe batch are not finite"
    return ""


def _not_kept(
    name: str, reason: str, diff: float | None, count: int = 0, level: int = logging.DEBUG
) -> TransformCheck:
    log.log(level, "prepare_for_attack: not %s: %s", name, reason)
    return TransformCheck(name, False, count, diff, reason)


def _eval_copy(model: nn.Module) -> nn.Module:
    prepared = copy.deepcopy(model).eval()
    for p in prepared.parameters():
        p.requires_grad_(False)
    return prepared
