"""How well a DRR lies on its X-ray, patch by patch: the shift each patch of the X-ray still wants.

A registration's final NCC says how alike two images are, which depends on the X-ray's physics as
much as on the pose; its J^T J says how well the cost pins the pose, not whether the minimum is the
right one. At a wrong minimum the image disagrees with itself: one region's edges want the DRR
moved one way, another's the other way, or the whole DRR is off, and that is visible. At the true
pose of an undistorted X-ray every patch's best shift is zero up to noise. The median patch shift,
in millimetres on the detector like the mPE, is therefore a signal of the confidence that does not
depend on the model, the CT or the scale of the cost: on the tuning registrations of two CTs under
plain and random physics it ranked sub-millimetre runs above the others with AUROC 0.98, against
0.89 for the in-plane sd and 0.86 for the final NCC (docs/results.md, twenty-eighth session).

What it cannot see: a pose wrong along the central ray (the DRR's magnification changes by ~0.1%
per mm of depth), and an image-intensifier frame whose warp the rigid pose absorbed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .intensity import sobel, standardise

__all__ = ["patch_shifts", "residual_shift_mm", "residual_distortion", "residual_alignment", "DistortionFit", "describe", "PATCH", "RADIUS", "MIN_PEAK", "MIN_VALID", "MIN_PATCHES",
           "MISALIGNED_SHIFT_MM", "largest_shift_mm", "misaligned"]

PATCH = 24
"""Patch side (pixels of the finest intensity level, 128 across the detector), at a stride of half that."""
RADIUS = 6
"""The largest shift tried (pixels) each way: ~15 mm on a 300 mm detector, beyond any near miss."""
MIN_PEAK = 0.5
"""A patch counts when its best shift's edge NCC reaches this: elsewhere (air, noise, an instrument
the CT lacks) the best shift is a guess."""
MIN_VALID = 0.95
"""...and when this share of its pixels lies inside the exposed field (or, where a collimator leaves
fewer than four such patches, the greater part of them)."""
MIN_PATCHES = 3
"""Fewer counting patches than this: the images agree nowhere, and the signal is the most it measures."""


MISALIGNED_SHIFT_MM = 5.0
"""A residual shift this large, measured on patches that match (not :func:`largest_shift_mm`, where
none does), says the X-ray's edges lie elsewhere than the pose puts them. Of 406 tuning, report and
reference registrations with a residual shift, the 45 with such a shift (37 of them tuning or
reference runs) were all gross failures, 11.8-269 mm off, while 3 with no matching patch at all
were sub-millimetre (docs/results.md, thirty-fourth session)."""


def largest_shift_mm(pixel_mm: float) -> float:
    """:func:`residual_shift_mm`'s answer when fewer than :data:`MIN_PATCHES` patches match: the
    largest shift the search tries, ``RADIUS * pixel_mm * sqrt(2)``."""
    return RADIUS * pixel_mm * 2 ** 0.5


def misaligned(shift_mm: float | None, pixel_mm: float) -> bool:
    """Whether a view's residual shift (mm, measured at ``pixel_mm``) says its pose is wrong: at least
    :data:`MISALIGNED_SHIFT_MM` and measured on matching patches, not the no-match answer."""
    return shift_mm is not None and MISALIGNED_SHIFT_MM <= shift_mm < largest_shift_mm(pixel_mm) * (1 - 1e-4)


def patch_shifts(a: Tensor, b: Tensor, patch: int = PATCH, radius: int = RADIUS) -> tuple[Tensor, Tensor]:
    """How far ``a`` must move to match each patch of ``b``: ``(B, C, H, W) x 2 -> shifts (B, P, 2)``
    (rows, cols; pixels, parabola-refined) and their NCC ``(B, P)``, channels averaged.

    Patches are ``patch`` square at a stride of ``patch // 2``, row-major; shifts run to ``radius``."""
    H, W = a.shape[-2:]
    stride = patch // 2
    padded = F.pad(a, (radius,) * 4, mode="replicate")
    box = lambda t: F.avg_pool2d(t, patch, stride)
    mean_b = box(b)
    var_b = box(b * b) - mean_b**2
    n = 2 * radius + 1
    scores = []
    for dy in range(n):
        for dx in range(n):
            s = padded[..., dy:dy + H, dx:dx + W]
            mean_s = box(s)
            var_s = box(s * s) - mean_s**2
            scores.append(((box(s * b) - mean_s * mean_b) / (var_s * var_b).clamp_min(1e-12).sqrt()).mean(1))
    S = torch.stack(scores, -1).flatten(1, 2)  # (B, P, n * n)
    peak, best = S.max(-1)
    iy, ix = best // n, best % n

    def refined(index: Tensor, at) -> Tensor:
        inner = (index > 0) & (index < n - 1)
        lo, mid, hi = at(index.sub(1).clamp(0, n - 1)), at(index), at(index.add(1).clamp(0, n - 1))
        curvature = lo - 2 * mid + hi
        step = 0.5 * (lo - hi) / torch.where(curvature < 0, curvature, -torch.ones_like(curvature))
        return radius - index - torch.where(inner & (curvature < 0), step.clamp(-0.5, 0.5), torch.zeros_like(step))

    grid = S.unflatten(-1, (n, n))
    take = lambda rows, cols: grid.gather(-1, cols[..., None, None].expand(*cols.shape, n, 1))[..., 0].gather(
        -1, rows[..., None])[..., 0]
    shifts = torch.stack([refined(iy, lambda r: take(r, ix)), refined(ix, lambda c: take(iy, c))], -1)
    return shifts, peak


def _matched_patches(drr: Tensor, xray: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Edge shifts ``(B, P, 2)`` (pixels) of ``xray``'s patches against ``drr``'s and which of them count
    ``(B, P)``: well matched and inside the exposed field."""
    dims = (1, 2, 3)
    a, b = sobel(standardise(drr, dims)), sobel(standardise(xray, dims))
    shifts, peak = patch_shifts(a, b)
    inside = F.avg_pool2d(valid.to(a.dtype).expand(a.shape[0], 1, *a.shape[-2:]), PATCH, PATCH // 2).flatten(1)
    inside = torch.where((inside >= MIN_VALID).sum(-1, keepdim=True) >= 4, inside >= MIN_VALID, inside > 0.5)
    return shifts, (peak >= MIN_PEAK) & inside


def residual_shift_mm(drr: Tensor, xray: Tensor, valid: Tensor, pixel_mm: float) -> Tensor:
    """The median shift (mm on the detector) of the patches of ``xray`` that match ``drr``'s edges:
    ``(B, 1, H, W) x 2``, ``valid`` ``(B|1, 1, H, W)`` bool (the exposed field) -> ``(B,)``.

    Edges (Sobel of the standardised images) rather than intensities: scatter, a LUT or the heel
    effect change a patch's grey levels but not where its edges are. A patch whose best match is poor
    (an instrument, air, noise) does not count; with fewer than :data:`MIN_PATCHES` counting, the
    answer is the largest shift measured, ``RADIUS * pixel_mm * sqrt(2)``."""
    return _median_shift_mm(*_matched_patches(drr, xray, valid), pixel_mm)


def _median_shift_mm(shifts: Tensor, counts: Tensor, pixel_mm: float) -> Tensor:
    median = (shifts.norm(dim=-1) * pixel_mm).masked_fill(~counts, float("nan")).nanmedian(-1).values
    return torch.where(counts.sum(-1) >= MIN_PATCHES, median, torch.full_like(median, largest_shift_mm(pixel_mm)))


class DistortionFit(NamedTuple):
    """What the residual shifts say of an image-intensifier warp left in the X-ray."""

    coefficients: Tensor
    """(B, 2): pincushion k and S distortion s, in :mod:`~SphericalRegLib.distortion`'s model."""
    standard_errors: Tensor
    """(B, 2): their least-squares standard errors; NaN where too few patches count."""
    patches: Tensor
    """(B,): the counted patches the fit used."""


def residual_distortion(drr: Tensor, xray: Tensor, valid: Tensor) -> DistortionFit:
    """The pincushion and S distortion that the residual patch shifts of ``xray`` against ``drr`` show:
    ``(B, 1, H, W) x 2``, ``valid`` ``(B|1, 1, H, W)`` -> :class:`DistortionFit`.

    A rigid pose can move, turn and magnify a DRR, so at its best it leaves the part of a warp that
    none of those explain: the shifts are fitted with a translation, an in-plane turn and a
    magnification (what the pose still owes) plus ``k r^2 (u, v)`` and ``s r (-v, u)``, the warp of
    :func:`~SphericalRegLib.distortion.distort` to first order, with ``(u, v)`` in [-1, 1] across the
    detector and ``r`` normalised to 1 at its corners."""
    return _distortion_fit(*_matched_patches(drr, xray, valid), *drr.shape[-2:])


def residual_alignment(drr: Tensor, xray: Tensor, valid: Tensor, pixel_mm: float) -> tuple[Tensor, DistortionFit]:
    """:func:`residual_shift_mm` and :func:`residual_distortion` of the same images from one patch search."""
    shifts, counts = _matched_patches(drr, xray, valid)
    return _median_shift_mm(shifts, counts, pixel_mm), _distortion_fit(shifts, counts, *drr.shape[-2:])


def _distortion_fit(shifts: Tensor, counts: Tensor, H: int, W: int) -> DistortionFit:
    stride = PATCH // 2
    centre = lambda n, size: (torch.arange(n, dtype=shifts.dtype, device=shifts.device) * stride
                              + (PATCH - 1) / 2) * 2 / (size - 1) - 1
    v, u = torch.meshgrid(centre((H - PATCH) // stride + 1, H), centre((W - PATCH) // stride + 1, W), indexing="ij")
    u, v = u.flatten(), v.flatten()
    r = torch.sqrt(u**2 + v**2) / 2**0.5
    one, zero = torch.ones_like(u), torch.zeros_like(u)
    # unknowns: tu, tv, turn, magnification, k, s; rows: the u shifts, then the v shifts
    design = torch.cat([torch.stack([one, zero, -v, u, r**2 * u, -r * v], -1),
                        torch.stack([zero, one, u, v, r**2 * v, r * u], -1)])
    observed = torch.cat([shifts[..., 1] * 2 / (W - 1), shifts[..., 0] * 2 / (H - 1)], -1)  # (B, 2P)
    weight = counts.repeat(1, 2).to(shifts.dtype)
    coefficients, errors = [], []
    for b in range(shifts.shape[0]):
        A, y, w = design * weight[b, :, None], observed[b] * weight[b], weight[b]
        n = int(w.sum())
        if n < 2 * MIN_PATCHES + design.shape[1]:
            coefficients.append(torch.full((2,), float("nan"), dtype=shifts.dtype, device=shifts.device))
            errors.append(coefficients[-1])
            continue
        normal = A.T @ A
        x = torch.linalg.lstsq(normal, A.T @ y[:, None]).solution[:, 0]
        variance = ((A @ x - y) ** 2).sum() / (n - design.shape[1])
        covariance = variance * torch.linalg.pinv(normal)
        coefficients.append(x[4:])
        errors.append(covariance.diagonal()[4:].clamp_min(0).sqrt())
    return DistortionFit(torch.stack(coefficients), torch.stack(errors), counts.sum(-1))


def describe(shift_mm: float) -> str:
    """The residual shift in words, for the command line."""
    return (f"residual shift: the final DRR's edges lie {shift_mm:.2f} mm from the X-ray's (median over patches, on "
            "the detector; a few tenths of a millimetre where the pose is right)")
