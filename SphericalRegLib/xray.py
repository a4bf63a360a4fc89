"""From a detector frame to what a DRR renders: line integrals, collimator mask, working resolution.

A raw X-ray stores detector intensities I = I0 exp(-L) (air bright, bone dark); DRRs render the
line integral L of attenuation. Registration compares like with like, so real frames are taken
to L = -log(I / I0) before anything else.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from .camera import Camera
from .errors import InputError

__all__ = ["to_line_integrals", "looks_like_line_integrals", "collimator_mask", "shutter_mask", "round_field_mask",
           "is_round_field", "describe", "defects", "resample", "preprocess", "LOG_SPAN", "LINEAR_FLOOR", "ENCODINGS"]

LOG_SPAN = 5.0
"""A processed (windowed, log-like) export is read as line integrals ``LOG_SPAN (white - v) / (white - black)``
(air bright): its scale is unknown, NCC does not need it, and 0-5 is a chest's range."""

LINEAR_FLOOR = 0.02
"""A windowed export of intensities (a linear LUT, "processed-linear") is read as line integrals
``-log(v' + LINEAR_FLOOR)`` with ``v'`` its air-bright values scaled to 0-1: the window's black is
some small intensity above 0, unknown, and this keeps the darkest pixels finite (about 3.9)."""

ENCODINGS = ("intensity", "processed", "processed-linear")
"""How a frame's values relate to the line integrals L: raw detector counts (``-log(I / I0)``), a
windowed export of a log-like LUT (affine in L) or of a linear one (affine in exp(-L))."""

_BITS = (8, 10, 12, 14, 16)


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


def _plateaus(x: Tensor) -> tuple[float, float]:
    """Shares of the pixels exactly at the image's minimum and at its maximum."""
    return float((x == x.min()).double().mean()), float((x == x.max()).double().mean())


def _median3(x: Tensor) -> Tensor:
    """3 x 3 median (reflected at the borders, so a dead line at the edge is still a minority)."""
    p = F.pad(x[None, None], (1, 1, 1, 1), mode="reflect")[0, 0]
    return p.unfold(0, 3, 1).unfold(1, 3, 1).reshape(*x.shape, 9).median(-1).values


def defects(L: Tensor, threshold: float = 2.0) -> Tensor:
    """Pixels of line integrals ``L`` (rows, cols) that differ from their 3 x 3 median by more than
    ``threshold``: dead and hot pixels, dead lines, photon-starved pixels. Quantum noise at any
    usual dose is far below it (at 10,000 photons in air, L = 6 has a noise sd of 0.2)."""
    return (L - _median3(L)).abs() > threshold


def shutter_mask(L: Tensor, step: float = 0.8, agree: float = 0.25, max_fraction: float = 0.4,
                 span: int = 4) -> Tensor:
    """Exposed pixels ``(rows, cols)`` bool of line integrals ``L``: False behind collimator blades.

    A blade adds the same large attenuation (lead passes ~2%: 3.9 in L, less where scatter fills
    the shadow in) to every ray behind it, so at its inner edge L steps down along the whole line,
    whatever the anatomy. From each edge, the line ``r`` (up to ``max_fraction`` of the image)
    where ``L[r] - L[r + span]`` is largest is the blade's edge when that step exceeds ``step`` in
    the median over the line and ``step / 2`` in its ``agree`` quantile (nearly every ray steps
    down), and the shadow as a whole lies ``step`` above the open field next to it; the blade is
    masked up to ``span // 2`` lines past the step (its penumbra). Anatomy's edges (the diaphragm,
    the lung apices) are curved and cross only part of a line. Blades not aligned with the pixel
    grid are not found.
    """
    x = torch.as_tensor(L, dtype=torch.float64)

    def depth(lines: Tensor) -> int:  # lines (n, length), from the edge inwards
        n = lines.shape[0]
        limit = int(max_fraction * n)
        if limit < 2 or n <= span + 2:
            return 0
        length = lines.shape[1]  # the middle 40% of each line: the blades across it never reach there
        middle = lines[:, int(0.3 * length):max(int(0.3 * length) + 1, int(0.7 * length))]
        d = middle[:limit] - middle[span:limit + span]
        q = torch.quantile(d, torch.tensor([agree, 0.5], dtype=x.dtype), dim=1)
        ok = (q[0] > step / 2) & (q[1] > step)
        if not ok.any():
            return 0
        r = int(torch.where(ok, q[1], torch.full_like(q[1], -1e9)).argmax())
        edge = r + span // 2 + 1  # first line past the step's middle
        shadow = middle[:max(1, r + 1)].median()  # the other blades' shadows lie outside the middle
        inside = middle[r + span:r + span + max(r + 1, span)].median()
        if not shadow - inside > step:
            return 0
        return min(edge + span // 2, limit)

    top, bottom = depth(x), depth(x.flip(0))
    left, right = depth(x.T), depth(x.T.flip(0))
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[top:x.shape[0] - bottom, left:x.shape[1] - right] = True
    return mask


def _centre_distance(H: int, W: int) -> Tensor:
    """``(H, W)`` float64 distance in pixels of each pixel from the detector's centre."""
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    return ((u - (W - 1) / 2) ** 2 + (v - (H - 1) / 2) ** 2).sqrt()


def round_field_mask(L: Tensor, step: float = 0.8, agree: float = 0.25, span: int = 4,
                     min_arc: float = 0.08, within: Tensor | None = None) -> Tensor:
    """Exposed pixels ``(rows, cols)`` bool of line integrals ``L``: False outside the round field
    of an image intensifier (or an iris collimator), centred on the detector.

    As at a blade's edge (:func:`shutter_mask`), L steps up outwards by the same large amount on
    every ray across the field's edge, so on the circle of the edge's radius the step from
    ``span / 2`` px inside to ``span / 2`` px outside exceeds ``step`` in the median and
    ``step / 2`` in the ``agree`` quantile over the whole arc that lies on the detector (at least
    ``min_arc`` of the circle: a field wider than the detector leaves only its corners). Of the
    radii that qualify the one with the largest step is the edge; the mask keeps the field up to
    ``span / 2`` px inside it. A body's outline is neither centred nor round, and it steps down
    outwards (into air). ``within`` (rows, cols) bool: the field other blades leave (the iris is
    looked for only where both sides of its edge lie in it; behind a blade nothing steps).
    """
    x = torch.as_tensor(L, dtype=torch.float64)
    H, W = x.shape
    cy, cx = (H - 1) / 2, (W - 1) / 2
    theta = torch.linspace(0, 2 * math.pi, 361, dtype=torch.float64)[:-1]
    radii = torch.arange(0.3 * min(H, W), math.hypot(cy, cx) - span / 2, 1.0, dtype=torch.float64)
    if radii.numel() == 0:
        return torch.ones_like(x, dtype=torch.bool)

    def sample(r):  # (radii, angles) values at radius r, and whether the point lies on the detector
        rows, cols = cy + r[:, None] * theta.sin(), cx + r[:, None] * theta.cos()
        on = (rows >= 0) & (rows <= H - 1) & (cols >= 0) & (cols <= W - 1)
        i, j = rows.round().clamp(0, H - 1).long(), cols.round().clamp(0, W - 1).long()
        if within is not None:
            on = on & within[i, j]
        return x[i, j], on

    inner, on_in = sample(radii - span / 2)
    outer, on_out = sample(radii + span / 2)
    on = on_in & on_out
    d = torch.where(on, outer - inner, torch.full_like(inner, float("nan")))
    q = torch.nanquantile(d, torch.tensor([agree, 0.5], dtype=x.dtype), dim=1)
    ok = (on.double().mean(1) >= min_arc) & (q[0] > step / 2) & (q[1] > step)
    if not ok.any():
        return torch.ones_like(x, dtype=torch.bool)
    edge = float(radii[int(torch.where(ok, q[1], torch.full_like(q[1], -1e9)).argmax())])
    return _centre_distance(H, W) <= edge - span / 2


def is_round_field(field: Tensor, min_cut: float = 0.03, min_iou: float = 0.9) -> bool:
    """Whether an exposed field ``(rows, cols)`` bool is round and centred, as an image
    intensifier's (or an iris's) is: at least ``min_cut`` of the detector lies outside it, and it
    overlaps the centred disk of its own area by ``min_iou`` or more. A flat panel's field, blades
    or no collimation, is not."""
    field = torch.as_tensor(field, dtype=torch.bool)
    H, W = field.shape
    area = int(field.sum())
    if area == 0 or 1 - area / (H * W) < min_cut:
        return False
    disk = _centre_distance(H, W) ** 2 <= area / math.pi
    return int((disk & field).sum()) / int((disk | field).sum()) >= min_iou


def describe(image: Tensor, photometric: str | None = None) -> dict:
    """What the pixels of an X-ray ``(rows, cols)`` say about how to read them.

    ``encoding``: "processed" for an export windowed onto a full range of 2^bits levels (8-bit
    values, or black at exactly 0 and white at exactly 2^bits - 1 with a plateau at either: the
    window clips), "intensity" otherwise (raw detector counts: an offset above 0, no window).
    A processed export is read as affine in the line integrals (log and S-curve LUTs are nearly
    so over a chest's range; NCC needs no more); raw counts as ``-log(I / I0)``.
    ``photometric``: the argument when given (a DICOM's tag wins); otherwise raw counts are taken
    as MONOCHROME2 (air bright), and a processed export as bone bright (MONOCHROME1) when the
    clipped plateau along the image border is the white one (shutters and the body's thickest
    parts are black in an air-bright export), else by the spine: the middle third of the columns
    brighter than the outer quarters (by 5% of the range) means bone bright. ``evidence`` says which cue decided;
    ``confident`` is False when the cue was weak.
    """
    x = torch.as_tensor(image, dtype=torch.float64)
    lo, hi = float(x.min()), float(x.max())
    low, high = _plateaus(x)
    integer = bool(torch.equal(x, x.round()))
    full = integer and lo == 0 and any(hi == 2 ** b - 1 for b in _BITS)
    processed = integer and hi <= 255 and lo >= 0 or full and max(low, high) >= 0.002
    out = {"encoding": "processed" if processed else "intensity", "clipped_low": low, "clipped_high": high}
    if photometric:
        return {**out, "photometric": photometric.upper(), "photometric_source": "argument", "confident": True,
                "evidence": "given"}
    if not processed:
        return {**out, "photometric": "MONOCHROME2", "photometric_source": "pixels", "confident": True,
                "evidence": "raw detector counts are air bright"}
    border = torch.cat([x[:3].flatten(), x[-3:].flatten(), x[:, :3].flatten(), x[:, -3:].flatten()])
    b_lo, b_hi = float((border == lo).double().mean()), float((border == hi).double().mean())
    if max(b_lo, b_hi) >= 0.15 and min(b_lo, b_hi) < 0.02:
        inverted = b_hi > b_lo
        evidence, confident = f"the border is clipped {'white' if inverted else 'black'} ({max(b_lo, b_hi):.0%})", True
    else:
        ok = (x > lo) & (x < hi)
        cols = torch.nanmedian(torch.where(ok, x, torch.nan), 0).values
        W = x.shape[1]
        middle = torch.nanmedian(cols[W // 3:2 * W // 3])
        outer = torch.nanmedian(torch.cat([cols[:max(1, W // 4)], cols[-max(1, W // 4):]]))
        band = float((middle - outer) / max(hi - lo, 1e-12))
        if band != band:  # nan: nothing unclipped
            band = 0.0
        inverted, confident = band >= 0.05, abs(band) >= 0.05  # weak: the default, air bright
        evidence = (f"the middle columns are {'brighter' if inverted else 'darker'} than the outer ones ({band:+.2f})"
                    if confident else f"no clear cue (middle columns {band:+.2f} of the range against the outer ones)")
    return {**out, "photometric": "MONOCHROME1" if inverted else "MONOCHROME2", "photometric_source": "pixels",
            "confident": confident, "evidence": evidence}


def _linear_reading(v: Tensor, lo: float, hi: float) -> Tensor:
    """Line integrals of an air-bright export ``v`` read as a linear LUT's (:data:`LINEAR_FLOOR`)."""
    return math.log(1 + LINEAR_FLOOR) - torch.log((v - lo) / max(hi - lo, 1e-12) + LINEAR_FLOOR)


def _read(image: Tensor, photometric: str, air, dark, encoding: str) -> tuple[Tensor, Tensor, Tensor]:
    """Full-resolution ``(L, field, unclipped)``: line integrals, the exposed field (collimator and
    shutters) and the pixels not clipped by saturation or a display window."""
    x = torch.as_tensor(image, dtype=torch.float64)
    if encoding in ("processed", "processed-linear"):
        v = _as_intensity(x, photometric)  # air bright
        lo, hi = float(v.min()), float(v.max())
        low, high = _plateaus(v)
        unclipped = ~(((v == lo) & (low >= 0.0005)) | ((v == hi) & (high >= 0.0005)))
        readings = {"processed": lambda u: LOG_SPAN * (hi - u) / max(hi - lo, 1e-12),
                    "processed-linear": lambda u: _linear_reading(u, lo, hi)}
        v_filled = torch.where(unclipped, v, _median3(v))  # a median commutes with either monotone reading
        filled = {k: read(v_filled) for k, read in readings.items()}
        L = readings[encoding](v)
        # blades in either reading: a saturating LUT leaves a blade's shadow barely darker than dense
        # anatomy in the log reading, and the linear one stretches that end (S-curve exports)
        field = collimator_mask(x, photometric) & shutter_mask(filled["processed"]) & \
            shutter_mask(filled["processed-linear"])
        field = field & round_field_mask(filled[encoding], within=field)
        return torch.where(field, L, torch.zeros_like(L)), field, unclipped
    # raw detector counts: the old reading, exactly, when nothing is found
    field = collimator_mask(x, photometric)
    probe = to_line_integrals(x, photometric, air=air, mask=field, dark=dark, check=False)
    bad = defects(probe)
    filled = torch.where(bad, _median3(probe), probe)
    field = field & shutter_mask(filled)
    field = field & round_field_mask(filled, within=field)
    L = to_line_integrals(x, photometric, air=air, mask=field, dark=dark)
    v = _as_intensity(x, photometric)
    top = float(x.max())  # saturation: a plateau at the converter's full scale
    saturated = (x == top) & (_plateaus(x)[1] >= 0.001) & any(top == 2 ** b - 1 for b in _BITS)
    bad = defects(L) & field
    if bad.any():
        L = torch.where(bad, _median3(L), L)
    return L, field, ~saturated


def preprocess(image: Tensor, camera: Camera, size: int | tuple[int, int], photometric: str = "MONOCHROME2",
               air: float | None = None, dark: float = 0.0, line_integrals: bool = False,
               encoding: str = "auto") -> tuple[Tensor, Camera, Tensor]:
    """A detector frame made ready for registration: ``(line integrals, camera, valid mask)``.

    ``size`` is the longer side in pixels (aspect kept) or ``(rows, cols)``. ``encoding``: "auto"
    (:func:`describe` decides from the pixels), "intensity" (raw counts: ``-log(I / I0)``, I0 among
    the exposed pixels), "processed" (a windowed export, read affinely, :data:`LOG_SPAN`) or
    "processed-linear" (a windowed export of intensities, :data:`LINEAR_FLOOR`);
    ``photometric`` "AUTO" lets :func:`describe` choose it too. The exposed field (collimator
    blades, :func:`collimator_mask` and :func:`shutter_mask`) is found on the full-resolution frame,
    in an export's log and linear readings both (a display LUT may squeeze a blade's step into the
    end of the window that one of them compresses); dead and hot pixels (:func:`defects`) are
    replaced by their 3 x 3 median. The mask is resampled with the image: a pixel is valid when it
    lies wholly inside the exposed field and most of it is not clipped (saturated, or black or white
    in a window). Line integrals are float32, 0 outside the field (clipped pixels keep their clipped
    value). With ``line_integrals`` the image
    already holds -log(I/I0): it is only resampled, every pixel valid.
    """
    rows, cols = _target_size(camera, size)
    if line_integrals:
        L, new_camera = resample(torch.as_tensor(image).float(), camera, rows, cols)
        return L, new_camera, torch.ones_like(L, dtype=torch.bool)
    if encoding not in ("auto", *ENCODINGS):
        raise InputError("encoding", f"is {encoding!r}", "auto, " + ", ".join(ENCODINGS))
    if encoding == "auto" or (photometric or "").upper() == "AUTO":
        found = describe(image, None if (photometric or "").upper() == "AUTO" else photometric)
        photometric = found["photometric"]
        encoding = found["encoding"] if encoding == "auto" else encoding
    L, field, unclipped = _read(image, photometric, air, dark, encoding)
    L, new_camera = resample(L.float(), camera, rows, cols)
    m, _ = resample(field.float(), camera, rows, cols)
    m = m > 0.999
    if not unclipped.all():
        c, _ = resample(unclipped.float(), camera, rows, cols)
        valid = m & (c >= 0.5)
    else:
        valid = m
    return torch.where(m, L, torch.zeros_like(L)), new_camera, valid


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
                          line_integrals: bool = False, encoding: str = "auto") -> tuple[Tensor, Tensor]:
    """Line integrals of a detector frame in ``target``'s intrinsics, and the mask of target pixels
    that saw the exposed field: ``(target rows, cols)`` each.

    The frame is first binned to about the target's pixel footprint (so that the warp does not
    alias), then warped by :func:`warp_to_camera`.
    """
    footprint = (min(target.pixel_spacing) / target.sdd) / (min(camera.pixel_spacing) / camera.sdd)
    rows = max(2, min(camera.rows, round(camera.rows / max(footprint, 1e-6))))
    cols = max(2, min(camera.cols, round(camera.cols / max(footprint, 1e-6))))
    L, binned, mask = preprocess(image, camera, (rows, cols), photometric=photometric, line_integrals=line_integrals,
                                 encoding=encoding)
    warped = warp_to_camera(L, binned, target)
    valid = warp_to_camera(mask.float(), binned, target) > 0.999
    return torch.where(valid, warped, torch.zeros_like(warped)), valid
