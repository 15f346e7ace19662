"""The input-normalization wrapper: models in robustarch take images in [0, 1] and normalize inside.

Keeping the mean/std inside the model (as RobustBench does) means an attack's epsilon and clipping are always
in pixel space, the most common source of wrong robustness numbers otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustarch.errors import RobustarchError


class Normalized(nn.Module):
    """``net((x - mean) / std)`` for ``x`` in [0, 1], shape ``[N, C, H, W]``.

    ``mean`` / ``std`` are non-persistent buffers: they follow ``.to(device)`` but never enter the
    ``state_dict``, so the checkpoint of the wrapped model is the bare network's. When ``pad_to`` is given, a
    smaller input is first zero-padded (black border, in [0, 1] space) to ``pad_to`` x ``pad_to``, centred:
    this is how 28x28 Fashion-MNIST images enter networks designed for 32x32 CIFAR images.
    """

    def __init__(
        self, net: nn.Module, mean: Sequence[float], std: Sequence[float], pad_to: int | None = None
    ) -> None:
        super().__init__()
        if len(mean) != len(std) or not mean:
            raise RobustarchError(f"mean and std must have the same positive length, got {mean} and {std}")
        if any(s <= 0 for s in std):
            raise RobustarchError(f"std must be positive, got {std}")
        self.net = net
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.pad_to = pad_to
        # set by robustarch.zoo.load: the registry entry, and the metadata of the checkpoint loaded (if any)
        self.spec: Any = None
        self.checkpoint_metadata: dict[str, Any] = {}

    @property
    def in_channels(self) -> int:
        return self.mean.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise RobustarchError(
                f"expected images of shape [N, {self.in_channels}, H, W] in [0, 1], got {tuple(x.shape)}"
            )
        if self.pad_to is not None:
            dh, dw = max(0, self.pad_to - x.shape[-2]), max(0, self.pad_to - x.shape[-1])
            if dh or dw:
                x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
        mean, std = self.mean.to(x.dtype), self.std.to(x.dtype)
        return self.net((x - mean) / std)

    def extra_repr(self) -> str:
        mean = ", ".join(f"{v:.4f}" for v in self.mean.flatten().tolist())
        std = ", ".join(f"{v:.4f}" for v in self.std.flatten().tolist())
        pad = f", pad_to={self.pad_to}" if self.pad_to else ""
        return f"mean=({mean}), std=({std}){pad}"
