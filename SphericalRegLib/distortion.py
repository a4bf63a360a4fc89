"""Image-intensifier distortion: the radial (pincushion) and rotational (S) warp of an II C-arm's
frames, which no rigid pose can explain (a flat-panel detector has none).

The model is the one :mod:`~SphericalRegLib.physics` simulates: a pixel at normalised radius ``r``
(1 at the detector's corners) shows the input screen at ``r / (1 + k r^2)``, turned by ``-s r``.
Pincushion mimics magnification, so an uncorrected II frame registers centimetres off in depth
(docs/results.md); a C-arm's dewarp calibration (a grid phantom) gives ``(k, s)``, and
``RegisterOptions.distortion`` undoes it before the intensity stage. Without one, several views let
registration fit each view's own (:func:`~SphericalRegLib.register.stages.distortion_refinement`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError

__all__ = ["distort", "undistort", "validate_distortion", "NAMES", "LIMITS"]

NAMES = ("pincushion", "s_distortion")
LIMITS = (0.3, 0.3)
"""The largest magnitude accepted for each coefficient: II pincushion is at most ~10% at the corners
and S distortion a few hundredths of a radian (docs/physics.md); beyond these it is not this model."""


def validate_distortion(coefficients) -> tuple[float, float]:
    """``(pincushion, s_distortion)`` as floats, or a clear error."""
    try:
        values = tuple(float(c) for c in coefficients)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 2 or not all(math.isfinite(v) and abs(v) <= m for v, m in zip(values, LIMITS)):
        raise InputError("distortion", f"is {coefficients!r}",
                         f"two numbers, pincushion and S distortion at the corners (|k| <= {LIMITS[0]}, "
                         f"|s| <= {LIMITS[1]} rad), e.g. 0.08,0.03")
    return values


def undistort(image: Tensor, coefficients: Tensor, iterations: int = 4) -> Tensor:
    """``image`` (B, C, H, W), a whole detector's frame, as an undistorted detector would have shown
    it, for ``coefficients`` (B, 2) = (pincushion k, S rotation s at the corners). Bilinear, zero
    outside; differentiable in both."""
    B, C, H, W = image.shape
    k, s = (coefficients[:, i].to(image.dtype)[:, None, None] for i in range(2))
    u, v, r = _detector_coordinates(H, W, image.dtype, image.device)
    rd = r.expand(B, H, W)
    for _ in range(iterations):  # the distorted radius whose content the model put at r
        rd = r * (1 + k * rd**2)
    return _sample(image, u, v, 1 + k * rd**2, s * rd, "zeros")


def distort(image: Tensor, coefficients: Tensor) -> Tensor:
    """``image`` (B, C, H, W), an undistorted detector's frame, as the distorting one shows it, for
    ``coefficients`` (B, 2): the pixel at ``r`` shows ``r / (1 + k r^2)`` turned by ``-s r`` (the
    model :mod:`~SphericalRegLib.physics` simulates with). Bilinear, the border repeated; the grid in
    float64; differentiable in both."""
    B, C, H, W = image.shape
    k, s = (coefficients[:, i].to(image.device, torch.float64)[:, None, None] for i in range(2))
    u, v, r = _detector_coordinates(H, W, torch.float64, image.device)
    return _sample(image, u, v, 1 / (1 + k * r**2), -s * r, "border")


def _detector_coordinates(H: int, W: int, dtype, device) -> tuple[Tensor, Tensor, Tensor]:
    """``u``, ``v`` (H, W) in [-1, 1] across the detector and ``r``, the radius normalised to 1 at its corners."""
    v, u = torch.meshgrid(torch.linspace(-1, 1, H, dtype=dtype, device=device),
                          torch.linspace(-1, 1, W, dtype=dtype, device=device), indexing="ij")
    return u, v, torch.sqrt(u**2 + v**2) / math.sqrt(2)


def _sample(image: Tensor, u: Tensor, v: Tensor, scale: Tensor, angle: Tensor, padding: str) -> Tensor:
    """``image`` read at ``(u, v)`` scaled by ``scale`` and turned by ``angle`` (each (B, H, W) or
    broadcastable), bilinear."""
    c, sn = torch.cos(angle), torch.sin(angle)
    grid = torch.stack([scale * (c * u - sn * v), scale * (sn * u + c * v)], -1)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode=padding, align_corners=True)
