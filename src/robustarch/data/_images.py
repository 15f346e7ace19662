"""Decoding and the deterministic evaluation transforms, done with PIL exactly as torchvision does them.

``resize_shorter`` + ``center_crop`` reproduce ``torchvision.transforms.Resize(256)`` and ``CenterCrop(224)``
on PIL images (the standard ImageNet evaluation pipeline, He et al. 2016; used by every ImageNet model of
the study): the new short side is ``size`` and the long side ``int(size * long / short)`` (truncated), PIL's
bilinear filter (which antialiases when shrinking), an unchanged image when it already has the size, and crop
offsets ``int(round((H - h) / 2))`` (Python's round-half-to-even), zero-padding first when the image is
smaller.
torchvision itself is not a dependency; a test checks the arithmetic against a direct PIL computation.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import PIL
from PIL import Image

from robustarch.data.errors import CorruptFileError, DataLayoutError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def decode(data: bytes, name: str, mode: str = "RGB") -> Image.Image:
    """Decode an encoded image fully (a truncated file fails here, naming ``name``); convert to ``mode``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert(mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptFileError(f"cannot decode image {name}: {err}") from err


def resize_shorter(img: Image.Image, size: int, resample: int = Image.BILINEAR) -> Image.Image:
    """Resize so the shorter side is ``size``, keeping the aspect ratio with torchvision's rounding."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), resample)


def center_crop(img: Image.Image, height: int, width: int) -> Image.Image:
    """Center crop to (height, width), zero-padding first (as torchvision does) when the image is smaller."""
    w, h = img.size
    if width > w or height > h:
        left, top = max(width - w, 0) // 2, max(height - h, 0) // 2
        padded = Image.new(img.mode, (max(w, width), max(h, height)), 0)
        padded.paste(img, (left, top))
        img, (w, h) = padded, padded.size
        if (w, h) == (width, height):
            return img
    top, left = round((h - height) / 2.0), round((w - width) / 2.0)
    return img.crop((left, top, left + width, top + height))


@dataclass(frozen=True)
class Preprocess:
    """Decode -> optional shorter-side resize -> optional center crop -> uint8 (C, H, W).

    With neither ``resize`` nor ``crop`` the decoded image must already be ``height x width`` (else an error
    names the file): CIFAR-style data is never silently rescaled.
    """

    channels: int
    height: int
    width: int
    resize: int | None = None
    crop: bool = False

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DataLayoutError(f"images must have 1 (grayscale) or 3 (RGB) channels, not {self.channels}")

    @property
    def mode(self) -> str:
        return "RGB" if self.channels == 3 else "L"

    @property
    def image_size(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def id(self) -> str:
        """A stable id of the pipeline (reported, and part of cache keys)."""
        steps = [f"pil-decode-{self.mode.lower()}"]
        if self.resize is not None:
            steps.append(f"resize-shorter-{self.resize}-bilinear")
        steps.append(
            f"center-crop-{self.height}x{self.width}" if self.crop else f"exact-{self.height}x{self.width}"
        )
        return "+".join(steps)

    @property
    def cache_id(self) -> str:
        # JPEG decoding and resampling may change between Pillow releases: a new Pillow means a new cache.
        return f"{self.id}@pillow-{PIL.__version__}"

    def __call__(self, data: bytes, name: str) -> np.ndarray:
        img = decode(data, name, self.mode)
        if self.resize is not None:
            img = resize_shorter(img, self.resize)
        if self.crop:
            img = center_crop(img, self.height, self.width)
        elif img.size != (self.width, self.height):
            raise DataLayoutError(
                f"{name} is {img.size[0]}x{img.size[1]} (WxH), expected {self.width}x{self.height}; "
                "pass resize=... (and an image size) to resize and center-crop"
            )
        arr = np.asarray(img, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
