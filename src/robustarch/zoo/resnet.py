"""ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), in the layouts the study
evaluated.

* ImageNet: torchvision's ``resnet18`` / ``resnet50`` (7x7 stride-2 stem, 3x3 stride-2 max-pool; the
  Bottleneck strides in its 3x3 conv, "ResNet v1.5"), so torchvision's IMAGENET1K_V1 files load strictly.
* CIFAR: huyvnphan/PyTorch_CIFAR10 ``cifar10_models/resnet.py`` (2019; unchanged later), torchvision's code
  with the stem conv changed to 3x3 stride 1 while the 3x3 stride-2 max-pool is kept, so a 32x32 input
  reaches the last stage at 2x2.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from robustarch.errors import RobustarchError
from robustarch.zoo._registry import register_cifar_and_torchvision


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs; the first one strides."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
# stem conv (kernel, stride, padding): ImageNet's 7x7/2, or the CIFAR adaptation's 3x3/1
STEMS: dict[str, tuple[int, int, int]] = {"imagenet": (7, 2, 3), "cifar": (3, 1, 1)}


class ResNet(nn.Module):
    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
        width: int = 64,
        stem: str = "imagenet",
        stem_pool: bool = True,
    ) -> None:
        super().__init__()
        kernel, stride, padding = STEMS[stem]
        self.inplanes = width
        self.conv1 = nn.Conv2d(
            in_channels, width, kernel_size=kernel, stride=stride, padding=padding, bias=False
        )
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        # a module without parameters either way, so files with and without the pool have the same keys
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem_pool else nn.Identity()
        for i, n in enumerate(layers):
            self.add_module(
                f"layer{i + 1}", self._make_layer(block, width * 2**i, n, stride=1 if i == 0 else 2)
            )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 2 ** (len(layers) - 1) * block.expansion, num_classes)
        self.num_stages = len(layers)
        # the reference initialisation (Linear layers keep PyTorch's default)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def resnet(
    *,
    num_classes: int,
    in_channels: int = 3,
    block: str = "basic",
    layers: Sequence[int] = (2, 2, 2, 2),
    width: int = 64,
    stem: str = "imagenet",
    stem_pool: bool = True,
) -> ResNet:
    """Build a ResNet. ``block`` is ``basic`` or ``bottleneck``, ``layers`` the blocks per stage (ResNet-18:
    (2, 2, 2, 2), ResNet-50: bottleneck (3, 4, 6, 3)), ``width`` the stem and first-stage channel count (64
    published; stage i has ``width * 2**i``), ``stem`` the ``imagenet`` or ``cifar`` stem conv.
    ``stem_pool=False`` drops the stem's 3x3 stride-2 max-pool, as edadaltocg/detectors' CIFAR ResNets do
    (``models/resnet.py``: ``maxpool = nn.Identity()``); their weights have the same keys either way."""
    if block not in BLOCKS:
        raise RobustarchError(f"unknown ResNet block {block!r}; known: {', '.join(BLOCKS)}")
    if stem not in STEMS:
        raise RobustarchError(f"unknown ResNet stem {stem!r}; known: {', '.join(STEMS)}")
    if width < 1 or not layers or min(layers) < 1:
        raise RobustarchError(f"ResNet needs width >= 1 and >= 1 block per stage, got {width}, {layers}")
    return ResNet(BLOCKS[block], tuple(layers), num_classes, in_channels, width, stem, stem_pool)


_PAPER = "He, Zhang, Ren & Sun, Deep Residual Learning for Image Recognition, CVPR 2016"

# (name, method, architecture arguments, torchvision weight file)
_DEPTHS = (
    ("resnet18", "ResNet-18", {"block": "basic", "layers": (2, 2, 2, 2)}, "resnet18-f37072fd.pth"),
    ("resnet50", "ResNet-50", {"block": "bottleneck", "layers": (3, 4, 6, 3)}, "resnet50-0676ba61.pth"),
)

for _name, _method, _arch, _file in _DEPTHS:
    register_cifar_and_torchvision(
        _name,
        method=_method,
        paper=_PAPER,
        builder=resnet,
        source="resnet.py ResNet",
        architecture=_arch,
        torchvision_file=_file,
        quick_overrides={"width": 8},
    )
