"""An evaluation copy of a model that attacks run faster on, with the same numerics (within a tolerance).

:func:`prepare_for_attack` folds BatchNorm into the preceding convolutions, switches to channels_last memory
format and, on CPU, computes convolutions over tiny feature maps as dense linear maps
(:mod:`robustarch.runtime.dense`), after checking on a real batch that its logits stay within a tolerance of
the unmodified model's; otherwise it falls back to a less transformed copy.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robustarch.errors import RobustarchError
from robustarch.runtime.dense import densify_small_convolutions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preparation:
    """What :func:`prepare_for_attack` did and the logit difference it measured."""

    folded_batchnorm: int
    channels_last: bool
    max_abs_logit_diff: float
    dense_convolutions: int = 0


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
    folds = 0
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module":
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


def prepare_for_attack(
    model: nn.Module,
    example: Tensor,
    *,
    fold_batchnorm: bool = True,
    channels_last: bool = True,
    dense_small_convolutions: bool = True,
    atol: float = 1e-5,
) -> tuple[nn.Module, Preparation]:
    """A faster evaluation copy of ``model`` for attacking it; ``model`` itself is never modified.

    Folds BatchNorm into convolutions (eval semantics), switches to channels_last and, on CPU, computes
    convolutions over tiny feature maps as dense linear maps (:class:`DenseConv2d`), then checks on
    ``example`` (a real batch in the model's input domain) that the logits stay within ``atol`` of the
    original's. A transformation that fails to trace or breaks the tolerance is dropped (logged); if even the
    plain eval copy differs (a nondeterministic model) a :class:`RobustarchError` is raised. Parameters of
    the copy do not require gradients (attacks differentiate w.r.t. the input only).
    """
    if not isinstance(model, nn.Module):
        raise RobustarchError(f"prepare_for_attack needs an nn.Module, got {type(model).__name__}")
    with torch.no_grad():
        reference = (_eval_copy(model) if model.training else model)(example)
    dense = dense_small_convolutions and example.device.type == "cpu"  # cuDNN has no such weak spot
    candidates: list[tuple[bool, bool, bool]] = []
    for option in (
        (fold_batchnorm, channels_last, dense),
        (fold_batchnorm, channels_last, False),
        (False, channels_last, False),
        (fold_batchnorm, False, False),
        (False, False, False),
    ):
        if option not in candidates:
            candidates.append(option)
    for fold, cl, dense in candidates:
        prepared = _eval_copy(model)
        folds = densified = 0
        if fold:
            prepared, folds = _fold_batchnorm_recursive(prepared)
            if not folds:
                continue
        if cl:
            prepared = _ChannelsLastInput(prepared.to(memory_format=torch.channels_last))
        if dense:
            prepared, densified = densify_small_convolutions(prepared, example)
        prepared.eval()
        with torch.no_grad():
            diff = float((prepared(example) - reference).abs().max())
        if diff <= atol:
            return prepared, Preparation(folds, cl, diff, densified)
        log.warning(
            "prepared model (fold_batchnorm=%s, channels_last=%s, dense convolutions=%d) differs by %.3g > "
            "%.3g; trying less",
            fold,
            cl,
            densified,
            diff,
            atol,
        )
    raise RobustarchError(
        "prepare_for_attack: even an unmodified eval copy of the model gives different logits on the same "
        "batch (nondeterministic model?)"
    )


def _eval_copy(model: nn.Module) -> nn.Module:
    prepared = copy.deepcopy(model).eval()
    for p in prepared.parameters():
        p.requires_grad_(False)
    return prepared
