"""VGG with BatchNorm (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015), in the layouts the study evaluated.

* ImageNet: torchvision's ``vgg16_bn`` (``features.N`` / ``classifier.{0,3,6}`` keys), so torchvision's
  IMAGENET1K_V1 weight file loads strictly.
* CIFAR: huyvnphan/PyTorch_CIFAR10 ``cifar10_models/vgg.py`` as of ff9ada1 (2019), whose weights give the
  study's Table 1 clean accuracy (94.07%). That code kept torchvision's ImageNet head unchanged:
  ``AdaptiveAvgPool2d((7, 7))`` replicates the final 1x1 map 49 times before ``Linear(25088, 4096)``
  (134.3M parameters). The repository's 2021 revision pools to 1x1 and uses ``Linear(512, 4096)``
  (33.6M); it is registered as ``vgg16_bn_head2021`` for its later weights, and was not used by the study.
"""

from __future__ import annotations

from torch import Tensor, nn

from robustarch.errors import RobustarchError
from robustarch.zoo._registry import (
    CIFAR10_HUYVNPHAN_STATS,
    HUYVNPHAN_CIFAR10_WEIGHTS,
    IMAGENET_STATS,
    ModelSpec,
    cifar_normalization,
    register_model,
)

# Layer configurations of the VGG paper's Table 1 (A = VGG11, B = 13, D = 16, E = 19): conv3x3 output
# channels at width 64, "M" = 2x2 max-pool.
CONFIGS: dict[str, str] = {
    "A": "64 M 128 M 256 256 M 512 512 M 512 512 M",
    "B": "64 64 M 128 128 M 256 256 M 512 512 M 512 512 M",
    "D": "64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M",
    "E": "64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 512 512 512 M",
}


class VGG(nn.Module):
    """``features`` (conv3x3-BN-ReLU stacks and max-pools), ``avgpool`` (adaptive, to ``pool`` x ``pool``),
    ``classifier`` (Linear-ReLU-Dropout, Linear-ReLU-Dropout, Linear)."""

    def __init__(
        self,
        features: nn.Sequential,
        out_channels: int,
        num_classes: int,
        pool: int = 7,
        hidden: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(out_channels * pool * pool, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # the initialisation both reference implementations train from
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


def make_features(cfg: str, in_channels: int, batch_norm: bool, width: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for v in cfg.split():
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out = int(v) * width // 64
        layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU(inplace=True))
        channels = out
    return nn.Sequential(*layers)


def vgg(
    *,
    num_classes: int,
    in_channels: int = 3,
    cfg: str = "D",
    batch_norm: bool = True,
    width: int = 64,
    hidden: int | None = None,
    pool: int = 7,
    dropout: float = 0.5,
) -> VGG:
    """Build a VGG. ``cfg`` picks the depth (A=11, B=13, D=16, E=19 layers); ``width`` is the first stage's
    channel count (64 published; later stages scale with it) and ``hidden`` the classifier width (default
    ``64 * width``, i.e. 4096 at the published width)."""
    if cfg not in CONFIGS:
        raise RobustarchError(f"unknown VGG configuration {cfg!r}; known: {', '.join(CONFIGS)}")
    if width < 1:
        raise RobustarchError(f"VGG width must be positive, got {width}")
    features = make_features(CONFIGS[cfg], in_channels, batch_norm, width)
    return VGG(features, 512 * width // 64, num_classes, pool, hidden or 64 * width, dropout)


_PAPER = "Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, ICLR 2015"
_CIFAR_NORMALIZATION = cifar_normalization(CIFAR10_HUYVNPHAN_STATS)

# (name, dataset family, architecture arguments, reference, weights, variant_of)
_VARIANTS: tuple[tuple[str, str, dict, str, str, str], ...] = (
    (
        "vgg16_bn",
        "cifar",
        {"cfg": "D", "pool": 7},
        "huyvnphan/PyTorch_CIFAR10@ff9ada1 cifar10_models/vgg.py VGG (vgg16_bn)",
        HUYVNPHAN_CIFAR10_WEIGHTS.format(name="vgg16_bn"),
        "",
    ),
    (
        "vgg16_bn_head2021",
        "cifar",
        {"cfg": "D", "pool": 1},
        "huyvnphan/PyTorch_CIFAR10@641cac2 cifar10_models/vgg.py VGG (vgg16_bn, 2021 head)",
        "huyvnphan/PyTorch_CIFAR10 2021 release (download_weights.py / README at 641cac2), CIFAR-10 only",
        "vgg16_bn",
    ),
    (
        "vgg16_bn",
        "imagenet",
        {"cfg": "D", "pool": 7},
        "pytorch/vision@f122815 (0.29.2) torchvision/models/vgg.py VGG (vgg16_bn)",
        "torchvision IMAGENET1K_V1: https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
        "",
    ),
)

for _name, _family, _arch, _ref, _weights, _variant_of in _VARIANTS:
    register_model(
        ModelSpec(
            name=_name,
            dataset_family=_family,  # type: ignore[arg-type]
            family="handcrafted",
            method="VGG16-BN",
            paper=_PAPER,
            builder=vgg,
            reference=_ref,
            weights=_weights,
            normalization=_CIFAR_NORMALIZATION if _family == "cifar" else {"*": IMAGENET_STATS},
            defaults={"*": _arch},
            variant_of=_variant_of,
            quick_overrides={"width": 8},
        )
    )
