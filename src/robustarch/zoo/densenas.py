"""DenseNAS networks built from the authors' ``net_config`` strings (both search spaces).

Fang, Sun, Zhang, Li, Liu, Wang, "Densely Connected Search Space for More Flexible Neural Architecture
Search", CVPR 2020. Reference: ``JaminFong/DenseNAS`` ``models/model_derived.py`` (``MBV2_Net``, ``RES_Net``)
and ``models/operations.py``.

A ``net_config`` is ``|``-separated blocks ``[[in_ch, out_ch], head_op, [stack_ops], num_stack_layers,
stride]``; MobileNetV2-space configs end with ``[[in_ch, last_dim], 'conv1_1']``. The authors' model folder
holds a ``net_config`` file (the config, then a ``net_type: mbv2|res`` line) and ``weights.pt`` (saved from
``nn.DataParallel``, hence the ``module.`` key prefix).

Behaviour mirrored from the reference, all of which changes the keys or the numbers:

* ``MBV2_Net`` sets every BatchNorm2d to ``eps=1e-3`` after construction; ``RES_Net`` keeps ``1e-5``.
* An MBConv adds its input whenever input and output shapes are equal, decided at run time.
* ``t=1`` MBConvs have no expansion conv; activations are ReLU6.
* ``Bottleneck`` multiplies its input width by 4 unless it is 32 (the stem width).
* ``skip_connect`` is always built with stride 1, whatever stride the config gives its block.

The configs of DenseNAS-A/B/C are in ``configs/architectures.json``. Those of DenseNAS-Large and
DenseNAS-R1..R3 are not public (only inside the authors' Google-Drive model folders); build them with the
generic ``densenas`` entry from that folder.
"""

from __future__ import annotations

import ast
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustarch.errors import RobustarchError, UnknownNameError
from robustarch.zoo._registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, register_model
from robustarch.zoo.genotypes import CITATIONS, get_densenas_config

NET_TYPES = ("mbv2", "res")

# mbconv_k{kernel}_t{expansion}: the MobileNetV2-space primitives of the reference OPS table
_MBCONV = re.compile(r"mbconv_k(\d+)_t(\d+)")
MBCONV_OPS = ("mbconv_k3_t1", "mbconv_k3_t3", "mbconv_k3_t6", "mbconv_k5_t3", "mbconv_k5_t6", "mbconv_k7_t3",
              "mbconv_k7_t6")  # fmt: skip
RES_OPS = ("basic_block", "bottle_neck")
BLOCK_OPS = (*MBCONV_OPS, *RES_OPS, "skip_connect")


class MBConv(nn.Module):
    """MobileNetV2 inverted residual: [1x1 expand, BN, ReLU6] (only if ``t > 1``), [kxk depthwise, BN,
    ReLU6], [1x1 project, BN]; the input is added when the shapes match."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, t: int):
        super().__init__()
        hidden = C_in * t
        if t > 1:
            self._expand_conv: nn.Module | None = nn.Sequential(
                nn.Conv2d(C_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)
            )
        else:
            self._expand_conv = None
        self._depthwise_conv = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel_size, stride=stride, padding=kernel_size // 2, groups=hidden,
                      bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
        )  # fmt: skip
        self._project_conv = nn.Sequential(nn.Conv2d(hidden, C_out, 1, bias=False), nn.BatchNorm2d(C_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self._expand_conv is None else self._expand_conv(x)
        out = self._project_conv(self._depthwise_conv(out))
        if out.shape == x.shape:
            return out + x
        return out


def _conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., CVPR 2016) with a 1x1 projection when stride or width change."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(_conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet bottleneck producing ``4 * planes`` channels. As in the reference, the input is assumed to
    be the output of a previous bottleneck (``4 * inplanes`` channels) unless ``inplanes`` is 32."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        if inplanes != 32:
            inplanes *= 4
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                _conv1x1(inplanes, planes * 4, stride), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class _Subsample(nn.Module):
    """The reference ``Identity(stride)``: strided subsampling (always built with stride 1 in practice)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]


class Skip(nn.Module):
    """``skip_connect``: identity, or a 1x1 conv + BN when the width changes (keys ``op.0.0/op.0.1``)."""

    def __init__(self, C_in: int, C_out: int, stride: int = 1):
        super().__init__()
        if C_in != C_out:
            conv = nn.Sequential(_conv1x1(C_in, C_out, stride), nn.BatchNorm2d(C_out))
            self.op: nn.Module = nn.Sequential(conv, _Subsample(1))
        else:
            self.op = _Subsample(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def make_op(name: str, C_in: int, C_out: int, stride: int) -> nn.Module:
    """One DenseNAS primitive by its reference name."""
    match = _MBCONV.fullmatch(name)
    if match and name in MBCONV_OPS:
        return MBConv(C_in, C_out, int(match[1]), stride, t=int(match[2]))
    if name == "basic_block":
        return BasicBlock(C_in, C_out, stride)
    if name == "bottle_neck":
        return Bottleneck(C_in, C_out, stride)
    if name == "skip_connect":
        return Skip(C_in, C_out, 1)  # the reference ignores the block stride for skip_connect
    raise UnknownNameError("DenseNAS operation", name, BLOCK_OPS)


class Block(nn.Module):
    """A routing block: the head op (changes width, carries the stride), then the stacked ops."""

    def __init__(self, in_ch: int, block_ch: int, head_op: str, stack_ops: list[str], stride: int):
        super().__init__()
        self.head_layer = make_op(head_op, in_ch, block_ch, stride)
        self.stack_layers = nn.Sequential(*(make_op(op, block_ch, block_ch, 1) for op in stack_ops))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack_layers(self.head_layer(x))


class Conv1_1_Block(nn.Module):  # noqa: N801 - the reference's class (and key) name
    """The MobileNetV2-space head: 1x1 conv to ``last_dim``, BN, ReLU6."""

    def __init__(self, in_ch: int, block_ch: int):
        super().__init__()
        self.conv1_1 = nn.Sequential(nn.Conv2d(in_ch, block_ch, 1, bias=False), nn.BatchNorm2d(block_ch),
                                     nn.ReLU6(inplace=True))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1_1(x)


# --------------------------------------------------------------------------------------------------
# net_config parsing


def parse_net_config(net_config: str) -> list[list[Any]]:
    """Parse a ``net_config`` string into its blocks, evaluating literals only (the reference ``eval``s)."""
    blocks = []
    for k, piece in enumerate(net_config.split("|")):
        try:
            block = ast.literal_eval(piece.strip())
        except (SyntaxError, ValueError) as err:
            raise RobustarchError(
                f"net_config block {k} is not a Python literal: {piece.strip()[:80]!r}"
            ) from err
        blocks.append(_check_block(k, block))
    if not blocks:
        raise RobustarchError("empty net_config")
    return blocks


def _check_block(k: int, block: Any) -> list[Any]:
    def bad(why: str) -> RobustarchError:
        return RobustarchError(f"net_config block {k} {block!r}: {why}")

    if not isinstance(block, (list, tuple)) or len(block) < 2:
        raise bad("expected [[in_ch, out_ch], op, ...]")
    chs = block[0]
    if not (
        isinstance(chs, (list, tuple)) and len(chs) == 2 and all(isinstance(c, int) and c > 0 for c in chs)
    ):
        raise bad("the first element must be [in_ch, out_ch] with positive ints")
    if block[1] == "conv1_1":
        if len(block) != 2:
            raise bad("a conv1_1 entry is [[in_ch, out_ch], 'conv1_1']")
        return list(block)
    if len(block) != 5:
        raise bad("expected [[in_ch, out_ch], head_op, [stack_ops], num_stack_layers, stride]")
    _, head, stack, _, stride = block
    if not isinstance(stack, (list, tuple)) or not all(isinstance(op, str) for op in stack):
        raise bad("stack_ops must be a list of op names")
    for op in (head, *stack):
        if op not in BLOCK_OPS:
            raise UnknownNameError("DenseNAS operation", str(op), BLOCK_OPS)
    if stride not in (1, 2):
        raise bad(f"stride must be 1 or 2, got {stride!r}")
    return list(block)


def infer_net_type(blocks: list[list[Any]]) -> str:
    """``mbv2`` if the config uses MBConv ops or ends with ``conv1_1``; ``res`` if it uses ResNet blocks."""
    ops = {op for b in blocks if b[1] != "conv1_1" for op in (b[1], *b[2])}
    has_mb, has_res = bool(ops & set(MBCONV_OPS)), bool(ops & set(RES_OPS))
    if has_mb and has_res:
        raise RobustarchError("net_config mixes MBConv and ResNet blocks; pass net_type='mbv2' or 'res'")
    if has_mb or blocks[-1][1] == "conv1_1":
        return "mbv2"
    if has_res:
        return "res"
    raise RobustarchError(
        "cannot infer the DenseNAS search space from net_config; pass net_type='mbv2' or 'res'"
    )


def read_net_config_file(path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """Read the authors' ``net_config`` file: config lines up to a ``net_type: <type>`` line.

    Returns ``(net_config, net_type)``; ``net_type`` is None when the file has no such line.
    """
    config_lines, net_type = [], None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if "net_type" in line:
            net_type = line.split(":")[-1].strip()
            break
        config_lines.append(line)
    return "".join(config_lines), net_type


def resolve_net_config(net_config: str | os.PathLike[str]) -> tuple[str, str | None]:
    """Accept a ``net_config`` string, a path to the authors' ``net_config`` file, or the authors' model
    folder holding it; return ``(net_config string, net_type or None)``."""
    text = os.fspath(net_config)
    if text.lstrip().startswith("["):  # every net_config string starts with its first block
        return text, None
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / "net_config"
    if not path.is_file():
        raise RobustarchError(
            f"net_config {text!r} is neither a net_config string nor an existing file or model folder "
            "(a folder must hold the authors' 'net_config' file)"
        )
    return read_net_config_file(path)


def model_folder_weights(folder: str | os.PathLike[str]) -> Path:
    """The ``weights.pt`` inside an authors' DenseNAS model folder (for ``robustarch.zoo.load``)."""
    path = Path(folder).expanduser() / "weights.pt"
    if not path.is_file():
        raise RobustarchError(f"no weights.pt in DenseNAS model folder {os.fspath(folder)!r}")
    return path


# --------------------------------------------------------------------------------------------------
# networks


def _stem(in_channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU6(inplace=True),
    )


class MBV2_Net(nn.Module):  # noqa: N801 - the reference's class name
    """DenseNAS network of the MobileNetV2-based search space (DenseNAS-A/B/C/Large)."""

    def __init__(self, net_config: str, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.net_config = parse_net_config(net_config)
        if self.net_config[-1][1] != "conv1_1":
            raise RobustarchError("an mbv2 net_config must end with a [[in_ch, last_dim], 'conv1_1'] entry")
        self.input_block = _stem(in_channels, self.net_config[0][0][0])
        self.blocks = nn.ModuleList(
            Block(chs[0], chs[1], head, stack, stride) for chs, head, stack, _, stride in self.net_config[:-1]
        )
        block_last_dim, last_dim = self.net_config[-1][0]
        self.conv1_1_block = Conv1_1_Block(block_last_dim, last_dim)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_dim, num_classes)
        self._init_weights()
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):  # set after construction in the reference (set_bn_param)
                m.momentum, m.eps = 0.1, 1e-3

    def _init_weights(self) -> None:
        # the reference's 'he_fout' initialisation (matters only when training from scratch)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels / m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_block(x)
        for block in self.blocks:
            x = block(x)
        x = self.conv1_1_block(x)
        return self.classifier(self.global_pooling(x).flatten(1))


class RES_Net(nn.Module):  # noqa: N801 - the reference's class name
    """DenseNAS network of the ResNet-based search space (DenseNAS-R1/R2/R3). BatchNorm eps stays 1e-5."""

    def __init__(self, net_config: str, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.net_config = parse_net_config(net_config)
        if any(b[1] == "conv1_1" for b in self.net_config):
            raise RobustarchError("a res net_config has no 'conv1_1' entry (that belongs to mbv2 configs)")
        self.input_block = _stem(in_channels, self.net_config[0][0][0])
        self.blocks = nn.ModuleList(
            Block(chs[0], chs[1], head, stack, stride) for chs, head, stack, _, stride in self.net_config
        )
        self.global_pooling = nn.AdaptiveAvgPool2d((1, 1))
        last = self.net_config[-1]
        last_dim = last[0][1] * 4 if last[1] == "bottle_neck" else last[0][1]
        self.classifier = nn.Linear(last_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_block(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.global_pooling(x).flatten(1))


def build_densenas(
    net_config: str | os.PathLike[str],
    net_type: str | None = None,
    num_classes: int = 1000,
    in_channels: int = 3,
) -> nn.Module:
    """A DenseNAS network from a ``net_config`` string, file or model folder. ``net_type`` (``mbv2`` or
    ``res``) defaults to the folder's ``net_type`` line, else is inferred from the ops."""
    text, file_type = resolve_net_config(net_config)
    if net_type is None:
        net_type = file_type or infer_net_type(parse_net_config(text))
    elif file_type is not None and file_type != net_type:
        raise RobustarchError(
            f"net_type={net_type!r} contradicts the net_config file's 'net_type: {file_type}'"
        )
    if net_type == "mbv2":
        return MBV2_Net(text, num_classes=num_classes, in_channels=in_channels)
    if net_type == "res":
        return RES_Net(text, num_classes=num_classes, in_channels=in_channels)
    raise UnknownNameError("DenseNAS net_type", str(net_type), NET_TYPES)


# --------------------------------------------------------------------------------------------------
# registry entries

# A tiny MobileNetV2-space config for smoke runs of the generic entry (not a published architecture).
QUICK_NET_CONFIG = (
    "[[16, 16], 'mbconv_k3_t1', [], 0, 1]|[[16, 24], 'mbconv_k3_t3', ['mbconv_k5_t3'], 1, 2]|"
    "[[24, 32], 'mbconv_k3_t6', [], 0, 2]|[[32, 64], 'conv1_1']"
)
_REFERENCE = "JaminFong/DenseNAS@e479206f9d73808d4167c669bb1d045a73b6f470 models/model_derived.py"
_WEIGHTS = (
    "authors' DenseNAS_modelzoo (JaminFong/DenseNAS README, Google Drive): one folder per model with "
    "net_config + weights.pt, saved from nn.DataParallel; the study uses the same files"
)


def _named_builder(config_name: str):
    def build(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
        cfg = get_densenas_config(config_name)
        return build_densenas(cfg.net_config, cfg.net_type, num_classes=num_classes, in_channels=in_channels)

    return build


for _id, _cfg_name, _note in (
    (
        "densenas_a",
        "DenseNAS-A",
        "net_config transcribed from imgs/archs.png (row DenseNAS-A), final width 1984",
    ),
    (
        "densenas_b",
        "DenseNAS-B",
        "net_config transcribed from imgs/archs.png (row DenseNAS-B), final width 1984",
    ),
    (
        "densenas_c",
        "DenseNAS-C",
        "net_config = configs/imagenet_train_cfg.py default (the released DenseNAS-C)",
    ),
):
    register_model(
        ModelSpec(
            name=_id,
            dataset_family="imagenet",
            family="nas",
            method="DenseNAS",
            paper=CITATIONS["DenseNAS"],
            builder=_named_builder(_cfg_name),
            reference=f"{_REFERENCE} MBV2_Net ({_cfg_name})",
            weights=_WEIGHTS,
            checkpoint_prefix="module.",
            normalization={"*": (IMAGENET_MEAN, IMAGENET_STD)},
            defaults={},
            notes=_note + "; BatchNorm eps 1e-3 as in the reference.",
            quick_overrides={},  # the published nets are small (4.8-6.1M parameters)
        )
    )


def _generic_builder(
    num_classes: int = 1000,
    in_channels: int = 3,
    net_config: str | os.PathLike[str] | None = None,
    net_type: str | None = None,
) -> nn.Module:
    if net_config is None:
        raise RobustarchError(
            "the generic 'densenas' model needs net_config=: the authors' net_config string, their "
            "'net_config' file, or the model folder holding net_config + weights.pt (DenseNAS-Large and "
            "R1-R3 configs are not public; they ship only with the authors' weights)"
        )
    return build_densenas(net_config, net_type, num_classes=num_classes, in_channels=in_channels)


register_model(
    ModelSpec(
        name="densenas",
        dataset_family="imagenet",
        family="nas",
        method="DenseNAS",
        paper=CITATIONS["DenseNAS"],
        builder=_generic_builder,
        reference=f"{_REFERENCE} MBV2_Net / RES_Net (from any net_config)",
        weights=_WEIGHTS,
        checkpoint_prefix="module.",
        normalization={"*": (IMAGENET_MEAN, IMAGENET_STD)},
        defaults={},
        quick_overrides={"net_config": QUICK_NET_CONFIG},
        notes="Requires net_config= (string, net_config file, or the authors' model folder); net_type= "
        "('mbv2' | 'res') is read from the file or inferred. Builds DenseNAS-Large and R1-R3 from the "
        "authors' folders, whose configs are not public.",
    )
)
