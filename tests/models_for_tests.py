"""Models defined outside the zoo, for the tests of the "any model" door: factories that study files and the
CLI import by file path (``tests/models_for_tests.py:tiny_cnn``), and a randomized model."""

from __future__ import annotations

import torch
from torch import nn


def tiny_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 8) -> nn.Module:
    """A two-block CNN for 28x28 images (Fashion-MNIST), expecting normalized input."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 7 * 7, num_classes),
    )


class NoisyLogits(nn.Module):
    """A randomized model: new Gaussian noise on its logits at every forward (a stand-in for randomized
    defenses), to be flagged, not refused."""

    def __init__(self, net: nn.Module, scale: float = 0.5):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return logits + self.scale * torch.randn_like(logits)
