"""Training augmentation on batched ``[0, 1]`` tensors (on any device), with all randomness drawn from one
explicit generator.

Random parameters are drawn for the *global* batch and each process keeps its rows (``rank::world``),
which are exactly the rows :class:`torch.utils.data.DistributedSampler` gives it. So one process and
``world`` processes see the same augmented examples, and a run resumed from a checkpoint (which stores the
generator's state) continues with the same draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from robustarch.train.recipes import Augment


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def augment_batch(
    x: torch.Tensor,
    aug: Augment,
    gen: torch.Generator,
    *,
    fill: Sequence[float],
    rank: int = 0,
    world: int = 1,
) -> torch.Tensor:
    """Augment ``x`` (N, C, H, W) in [0, 1]; ``gen`` is a CPU generator shared (same state) by all ranks.

    ``fill`` is the per-channel value cutout writes (the normalization mean: see :mod:`recipes`).
    """
    n_local, c, h, w = x.shape
    n = n_local * world
    keep = slice(rank, None, world)
    dev = x.device
    if aug.resized_crop_scale is not None:
        x = _random_resized_crop(x, aug, gen, n, keep)
    if aug.crop_padding:
        p = aug.crop_padding
        oy = torch.randint(0, 2 * p + 1, (n,), generator=gen)[keep].to(dev)
        ox = torch.randint(0, 2 * p + 1, (n,), generator=gen)[keep].to(dev)
        padded = F.pad(x, (p, p, p, p))
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        batch = torch.arange(n_local, device=dev)[:, None, None, None]
        chan = torch.arange(c, device=dev)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if aug.hflip:
        flip = (torch.rand(n, generator=gen) < 0.5)[keep].to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if aug.color_jitter is not None:
        x = _color_jitter(x, aug.color_jitter, gen, n, keep)
    if aug.cutout:
        half = aug.cutout // 2
        cy = torch.randint(0, h, (n,), generator=gen)[keep].to(dev)
        cx = torch.randint(0, w, (n,), generator=gen)[keep].to(dev)
        ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_y = (ys[None, :] >= cy[:, None] - half) & (ys[None, :] < cy[:, None] + half)
        in_x = (xs[None, :] >= cx[:, None] - half) & (xs[None, :] < cx[:, None] + half)
        mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]
        fill_t = torch.as_tensor(fill, dtype=x.dtype, device=dev).view(1, -1, 1, 1)
        x = torch.where(mask, fill_t, x)
    return x


def _random_resized_crop(
    x: torch.Tensor, aug: Augment, gen: torch.Generator, n: int, keep: slice
) -> torch.Tensor:
    """torchvision's RandomResizedCrop (10 tries, then a central crop), output size = input size, bilinear."""
    h, w = x.shape[-2:]
    area = h * w
    lo, hi = aug.resized_crop_scale  # type: ignore[misc]
    log_r = (math.log(aug.resized_crop_ratio[0]), math.log(aug.resized_crop_ratio[1]))
    tries = 10
    target = area * _uniform(n * tries, lo, hi, gen).view(n, tries)
    ratio = torch.exp(_uniform(n * tries, *log_r, gen)).view(n, tries)
    cw = torch.sqrt(target * ratio).round()
    ch = torch.sqrt(target / ratio).round()
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    u = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    boxes = []
    for i in range(n):
        if first[i] >= 0:
            bw, bh = int(cw[i, first[i]]), int(ch[i, first[i]])
            top = int(u[i, 0] * (h - bh + 1))
            left = int(u[i, 1] * (w - bw + 1))
        else:  # fallback: central crop with the ratio clamped to the allowed range
            in_ratio = w / h
            if in_ratio < aug.resized_crop_ratio[0]:
                bw, bh = w, round(w / aug.resized_crop_ratio[0])
            elif in_ratio > aug.resized_crop_ratio[1]:
                bh, bw = h, round(h * aug.resized_crop_ratio[1])
            else:
                bw, bh = w, h
            top, left = (h - bh) // 2, (w - bw) // 2
        boxes.append((top, left, bh, bw))
    boxes_t = torch.tensor(boxes, dtype=x.dtype)[keep].to(x.device)
    top, left, bh, bw = boxes_t.unbind(1)
    # affine grid mapping the output onto the box (align_corners=False pixel-centre convention)
    theta = torch.zeros(len(boxes_t), 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = bw / w
    theta[:, 0, 2] = (2 * left + bw) / w - 1
    theta[:, 1, 1] = bh / h
    theta[:, 1, 2] = (2 * top + bh) / h - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _color_jitter(
    x: torch.Tensor, factors: tuple[float, float, float, float], gen: torch.Generator, n: int, keep: slice
) -> torch.Tensor:
    """torchvision ColorJitter: brightness, contrast, saturation, hue in a random order per batch row."""
    b, c, s, hue = factors
    dev, dt = x.device, x.dtype
    fb = _uniform(n, max(0.0, 1 - b), 1 + b, gen)[keep].to(dev, dt).view(-1, 1, 1, 1)
    fc = _uniform(n, max(0.0, 1 - c), 1 + c, gen)[keep].to(dev, dt).view(-1, 1, 1, 1)
    fs = _uniform(n, max(0.0, 1 - s), 1 + s, gen)[keep].to(dev, dt).view(-1, 1, 1, 1)
    fh = _uniform(n, -hue, hue, gen)[keep].to(dev, dt).view(-1, 1, 1)
    order = torch.argsort(torch.rand(n, 4, generator=gen), dim=1)[keep]

    def brightness(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (t * fb[rows]).clamp(0, 1)

    def contrast(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        mean = _gray(t).mean(dim=(1, 2, 3), keepdim=True)
        return (fc[rows] * t + (1 - fc[rows]) * mean).clamp(0, 1)

    def saturation(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (fs[rows] * t + (1 - fs[rows]) * _gray(t)).clamp(0, 1) if t.shape[1] == 3 else t

    def hue_shift(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if t.shape[1] != 3:
            return t
        hsv = _rgb_to_hsv(t)
        hsv[:, 0] = (hsv[:, 0] + fh[rows]) % 1.0
        return _hsv_to_rgb(hsv)

    ops = (brightness, contrast, saturation, hue_shift)
    out = x.clone()
    # rows sharing one order are transformed together: at most 24 groups
    for perm in torch.unique(order, dim=0):
        rows = (order == perm).all(1).nonzero().squeeze(1).to(dev)
        t = x[rows]
        for k in perm.tolist():
            t = ops[k](t, rows)
        out[rows] = t
    return out


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    v = maxc
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    d = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack((h, s, v), 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.stack(
        (
            torch.stack((v, q, p, p, t, v), 1),
            torch.stack((t, v, v, q, p, p), 1),
            torch.stack((p, p, t, v, v, q), 1),
        ),
        1,
    )  # (N, 3, 6, H, W)
    idx = i[:, None, None].expand(-1, 3, 1, -1, -1)
    return table.gather(2, idx).squeeze(2)
