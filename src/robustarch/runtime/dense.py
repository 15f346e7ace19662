"""Convolutions over tiny feature maps computed as the dense linear maps they are (CPU only).

On a 2x2 feature map a 3x3 convolution with padding 1 multiplies 5 of its 9 taps by padding, and direct
convolution kernels run there at about half their efficiency; the dense map needs 4/9 of the multiply-adds
and runs as one large GEMM on oneDNN.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


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


def _output_chw(conv: nn.Conv2d, in_chw: tuple[int, ...]) -> tuple[int, int, int]:
    """The convolution's output shape for one input of shape ``in_chw``, as torch computes it."""
    _, h, w = in_chw
    if conv.padding == "same":
        return conv.out_channels, h, w
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    ph, pw = (0, 0) if conv.padding == "valid" else conv.padding
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return conv.out_channels, oh, ow


def dense_matrix_from_responses(conv: nn.Conv2d, in_chw: tuple[int, ...]) -> Tensor:
    """The (H_out W_out C_out) x (H W C) matrix of ``conv`` on inputs of shape ``in_chw``, read off its
    response to each one-hot input: any padding mode, at the cost of one convolution per input feature."""
    c, h, w = in_chw
    weight = conv.weight.detach()
    probes = torch.eye(c * h * w, dtype=weight.dtype, device=weight.device)
    probes = probes.reshape(-1, h, w, c).permute(0, 3, 1, 2)  # one-hot inputs in (H, W, C) order
    response = conv._conv_forward(probes, weight, None)  # (in_features, C_out, H_out, W_out)
    return response.permute(0, 2, 3, 1).reshape(c * h * w, -1).t().contiguous()


def dense_matrix_from_weights(conv: nn.Conv2d, in_chw: tuple[int, ...]) -> Tensor:
    """The same matrix as :func:`dense_matrix_from_responses` for zero padding, written directly: the
    block of output position (i, j) and input position (i*stride - pad + a*dilation, ...) is the kernel
    tap (a, b), block-diagonal over the groups. Identical entries (each is one weight), without the
    in_features convolutions (2.5 s of the 3 s preparation of a CIFAR ResNet-18 on one CPU thread)."""
    c, h, w = in_chw
    cout, oh, ow = _output_chw(conv, in_chw)
    g = conv.groups
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    weight = conv.weight.detach().reshape(g, cout // g, c // g, kh, kw)
    matrix = torch.zeros(oh, ow, g, cout // g, h, w, g, c // g, dtype=weight.dtype, device=weight.device)
    for i in range(oh):
        for j in range(ow):
            for a in range(kh):
                ih = i * sh - ph + a * dh
                for b in range(kw):
                    iw = j * sw - pw + b * dw
                    if 0 <= ih < h and 0 <= iw < w:  # taps on the zero padding contribute nothing
                        # (g, cout/g, g, cin/g) block; its group diagonal is (cout/g, cin/g, g)
                        block = matrix[i, j, :, :, ih, iw].diagonal(dim1=0, dim2=2)
                        block.copy_(weight[:, :, :, a, b].permute(1, 2, 0))
    return matrix.reshape(oh * ow * cout, h * w * c)


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


class DenseConv2d(nn.Module):
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
        with torch.no_grad():
            if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
                matrix = dense_matrix_from_weights(conv, self.in_chw)
            else:
                matrix = dense_matrix_from_responses(conv, self.in_chw)
            self.out_chw = _output_chw(conv, self.in_chw)
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
    """Whether :class:`DenseConv2d` does at most half the multiply-adds of ``conv`` on inputs of shape
    ``in_chw`` (a feature map smaller than half the kernel window, e.g. 2x2 under 3x3) and its matrix has at
    most ``max_entries`` entries (64 MiB in float32; it is stored twice, with its transpose)."""
    if isinstance(conv.padding, str):  # "same" / "valid": rare in the zoo, not worth the special cases
        return False
    c, h, w = in_chw
    kh, kw = conv.kernel_size
    in_features = c * h * w
    _, oh, ow = _output_chw(conv, in_chw)
    if oh < 1 or ow < 1:
        return False
    out_features = conv.out_channels * oh * ow
    dense_macs = in_features * out_features
    conv_macs = out_features * (c // conv.groups) * kh * kw
    return 2 * dense_macs <= conv_macs and in_features * out_features <= max_entries


def densify_small_convolutions(model: nn.Module, example: Tensor) -> tuple[nn.Module, int]:
    """Replace, in place, each Conv2d that always sees one input size on ``example`` and for which
    :func:`dense_convolution_pays` by a :class:`DenseConv2d`. Returns the model and the count."""
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
    dense: dict[nn.Module, DenseConv2d] = {}  # one per convolution, also where a module is reused
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):  # not named_children(): it skips repeats
            if child in chosen:
                if child not in dense:
                    dense[child] = DenseConv2d(child, chosen[child])  # type: ignore[arg-type]
                setattr(parent, name, dense[child])
    return model, len(dense)
