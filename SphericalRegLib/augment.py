"""Domain randomisation of the X-ray side (as in the authors' earlier CDreg code) and of bone contrast.

Each transform of :func:`randomise_xray` is applied to each image independently with
probability ``p`` (0.5), in this order: Gaussian blur (3x3 or 5x5), Gaussian noise,
re-normalisation to [0, 1], linear scaling x U(0.9, 1.05), gamma U(0.7, 1.3), a sine intensity
warp ``I + a sin(b I + c)``, inversion, random erasing and collimation (a border band flattened
to the image's minimum or maximum, as shutters or a cropped detector leave it). Intensity-shape
transforms (gamma, sine, inversion) act on the image's own [min, max] range and map back to it,
so they apply to line integrals of any scale. All randomness comes from the given generator.

:func:`randomise_physics` (opt-in: ``TrainConfig.physics_p``) covers the physics family of
:mod:`SphericalRegLib.physics` in the image domain: each training DRR (line integrals) is taken
through a random X-ray system and back to line integrals as ``xray.preprocess`` would read the
exported frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError

__all__ = ["randomise_xray", "random_bone_scale", "randomise_physics", "cut_field"]


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


def _border_mask(img: Tensor, g: torch.Generator, max_band: float, min_side: float = 1.0,
                 side_power: float = 1.0) -> Tensor:
    """``(B, 1, H, W)`` True outside a square detector of side ``min_side + (1 - min_side) u^side_power``
    of the image's (``u ~ U(0, 1)``), off-centre by up to half the margin it leaves, and in a band of
    up to ``max_band`` of its side along each of its borders (with ``min_side`` 1, the bands alone)."""
    B, _, H, W = img.shape
    if min_side < 1:
        u = torch.rand(B, generator=g, dtype=torch.float64) ** side_power
        side = (min_side + (1 - min_side) * u).to(device=img.device, dtype=img.dtype)
        margin = (1 - side) / 2
        shift = [_uniform(B, -0.5, 0.5, g, img).flatten() * margin for _ in range(2)]
    else:
        side, margin, shift = 1.0, 0.0, (0.0, 0.0)
    bands = [_uniform(B, 0, max_band, g, img).flatten() * side for _ in range(4)]
    top, bottom = (margin + shift[0] + bands[0]) * H, (1 - margin + shift[0] - bands[1]) * H
    left, right = (margin + shift[1] + bands[2]) * W, (1 - margin + shift[1] - bands[3]) * W
    rows = torch.arange(H, device=img.device, dtype=img.dtype)[None, :, None]
    cols = torch.arange(W, device=img.device, dtype=img.dtype)[None, None, :]
    outside = ((rows < top[:, None, None]) | (rows >= bottom[:, None, None])
               | (cols < left[:, None, None]) | (cols >= right[:, None, None]))
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


def _log_uniform(n: int, low: float, high: float, g: torch.Generator, like: Tensor) -> Tensor:
    return torch.exp(_uniform(n, math.log(low), math.log(high), g, like))


def _blur_each(img: Tensor, sigma_px: Tensor) -> Tensor:
    """Separable Gaussian blur of each ``(1, H, W)`` image with its own sigma (px), reflected borders."""
    out = []
    for x, sigma in zip(img, sigma_px.flatten().tolist()):
        x = x[None]
        if sigma >= 0.3:
            for dim in (2, 3):
                radius = max(1, min(int(3 * sigma), x.shape[dim] - 1))
                t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
                k = torch.exp(-0.5 * (t / sigma) ** 2)
                k = k / k.sum()
                pad = (0, 0, radius, radius) if dim == 2 else (radius, radius, 0, 0)
                kernel = k.view(1, 1, -1, 1) if dim == 2 else k.view(1, 1, 1, -1)
                x = F.conv2d(F.pad(x, pad, mode="reflect"), kernel)
        out.append(x[0])
    return torch.stack(out)


def _hardening(L: Tensor, g: torch.Generator, wanted: Tensor) -> Tensor:
    """Polychromatic line integrals of water-equivalent paths: kVp U(60, 125), U(2.5, 8) mm Al, for the
    images ``wanted`` ``(B,)``; the others come back as they were (their spectra are drawn all the same)."""
    from .physics import REFERENCE_KEV, mass_attenuation, spectrum

    B = L.shape[0]
    kvp = (60 + 65 * torch.rand(B, generator=g, dtype=torch.float64)).tolist()
    al = (2.5 + 5.5 * torch.rand(B, generator=g, dtype=torch.float64)).tolist()
    index = wanted.nonzero()[:, 0].tolist()
    if not index:
        return L
    E = torch.arange(11.0, 125.0, 2.0, dtype=torch.float64)
    weights = torch.zeros(len(index), E.numel(), dtype=torch.float64)
    for row, b in enumerate(index):
        e, w = spectrum(kvp[b], al[b], step_kev=2.0)
        weights[row, :e.numel()] = w
    ratio = (mass_attenuation("water", E) / mass_attenuation("water", torch.tensor(REFERENCE_KEV))).to(L)
    w = weights.to(L).reshape(len(index), 1, 1, 1, -1)
    intensity = (w * torch.exp(-L[index][..., None] * ratio)).sum(-1)
    out = L.clone()
    out[index] = -torch.log(intensity.clamp_min(1e-12))
    return out


def _instrument_paths(img: Tensor, g: torch.Generator, pixel_mm: float, wanted: Tensor) -> Tensor:
    """``(B, 1, H, W)`` line integrals (60 keV) of random screws, K-wires and retractors (physics._instruments_2d)
    in the images ``wanted`` ``(B,)``, zero in the others, whose instruments are drawn all the same (on a
    one-pixel detector) so that every image's draws are those of a run that draws them all."""
    from .camera import Camera
    from .physics import Physics, _instruments_2d

    B, _, H, W = img.shape
    camera = Camera(1020.0, (pixel_mm, pixel_mm), ((W - 1) / 2, (H - 1) / 2), (H, W))
    pixel = Camera(1020.0, (pixel_mm, pixel_mm), (0.0, 0.0), (1, 1))
    out = torch.zeros(B, H, W, dtype=torch.float64)
    for b, render in enumerate(wanted.flatten().tolist()):
        n = torch.randint(0, 7, (3,), generator=g).tolist()
        physics = Physics(screws=n[0], kwires=n[1] % 3, retractors=int(n[2] >= 5))
        paths = _instruments_2d(physics, camera if render else pixel, g)[0]
        if render:
            out[b] = paths.sum(0)
    return out[:, None].to(img)


def randomise_physics(img: Tensor, generator: torch.Generator, p: float = 0.5, pixel_mm: float = 1.0,
                      return_field: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Line-integral DRRs ``(B, 1, H, W)`` as a random X-ray system would image and export them, read
    back as line integrals; the input is left unchanged.

    Each effect is applied to each image with probability ``p``, in the order the X-rays meet
    them (ranges as ``physics.RANDOM``): instruments (screws, K-wires, retractors) added to the
    line integrals; beam hardening (the water-equivalent polychromatic curve of a random spectrum);
    then on intensities: the heel effect (up to 30% across the field), collimator shutters (up
    to 30% of each side, 2% transmission), scatter (log-uniform 0.01-1.5 of the primary blurred by
    10-120 mm), grid lines (1-10% deep, 2.2-12 px period), quantum noise (Gaussian approximation
    of Poisson at 100-30,000 photons per pixel in air), detector blur (0-2 mm); processing
    (log, linear or S-curve LUT, windowing at the 0-3% and 97-100% quantiles, gamma 0.6-1.6,
    unsharp masking, 8-bit quantisation); detector gain non-uniformity (0-3%) and defective pixels
    (0.01-0.2%, half dead, half saturated) come after the blur. Read back as ``xray.preprocess``
    reads it: a processed image affinely (``LOG_SPAN (1 - v)``), raw intensities as ``-log I`` with
    defects replaced by their 3 x 3 median; shuttered bands and the outside of a round
    image-intensifier field (30% of the images with shutters) are set to 0, as the reader masks
    what it finds (``xray.shutter_mask``, ``xray.round_field_mask``). ``pixel_mm`` is the detector pixel
    size, for the kernels given in mm. Images no effect was drawn for come back unchanged. With
    ``return_field``, also the ``(B, 1, H, W)`` mask of pixels outside the shutters, which the
    registration's reader would report as the exposed field.
    """
    if img.dim() != 4 or img.shape[1] != 1:
        raise InputError("img", f"has shape {tuple(img.shape)}", "(B, 1, H, W) line integrals")
    g, B, x = generator, img.shape[0], img.clamp_min(0)
    H, W = img.shape[-2:]
    coins = {name: _coin(B, p, g, x) for name in
             ("instruments", "hardening", "heel", "shutters", "scatter", "grid", "noise", "blur", "detector",
              "processing")}
    applied = torch.stack(list(coins.values())).any(0)

    L = x + _instrument_paths(x, g, pixel_mm, coins["instruments"].flatten())
    L = _hardening(L, g, coins["hardening"].flatten())
    intensity = torch.exp(-L)
    rows = torch.linspace(0, 1, H, device=x.device, dtype=x.dtype)[None, None, :, None]
    cols = torch.linspace(0, 1, W, device=x.device, dtype=x.dtype)[None, None, None, :]
    along_rows = _coin(B, 0.5, g, x)
    t = torch.where(along_rows, rows.expand(B, 1, H, W), cols.expand(B, 1, H, W))
    t = torch.where(_coin(B, 0.5, g, x), t, 1 - t)
    heel = 1 + _uniform(B, 0.0, 0.3, g, x) * (0.5 - t)
    intensity = torch.where(coins["heel"], intensity * heel, intensity)
    v = torch.linspace(-1, 1, H, device=x.device, dtype=x.dtype)[None, None, :, None]
    u = torch.linspace(-1, 1, W, device=x.device, dtype=x.dtype)[None, None, None, :]
    iris = (u**2 + v**2).sqrt() > _uniform(B, 0.9, 1.1, g, x)  # an image intensifier's round field
    iris_drawn = _coin(B, 0.3, g, x)
    shutter = torch.where(iris_drawn, iris, _border_mask(x, g, 0.3)) & coins["shutters"]
    intensity = torch.where(shutter, 0.02 * intensity, intensity)
    sigma = _uniform(B, 10.0, 120.0, g, x) / pixel_mm
    scatter = _log_uniform(B, 0.01, 1.5, g, x) * _blur_each(intensity, sigma)
    intensity = torch.where(coins["scatter"], intensity + scatter, intensity)
    period, depth = _uniform(B, 2.2, 12.0, g, x), _uniform(B, 0.01, 0.1, g, x)
    phase = _uniform(B, 0.0, 2 * math.pi, g, x)
    index = torch.where(along_rows, rows.expand(B, 1, H, W) * (H - 1), cols.expand(B, 1, H, W) * (W - 1))
    lines = 1 - depth * 0.5 * (1 + torch.cos(2 * math.pi * index / period + phase))
    intensity = torch.where(coins["grid"], intensity * lines, intensity)
    photons = _log_uniform(B, 100.0, 30000.0, g, x)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x)
    noisy = (intensity + (intensity.clamp_min(0) / photons).sqrt() * noise).clamp_min(0.5 / photons)
    intensity = torch.where(coins["noise"], noisy, intensity)
    blurred = _blur_each(intensity, _uniform(B, 0.0, 2.0, g, x) / pixel_mm)
    intensity = torch.where(coins["blur"], blurred, intensity)
    # detector: gain non-uniformity (0-3%) and defective pixels (0.01-0.2%, half dead, half saturated)
    spread = _uniform(B, 0.0, 0.03, g, x) * torch.randn(x.shape, generator=g, dtype=torch.float64).to(x)
    defect = torch.rand(x.shape, generator=g, dtype=torch.float64).to(x) < _log_uniform(B, 1e-4, 2e-3, g, x)
    hot = torch.rand(x.shape, generator=g, dtype=torch.float64).to(x) < 0.5
    faulty = torch.where(defect, torch.where(hot, intensity.amax(dim=(-2, -1), keepdim=True), torch.zeros_like(x)),
                         intensity * (1 + spread))
    intensity = torch.where(coins["detector"], faulty, intensity)

    # processing: a LUT over a window, gamma, unsharp mask, 8 bits; then read back by to_line_integrals
    kind = torch.randint(0, 3, (B,), generator=g).to(x.device).reshape(B, 1, 1, 1)  # 0 linear, 1 log, 2 sigmoid
    y = torch.where(kind > 0, torch.log(intensity.clamp_min(1e-6)), intensity)
    amount = _uniform(B, 0.0, 2.0, g, x)
    y = y + amount * (y - _blur_each(y, _uniform(B, 2.0, 15.0, g, x) / pixel_mm))
    flat = y.flatten(1)
    lo = torch.stack([flat[b].quantile(q) for b, q in enumerate(_uniform(B, 0.0, 0.03, g, x).flatten().tolist())])
    hi = torch.stack([flat[b].quantile(q) for b, q in enumerate(_uniform(B, 0.97, 1.0, g, x).flatten().tolist())])
    z = ((y - lo.reshape(B, 1, 1, 1)) / (hi - lo).clamp_min(1e-12).reshape(B, 1, 1, 1)).clamp(0, 1)
    s0, s1 = 1 / (1 + math.exp(3.0)), 1 / (1 + math.exp(-3.0))
    z = torch.where(kind == 2, ((torch.sigmoid(6 * (z - 0.5)) - s0) / (s1 - s0)).clamp(0, 1), z)
    z = z ** _log_uniform(B, 0.6, 1.6, g, x)
    z = torch.where(_coin(B, 0.5, g, x), (z * 255).round() / 255, z)
    intensity = torch.where(coins["processing"], z, intensity)

    # read back as xray.preprocess reads such a frame: a processed export affinely (LOG_SPAN over its
    # window, air bright, clipped pixels keep their clipped value), raw intensities as -log(I / I0)
    # with dead and hot pixels replaced by their 3 x 3 median; blades and a round field are found and
    # set to 0 (xray.shutter_mask, xray.round_field_mask)
    from .xray import LOG_SPAN, _median3

    raw = -torch.log(intensity.clamp_min(1e-6))
    median = torch.stack([_median3(r[0])[None] for r in raw])
    raw = torch.where((raw - median).abs() > 2.0, median, raw)
    out = torch.where(coins["processing"], LOG_SPAN * (1 - intensity), raw)
    out = torch.where(shutter, torch.zeros_like(out), out.clamp_min(0))
    out = torch.where(applied, out, img)
    return (out, ~shutter) if return_field else out


def cut_field(img: Tensor, generator: torch.Generator, p: float = 0.25, max_band: float = 0.12,
              min_side: float = 1.0, side_power: float = 1.0) -> tuple[Tensor, Tensor]:
    """X-rays ``(B, 1, H, W)`` whose exposed field ends early, and the mask of the field ``(B, 1, H, W)``.

    With probability ``p`` per image the field is cut to a square detector whose side is a fraction
    ``min_side + (1 - min_side) u^side_power``, ``u ~ U(0, 1)``, of the image's (``side_power`` 1: uniform;
    above 1: small detectors drawn more often), its centre jittered by up to half the margin it leaves, and
    then a band of up to ``max_band`` of that side along each of its borders is cut too. That is
    what registration reads from a C-arm whose detector is smaller than the training camera's, or
    off-centre, or collimated (``xray.preprocess_for_camera`` zeroes what its target camera sees
    past the detector and reports it as outside the field). Training then compares the X-ray with a
    DRR cut to the same field, as ``register.stages.learnt_residual`` does; the input is left unchanged.
    """
    if img.dim() != 4:
        raise InputError("img", f"has shape {tuple(img.shape)}", "(B, C, H, W) images")
    if not 0 < min_side <= 1:
        raise InputError("min_side", f"is {min_side}", "a fraction of the image's side in (0, 1]")
    if not side_power > 0:
        raise InputError("side_power", f"is {side_power}", "a positive exponent (1: sides drawn uniformly)")
    outside = _border_mask(img, generator, max_band, min_side, side_power) & _coin(img.shape[0], p, generator, img)
    return torch.where(outside, torch.zeros_like(img), img), ~outside
