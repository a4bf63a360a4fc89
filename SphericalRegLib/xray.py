"""From a detector frame to what a DRR renders: line integrals, collimator mask, working resolution.

A raw X-ray stores detector intensities I = I0 exp(-L) (air bright, bone dark); DRRs render the
line integral L of attenuation. Registration compares like with like, so real frames are taken
to L = -log(I / I0) before anything else.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from .camera import Camera
from .errors import InputError

__all__ = ["to_line_integrals", "looks_like_line_integrals", "collimator_mask", "resample", "preprocess"]


def _as_intensity(image: Tensor, photometric: str) -> Tensor:
    x = torch.as_tensor(image, dtype=torch.float64)
    if x.dim() != 2:
        raise InputError("image", f"has shape {list(x.shape)}", "a 2D X-ray (rows, cols)")
    photometric = (photometric or "MONOCHROME2").upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError("photometric", f"is {photometric!r}", "MONOCHROME1 or MONOCHROME2")
    return x.max() + x.min() - x if photometric == "MONOCHROME1" else x


def _centre_and_ring(image: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Median of the central third and of the outer tenth of the exposed field."""
    rows, cols = image.shape
    v = torch.arange(rows, dtype=torch.float64)[:, None].expand(rows, cols)
    u = torch.arange(cols, dtype=torch.float64)[None, :].expand(rows, cols)
    inside = torch.ones_like(image, dtype=torch.bool) if mask is None else mask
    vv, uu = v[inside], u[inside]
    if vv.numel() < 16:
        inside, vv, uu = torch.ones_like(image, dtype=torch.bool), v.flatten(), u.flatten()
    # normalised distance from the field's centre, 0 at the middle, 1 at its border
    cv, cu = (vv.min() + vv.max()) / 2, (uu.min() + uu.max()) / 2
    hv, hu = (vv.max() - vv.min()).clamp_min(1) / 2, (uu.max() - uu.min()).clamp_min(1) / 2
    r = torch.maximum((v - cv).abs() / hv, (u - cu).abs() / hu)
    centre = image[inside & (r <= 1 / 3)]
    ring = image[inside & (r >= 0.8)]
    return centre.median(), ring.median()


def looks_like_line_integrals(image: Tensor, mask: Tensor | None = None, margin: float = 0.1) -> bool:
    """Whether ``image`` (rows, cols) is clearly bright through the body, i.e. not detector intensities.

    Anatomy is centred in the field and attenuates more than its border (air or thin tissue):
    intensities are darker in the centre, line integrals brighter. Aerated lungs can make a
    detector frame's centre as bright as its border, so only a centre brighter by ``margin`` of
    the field's 1-99% range counts. A heuristic for warnings.
    """
    x = torch.as_tensor(image, dtype=torch.float64)
    centre, ring = _centre_and_ring(x, mask)
    values = x[mask] if mask is not None and int(mask.sum()) >= 16 else x.flatten()
    lo, hi = torch.quantile(values[:1 << 24], torch.tensor([0.01, 0.99], dtype=x.dtype))
    return bool(centre - ring > margin * (hi - lo))


def to_line_integrals(image: Tensor, photometric: str = "MONOCHROME2", air: float | None = None,
                      mask: Tensor | None = None, dark: float = 0.0, check: bool = True) -> Tensor:
    """Detector intensities ``(rows, cols)`` to line integrals ``-log((I - dark) / (I0 - dark))``, float64.

    ``photometric`` "MONOCHROME1" means the stored values are inverted intensities. ``air`` is I0,
    the unattenuated intensity; without it I0 is the 99.5th percentile of the exposed (``mask``)
    pixels, robust to a few hot pixels. With ``check``, an image that looks like line integrals
    already (bright through the body) gives a warning: converting it again inverts its contrast.
    Results are >= 0; pixels outside ``mask`` are 0.
    """
    x = _as_intensity(image, photometric)
    exposed = torch.ones_like(x, dtype=torch.bool) if mask is None else torch.as_tensor(mask, dtype=torch.bool)
    if exposed.shape != x.shape or not exposed.any():
        raise InputError("mask", f"has shape {list(exposed.shape)} and {int(exposed.sum())} exposed pixels",
                         f"a boolean mask of shape {list(x.shape)} with exposed pixels")
    if check and looks_like_line_integrals(x, exposed):
        warnings.warn(
            f"the X-ray is brighter through the middle of the field than at its border, as a line-integral "
            f"(log-processed, bone-bright) image is; it is being read as {photometric} detector intensities "
            f"(air bright). If that is wrong, use it as line integrals directly or pass the other photometric.",
            stacklevel=2,
        )
    x = x - dark
    I0 = torch.quantile(x[exposed][:1 << 24], 0.995) if air is None else torch.as_tensor(air - dark, dtype=x.dtype)
    if not I0 > 0:
        raise InputError("air", f"unattenuated intensity I0 - dark = {float(I0):g}", "a positive detector intensity")
    floor = I0 * 1e-6
    L = -torch.log(x.clamp_min(floor) / I0)
    return torch.where(exposed, L.clamp_min(0), torch.zeros_like(L))


def collimator_mask(image: Tensor, photometric: str = "MONOCHROME2", low: float = 0.1,
                    flat: float = 0.05, max_fraction: float = 0.4) -> Tensor:
    """Exposed pixels ``(rows, cols)`` bool: False on straight collimator borders at the image edges.

    A collimator blade shadows whole rows or columns with a low, near-constant signal. From each
    edge, rows (columns) are masked while their median is within ``low`` of the dynamic range above
    the darkest level and their 10-90% spread below ``flat`` of it, up to ``max_fraction`` of the image,
    and only where the signal then steps up sharply (by twice ``low`` of the range within 2 lines), as it
    does at a blade's edge and not where dark anatomy fades out. Blades not aligned with the pixel
    grid are not detected.
    """
    x = _as_intensity(image, photometric)
    lo, hi = torch.quantile(x.flatten()[:1 << 24], torch.tensor([0.001, 0.999], dtype=x.dtype))
    span = (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)

    def shadowed(lines: Tensor) -> tuple[Tensor, Tensor]:  # (n, length) -> (n,) bool, (n,) medians
        q = torch.quantile(lines, torch.tensor([0.1, 0.5, 0.9], dtype=x.dtype), dim=1)
        return (q[1] - lo < low * span) & (q[2] - q[0] < flat * span), q[1]

    def depth(flags: Tensor, medians: Tensor) -> int:
        limit = int(max_fraction * flags.numel())
        n = 0
        while n < limit and flags[n]:
            n += 1
        # a blade's shadow ends in a sharp step up; dark anatomy thins out gradually
        if 0 < n < flags.numel() and medians[n:n + 2].mean() - medians[:n].median() < 2 * low * span:
            return 0
        return n

    rows, cols = shadowed(x), shadowed(x.T)
    top, bottom = depth(*rows), depth(rows[0].flip(0), rows[1].flip(0))
    left, right = depth(*cols), depth(cols[0].flip(0), cols[1].flip(0))
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[top:x.shape[0] - bottom, left:x.shape[1] - right] = True
    return mask


def resample(image: Tensor, camera: Camera, rows: int, cols: int) -> tuple[Tensor, Camera]:
    """``image`` (rows, cols) on a ``rows x cols`` grid of the same detector, and its camera.

    Downsampling by whole factors bins pixels (their exact area average), as a binning detector
    does; other factors use an antialiased bilinear filter centred on each new pixel; upsampling
    interpolates.
    """
    x = torch.as_tensor(image)
    if tuple(x.shape) != camera.image_size:
        raise InputError("image", f"is {list(x.shape)} but the camera's image_size is {list(camera.image_size)}",
                         "an image of the camera's size")
    rows, cols = int(rows), int(cols)
    if min(rows, cols) < 2:
        raise InputError("size", f"is {rows} x {cols}", "at least 2 x 2 pixels")
    if (rows, cols) == camera.image_size:
        return x, camera
    x = x[None, None].to(x.dtype if x.is_floating_point() else torch.float32)
    fy, fx = camera.rows / rows, camera.cols / cols
    if fy == int(fy) and fx == int(fx):  # whole-pixel binning, as the detector itself bins
        out = F.avg_pool2d(x, (int(fy), int(fx)))[0, 0]
    else:
        out = F.interpolate(x, size=(rows, cols), mode="bilinear", align_corners=False,
                            antialias=fy > 1 or fx > 1)[0, 0]
    return out, camera.resized(rows, cols)


def _target_size(camera: Camera, size) -> tuple[int, int]:
    if isinstance(size, int):
        scale = size / max(camera.image_size)
        return max(2, round(camera.rows * scale)), max(2, round(camera.cols * scale))
    rows, cols = size
    return int(rows), int(cols)


def preprocess(image: Tensor, camera: Camera, size: int | tuple[int, int], photometric: str = "MONOCHROME2",
               air: float | None = None, dark: float = 0.0,
               line_integrals: bool = False) -> tuple[Tensor, Camera, Tensor]:
    """A detector frame made ready for registration: ``(line integrals, camera, exposed mask)``.

    ``size`` is the longer side in pixels (aspect kept) or ``(rows, cols)``. The collimator is found
    on the full-resolution frame, I0 among its exposed pixels; the mask is resampled with the image
    and keeps only pixels wholly inside the exposed field. Line integrals are float32, 0 outside.
    With ``line_integrals`` the image already holds -log(I/I0): it is only resampled, every pixel valid.
    """
    rows, cols = _target_size(camera, size)
    if line_integrals:
        L, new_camera = resample(torch.as_tensor(image).float(), camera, rows, cols)
        return L, new_camera, torch.ones_like(L, dtype=torch.bool)
    mask = collimator_mask(image, photometric)
    L = to_line_integrals(image, photometric, air=air, mask=mask, dark=dark)
    L, new_camera = resample(L.float(), camera, rows, cols)
    m, _ = resample(mask.float(), camera, rows, cols)
    m = m > 0.999
    return torch.where(m, L, torch.zeros_like(L)), new_camera, m


def warp_to_camera(image: Tensor, camera: Camera, target: Camera) -> Tensor:
    """``image`` (rows, cols) seen by ``camera`` as ``target`` would see it from the same source.

    For a pinhole camera a change of intrinsics (detector distance, pixel pitch, principal point) is
    exactly the homography ``K_camera K_target^-1`` of the image, whatever the scene: this is how an
    X-ray from another C-arm reaches networks trained for ``target``. Bilinear; zero where the
    target sees past the edge of ``camera``'s detector. Returns ``target.image_size``, float32.
    """
    x = torch.as_tensor(image, dtype=torch.float32)
    if tuple(x.shape) != camera.image_size:
        raise InputError("image", f"is {list(x.shape)} but the camera's image_size is {list(camera.image_size)}",
                         "an image of the camera's size")
    H = camera.intrinsics @ torch.linalg.inv(target.intrinsics)
    v, u = torch.meshgrid(torch.arange(target.rows, dtype=torch.float64),
                          torch.arange(target.cols, dtype=torch.float64), indexing="ij")
    p = torch.stack([u, v, torch.ones_like(u)], dim=-1) @ H.T
    uv = p[..., :2] / p[..., 2:]
    scale = torch.tensor([2.0 / max(camera.cols - 1, 1), 2.0 / max(camera.rows - 1, 1)], dtype=torch.float64)
    grid = (uv * scale - 1.0).to(torch.float32)[None]
    return F.grid_sample(x[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]


def preprocess_for_camera(image: Tensor, camera: Camera, target: Camera, photometric: str = "MONOCHROME2",
                          line_integrals: bool = False) -> tuple[Tensor, Tensor]:
    """Line integrals of a detector frame in ``target``'s intrinsics, and the mask of target pixels
    that saw the exposed field: ``(target rows, cols)`` each.

    The frame is first binned to about the target's pixel footprint (so that the warp does not
    alias), then warped by :func:`warp_to_camera`.
    """
    footprint = (min(target.pixel_spacing) / target.sdd) / (min(camera.pixel_spacing) / camera.sdd)
    rows = max(2, min(camera.rows, round(camera.rows / max(footprint, 1e-6))))
    cols = max(2, min(camera.cols, round(camera.cols / max(footprint, 1e-6))))
    L, binned, mask = preprocess(image, camera, (rows, cols), photometric=photometric, line_integrals=line_integrals)
    warped = warp_to_camera(L, binned, target)
    valid = warp_to_camera(mask.float(), binned, target) > 0.999
    return torch.where(valid, warped, torch.zeros_like(warped)), valid
