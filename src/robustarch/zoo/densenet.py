"""DenseNet-BC (Huang, Liu, van der Maaten & Weinberger, "Densely Connected Convolutional Networks", CVPR
2017), in the layouts the study evaluated.

* ImageNet: torchvision's ``densenet121`` / ``densenet169`` (7x7 stride-2 ``conv0``, 3x3 stride-2 max-pool).
  torchvision's published weight files still carry the pre-0.4 keys ``denselayerN.norm.1`` etc.; the spec's
  ``key_rewrites`` maps them to ``norm1`` so those files load strictly, as torchvision's own loader does.
* CIFAR: huyvnphan/PyTorch_CIFAR10 ``cifar10_models/densenet.py`` (2019; structurally unchanged later):
  ``conv0`` becomes 3x3 stride 1 while the max-pool is kept.

Both apply ReLU after ``features`` (whose last module is ``norm5``), then global average pooling and the
Linear classifier.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustarch.errors import RobustarchError
from robustarch.zoo._registry import register_cifar_and_torchvision


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1 (to ``bn_size * growth_rate``) then BN-ReLU-Conv3x3 (to ``growth_rate``), applied to
    the concatenation of all earlier feature maps of the block."""

    def __init__(self, cin: int, growth_rate: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.drop_rate = drop_rate

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        out = self.conv1(self.relu1(self.norm1(x)))
        out = self.conv2(self.relu2(self.norm2(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers: int, cin: int, bn_size: int, growth_rate: int, drop_rate: float) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(
                f"denselayer{i + 1}", DenseLayer(cin + i * growth_rate, growth_rate, bn_size, drop_rate)
            )

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 (halving the channels) then 2x2 average pooling."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(cin))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(cin, cout, kernel_size=1, stride=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


# stem conv0 (kernel, stride, padding): ImageNet's 7x7/2, or the CIFAR adaptation's 3x3/1
STEMS: dict[str, tuple[int, int, int]] = {"imagenet": (7, 2, 3), "cifar": (3, 1, 1)}


class DenseNet(nn.Module):
    def __init__(
        self,
        growth_rate: int,
        block_config: Sequence[int],
        num_init_features: int,
        num_classes: int,
        in_channels: int = 3,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        kernel, stride, padding = STEMS[stem]
        conv0 = nn.Conv2d(
            in_channels, num_init_features, kernel_size=kernel, stride=stride, padding=padding, bias=False
        )
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv0", conv0),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ]
            )
        )
        channels = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(
                f"denseblock{i + 1}", DenseBlock(num_layers, channels, bn_size, growth_rate, drop_rate)
            )
            channels += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)
        # the reference initialisation
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.features(x))
        return self.classifier(F.adaptive_avg_pool2d(out, (1, 1)).flatten(1))


def densenet(
    *,
    num_classes: int,
    in_channels: int = 3,
    block_config: Sequence[int] = (6, 12, 24, 16),
    width: int = 32,
    num_init_features: int | None = None,
    bn_size: int = 4,
    drop_rate: float = 0.0,
    stem: str = "imagenet",
) -> DenseNet:
    """Build a DenseNet-BC. ``block_config`` is the layers per dense block (121: (6, 12, 24, 16), 169:
    (6, 12, 32, 32)); ``width`` is the growth rate k (32 published), ``num_init_features`` the stem width
    (default ``2 * width``, 64 published); ``stem`` the ``imagenet`` or ``cifar`` stem conv."""
    if stem not in STEMS:
        raise RobustarchError(f"unknown DenseNet stem {stem!r}; known: {', '.join(STEMS)}")
    if width < 1 or not block_config or min(block_config) < 1:
        raise RobustarchError(
            f"DenseNet needs width >= 1 and >= 1 layer per block, got {width}, {block_config}"
        )
    return DenseNet(
        width,
        tuple(block_config),
        num_init_features or 2 * width,
        num_classes,
        in_channels,
        bn_size,
        drop_rate,
        stem,
    )


_PAPER = "Huang, Liu, van der Maaten & Weinberger, Densely Connected Convolutional Networks, CVPR 2017"
# torchvision's pre-0.4 key layout ("denselayer1.norm.1.weight"), still used by its published weight files
LEGACY_KEYS = (
    (
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$",
        r"\1\2",
    ),
)
_DEPTHS = (
    ("densenet121", "DenseNet-121", (6, 12, 24, 16), "densenet121-a639ec97.pth"),
    ("densenet169", "DenseNet-169", (6, 12, 32, 32), "densenet169-b2777c0a.pth"),
)

for _name, _method, _blocks, _file in _DEPTHS:
    register_cifar_and_torchvision(
        _name,
        method=_method,
        paper=_PAPER,
        builder=densenet,
        source="densenet.py DenseNet",
        architecture={"block_config": _blocks},
        torchvision_file=_file,
        quick_overrides={"width": 4},
        key_rewrites=LEGACY_KEYS,
    )
