"""Process- and model-level speed settings for running attacks on CPU, without changing numerics.

- :func:`tune_allocator` stops glibc from serving every large tensor with a fresh ``mmap`` (and returning it
  with ``munmap`` when freed): each forward/backward pass otherwise page-faults its activations in again.
  Measured on the project's CPU for a CIFAR ResNet-18 at batch 128: about 1.4x on forward+backward.
- :func:`prepare_for_attack` returns an evaluation copy of a model with BatchNorm folded into the preceding
  convolutions, channels_last memory format, and convolutions over tiny feature maps (2x2 under a 3x3
  kernel: 4 of 9 taps are padding) computed as the dense linear maps they are, after checking on a real batch
  that its logits stay within a tolerance (default 1e-5) of the unmodified model; otherwise it falls back to a
  less transformed copy.
- :func:`request_fast_exit` / :func:`exit_process`: how the command-line entry point ends a process that
  cannot be finalized safely (see :func:`request_fast_exit`).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robustarch.errors import RobustarchError

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_TUNED = False
_FAST_EXIT_REASON: str | None = None


def tune_allocator(trim_threshold: int = 1 << 30) -> bool:
    """Make glibc keep freed memory for reuse instead of ``munmap``-ing it (``M_MMAP_MAX=0``) and trim the
    heap only above ``trim_threshold`` bytes. Returns whether the settings were applied: a no-op (False) off
    Linux/glibc. Call it once, early, in a process that runs attacks (the ``robustarch`` CLI does)."""
    global _TUNED
    if _TUNED:
        return True
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1
    _TUNED = ok
    log.debug("glibc allocator tuned (M_MMAP_MAX=0, M_TRIM_THRESHOLD=%d): %s", trim_threshold, ok)
    return ok


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


@functools.cache
def _onednn_linear_available() -> bool:
    """Whether torch's oneDNN fp32 linear (the op torch.compile's CPU backend uses) exists and works here. On
    this project's AMD CPU it runs a 128x2048x2048 GEMM at ~440 GFLOP/s where ``torch.mm`` (MKL) reaches
    ~180. A private op: anything unexpected means "no", and the plain ``linear`` is used."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    try:
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        y = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
        return bool(torch.equal(y, torch.full((2, 4), 3.0)))
    except Exception as err:  # a private op's failure modes are not documented
        log.debug("oneDNN linear unavailable (%s); dense convolutions use torch's linear", err)
        return False


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None, onednn: bool) -> Tensor:
    if onednn and x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return nn.functional.linear(x, weight, bias)


class _DenseLinearFn(torch.autograd.Function):
    """y = x A^T + b with the input gradient g A; A is a constant (attacks differentiate w.r.t. the input)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: Tensor, matrix: Tensor, matrix_t: Tensor, bias: Tensor | None, onednn: bool
    ) -> Tensor:
        ctx.save_for_backward(matrix_t)
        ctx.onednn = onednn
        return _linear(x, matrix, bias, onednn)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (matrix_t,) = ctx.saved_tensors
        return _linear(grad.contiguous(), matrix_t, None, ctx.onednn), None, None, None, None


class _DenseConv2d(nn.Module):
    """A Conv2d evaluated, for one input size, as the dense linear map it is: ``y = A x + b`` over the
    flattened (H, W, C)-ordered feature map.

    Why: on a 2x2 feature map a 3x3 convolution with padding 1 multiplies 5 of its 9 taps by padding, and
    direct convolution kernels run there at about half their efficiency; the dense map needs 4/9 of the
    multiply-adds and runs as one large GEMM. ``A`` is read off the convolution itself (its response to each
    one-hot input), so it holds the convolution's weights exactly; only the summation order changes. Inputs
    of another size go through the original convolution."""

    def __init__(self, conv: nn.Conv2d, in_chw: tuple[int, int, int]):
        super().__init__()
        self.conv = conv
        self.in_chw = tuple(in_chw)
        c, h, w = self.in_chw
        with torch.no_grad():
            weight = conv.weight.detach()
            probes = torch.eye(c * h * w, dtype=weight.dtype, device=weight.device)
            probes = probes.reshape(-1, h, w, c).permute(0, 3, 1, 2)  # one-hot inputs in (H, W, C) order
            response = conv._conv_forward(probes, weight, None)  # (in_features, C_out, H_out, W_out)
            self.out_chw = tuple(response.shape[1:])
            matrix = response.permute(0, 2, 3, 1).reshape(c * h * w, -1).t().contiguous()
            bias = None
            if conv.bias is not None:
                bias = conv.bias.detach().repeat(self.out_chw[1] * self.out_chw[2]).contiguous()
        self.register_buffer("matrix", matrix)
        self.register_buffer("matrix_t", matrix.t().contiguous())
        self.register_buffer("bias", bias)
        self.onednn = _onednn_linear_available()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.in_chw:
            return self.conv(x)
        n = x.shape[0]
        flat = x.permute(0, 2, 3, 1).reshape(n, -1)  # a view for channels_last input
        y = _DenseLinearFn.apply(flat, self.matrix, self.matrix_t, self.bias, self.onednn)
        c, h, w = self.out_chw
        return y.view(n, h, w, c).permute(0, 3, 1, 2)  # channels_last strides, like the convolution's output


def dense_convolution_pays(conv: nn.Conv2d, in_chw: tuple[int, int, int], max_entries: int = 1 << 24) -> bool:
    """Whether :class:`_DenseConv2d` does at most half the multiply-adds of ``conv`` on inputs of shape
    ``in_chw`` (a feature map smaller than half the kernel window, e.g. 2x2 under 3x3) and its matrix has at
    most ``max_entries`` entries (64 MiB in float32; it is stored twice, with its transpose)."""
    if isinstance(conv.padding, str):  # "same" / "valid": rare in the zoo, not worth the special cases
        return False
    c, h, w = in_chw
    kh, kw = conv.kernel_size
    in_features = c * h * w
    # output size of the convolution, as torch computes it
    oh = (h + 2 * conv.padding[0] - conv.dilation[0] * (kh - 1) - 1) // conv.stride[0] + 1
    ow = (w + 2 * conv.padding[1] - conv.dilation[1] * (kw - 1) - 1) // conv.stride[1] + 1
    if oh < 1 or ow < 1:
        return False
    out_features = conv.out_channels * oh * ow
    dense_macs = in_features * out_features
    conv_macs = out_features * (c // conv.groups) * kh * kw
    return 2 * dense_macs <= conv_macs and in_features * out_features <= max_entries


def _densify_small_convolutions(model: nn.Module, example: Tensor) -> tuple[nn.Module, int]:
    """Replace, in place, each Conv2d that always sees one input size on ``example`` and for which
    :func:`dense_convolution_pays` by a :class:`_DenseConv2d`. Returns the model and the count."""
    seen: dict[nn.Conv2d, set[tuple[int, ...]]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor) and args[0].dim() == 4:
            seen.setdefault(module, set()).add(tuple(args[0].shape[1:]))

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if type(m) is nn.Conv2d]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    chosen = {
        conv: next(iter(shapes))
        for conv, shapes in seen.items()
        if len(shapes) == 1 and dense_convolution_pays(conv, next(iter(shapes)))  # type: ignore[arg-type]
    }
    dense: dict[nn.Module, _DenseConv2d] = {}  # one per convolution, also where a module is reused
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):  # not named_children(): it skips repeats
            if child in chosen:
                if child not in dense:
                    dense[child] = _DenseConv2d(child, chosen[child])  # type: ignore[arg-type]
                setattr(parent, name, dense[child])
    return model, len(dense)


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
    convolutions over tiny feature maps as dense linear maps (:class:`_DenseConv2d`), then checks on
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
            prepared, densified = _densify_small_convolutions(prepared, example)
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


def request_fast_exit(reason: str) -> None:
    """Ask the command-line entry point to end this process with ``os._exit`` once its command has returned
    and its output is flushed, skipping interpreter finalization.

    Why: torch 2.13's ``DistributedDataParallel`` keeps its C++ reducer, and through it the gloo process
    group, alive after the wrapper is gone, so ``destroy_process_group`` cannot stop gloo's threads
    (``pt_gloo_runloop``, ``gloo_tcp_loop``). A process that then exits normally sometimes aborts during
    finalization ("terminate called without an active exception", SIGABRT), and torchrun reports the run as
    failed although every result was written. Library callers are unaffected: only :func:`exit_process`
    acts on the request."""
    global _FAST_EXIT_REASON
    _FAST_EXIT_REASON = reason


def exit_process(code: int) -> None:
    """End the process with ``code``: ``sys.exit`` normally, ``os._exit`` after flushing if
    :func:`request_fast_exit` was called (only entry points call this, never library code or tests)."""
    if _FAST_EXIT_REASON is None:
        sys.exit(code)
    log.debug("exiting without finalization: %s", _FAST_EXIT_REASON)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # a closed or broken pipe must not turn success into a traceback
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
