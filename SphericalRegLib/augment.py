"""Domain randomisation of the X-ray side (as in the authors' earlier CDreg code) and of bone contrast.

Each transform of :func:`randomise_xray` is applied to each image independently with
probability ``p`` (0.5), in this order: Gaussian blur (3x3 or 5x5), Gaussian noise,
re-normalisation to [0, 1], linear scaling x U(0.9, 1.05), gamma U(0.7, 1.3), a sine intensity
warp ``I + a sin(b I + c)``, inversion, random erasing and collimation (a border band flattened
to the image's minimum or maximum, as shutters or a cropped detector leave it). Intensity-shape
transforms (gamma, sine, inversion) act on the image's own [min, max] range and map back to it,
so they apply to line integrals of any scale. All randomness comes from the given generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError

__all__ = ["randomise_xray", "random_bone_scale"]


def _uniform(n: int, low: float, high: float, g: torch.Generator, like: Tensor) -> Tensor:
    """``(n, 1, 1, 1)`` draws in [low, high), on the image's device and dtype."""
    u = torch.rand(n, generator=g, dtype=torch.float64)
    return (low + (high - low) * u).to(device=like.device, dtype=like.dtype).reshape(n, 1, 1, 1)


def _coin(n: int, p: float, g: torch.Generator, like: Tensor) -> Tensor:
    """``(n, 1, 1, 1)`` booleans, True with probability p."""
    return (torch.rand(n, generator=g, dtype=torch.float64) < p).to(like.device).reshape(n, 1, 1, 1)


def _range(img: Tensor) -> tuple[Tensor, Tensor]:
    lo = img.amin(dim=(-2, -1), keepdim=True)
    hi = img.amax(dim=(-2, -1), keepdim=True)
    return lo, (hi - lo).clamp_min(1e-12)


def _blur(img: Tensor, g: torch.Generator) -> Tensor:
    """Per-image Gaussian blur, kernel 3x3 or 5x5, sigma U(0.5, 1.5) px, reflected borders."""
    B, C = img.shape[:2]
    size = torch.where(_coin(B, 0.5, g, img).flatten(), 5, 3)
    sigma = _uniform(B, 0.5, 1.5, g, img).reshape(B, 1)
    r = torch.arange(-2, 3, device=img.device, dtype=img.dtype)
    w = torch.exp(-0.5 * (r / sigma) ** 2) * (r.abs()[None] <= (size[:, None] // 2))
    w = w / w.sum(-1, keepdim=True)
    kernel = (w[:, :, None] * w[:, None, :])[:, None]  # (B, 1, 5, 5)
    padded = F.pad(img.reshape(1, B * C, *img.shape[-2:]), (2, 2, 2, 2), mode="reflect")
    return F.conv2d(padded, kernel.repeat_interleave(C, 0), groups=B * C).reshape(img.shape)


def _box_mask(img: Tensor, g: torch.Generator, area: tuple[float, float]) -> Tensor:
    """``(B, 1, H, W)`` True inside one random rectangle per image covering ``area`` of it."""
    B, _, H, W = img.shape
    frac = _uniform(B, *area, g, img).flatten()
    aspect = torch.exp(_uniform(B, math.log(0.3), math.log(3.3), g, img).flatten())
    h = (frac * aspect).sqrt().clamp(max=1) * H
    w = (frac / aspect).sqrt().clamp(max=1) * W
    top = _uniform(B, 0, 1, g, img).flatten() * (H - h)
    left = _uniform(B, 0, 1, g, img).flatten() * (W - w)
    rows = torch.arange(H, device=img.device, dtype=img.dtype)[None, :, None]
    cols = torch.arange(W, device=img.device, dtype=img.dtype)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None]))
    return inside[:, None]


def _border_mask(img: Tensor, g: torch.Generator, max_band: float) -> Tensor:
    """``(B, 1, H, W)`` True in a band of up to ``max_band`` of the size along each border."""
    B, _, H, W = img.shape
    bands = [_uniform(B, 0, max_band, g, img).flatten() * n for n in (H, H, W, W)]
    rows = torch.arange(H, device=img.device, dtype=img.dtype)[None, :, None]
    cols = torch.arange(W, device=img.device, dtype=img.dtype)[None, None, :]
    outside = ((rows < bands[0][:, None, None]) | (rows >= H - bands[1][:, None, None])
               | (cols < bands[2][:, None, None]) | (cols >= W - bands[3][:, None, None]))
    return outside[:, None]


def randomise_xray(img: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Randomly degraded copies ``(B, C, H, W) -> (B, C, H, W)`` (C = 1 for an X-ray); the input is left unchanged."""
    if img.dim() != 4:
        raise InputError("img", f"has shape {tuple(img.shape)}", "(B, C, H, W) images")
    g, B, x = generator, img.shape[0], img

    def maybe(out: Tensor) -> Tensor:
        return torch.where(_coin(B, p, g, x), out, x)

    x = maybe(_blur(x, g))
    std = x.std(dim=(-2, -1), keepdim=True)
    x = maybe(x + _uniform(B, 0.0, 0.05, g, x) * std * torch.randn(x.shape, generator=g).to(x))
    lo, span = _range(x)
    x = maybe((x - lo) / span)
    x = maybe(x * _uniform(B, 0.9, 1.05, g, x))
    lo, span = _range(x)
    x = maybe(lo + span * ((x - lo) / span).clamp(0, 1) ** _uniform(B, 0.7, 1.3, g, x))
    a, b, c = (_uniform(B, 0.0, 0.1, g, x), _uniform(B, math.pi, 4 * math.pi, g, x),
               _uniform(B, 0.0, 2 * math.pi, g, x))
    x = maybe(x + span * a * torch.sin(b * (x - lo) / span + c))
    lo, span = _range(x)
    x = maybe(2 * lo + span - x)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    x = torch.where(_box_mask(x, g, (0.02, 0.2)) & _coin(B, p, g, x), mean, x)
    lo, span = _range(x)
    fill = torch.where(_coin(B, 0.5, g, x), lo, lo + span)
    x = torch.where(_border_mask(x, g, 0.15) & _coin(B, p, g, x), fill, x)
    return x


def random_bone_scale(batch: int, generator: torch.Generator, low: float = 0.7, high: float = 1.5) -> Tensor:
    """``(batch,)`` float64 factors for :func:`volume.hu_to_mu`'s ``bone_scale``, uniform in [low, high)."""
    return low + (high - low) * torch.rand(batch, generator=generator, dtype=torch.float64)
