"""The intensity stage's residual: patch and global NCC of intensities and of edges, over the
X-ray's valid pixels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ..intensity import quadratic_match, sobel, standardise

__all__ = ["ncc_residual", "robust_patches", "bright_outliers", "FORMS", "TERMS", "DRR_MODELS", "MIN_VALID",
           "OUTLIER_MARGIN", "local_outliers", "LOCAL_OUTLIER_FACTOR", "xray_excess", "metal_outliers"]

FORMS = ("difference", "ncc")
TERMS = ("intensities", "edges")
DRR_MODELS = ("linear", "quadratic")


def check_terms(terms) -> tuple[str, ...]:
    """The comparisons named in ``terms``, in :data:`TERMS` order, or a clear error."""
    if not terms or any(t not in TERMS for t in terms):
        raise InputError("terms", f"is {terms!r}", "one or both of " + " and ".join(TERMS))
    return tuple(t for t in TERMS if t in terms)

MIN_VALID = 0.5
"""A patch counts only where at least this share of its pixels is valid; the others' entries are 0."""

OUTLIER_MARGIN = 0.5
""":func:`bright_outliers`: how far above the DRR's brightest pixel (in the DRR's 10-80% ranges) an
X-ray pixel must be to be taken for something the CT does not hold (metal)."""


def _valid_values(x: Tensor, valid: Tensor) -> Tensor | None:
    """``x`` (B, 1, H, W) at the ``valid`` pixels as (B, N) when the mask is one for the whole batch
    (the registrar's case: one X-ray, many poses); None otherwise."""
    if valid.shape[0] != 1:
        return None
    return x.flatten(1)[:, valid[0].flatten()]


def _on_drr_scale(x: Tensor, drr: Tensor, valid: Tensor):
    """The affine map that puts ``x`` (1 or B, 1, H, W) onto ``drr``'s (B, 1, H, W) scale, matching
    their 10th and 80th percentiles over the ``valid`` pixels: ``(offset, scale)`` with
    ``x_on_drr = offset + scale * x``, each (B,), each image's DRR 10-80% range (B,), and which images
    allowed it (B,) bool. The reader's scale is not the DRR's: scatter, spectra and a processed
    export's unknown window all change it."""
    B = drr.shape[0]
    q = torch.tensor([0.1, 0.8], dtype=x.dtype, device=x.device)
    offset, scale, spread = (torch.zeros(B, dtype=x.dtype, device=x.device) for _ in range(3))
    ok = torch.zeros(B, dtype=torch.bool, device=x.device)
    xs, ds = _valid_values(x, valid), _valid_values(drr.to(x.dtype), valid)
    if xs is not None:
        if xs.shape[1] < 16:
            return offset, scale, spread, ok
        qx, qd = torch.quantile(xs, q, dim=1), torch.quantile(ds, q, dim=1)  # (2, 1 or B), (2, B)
    else:
        v = valid.expand(B, -1, -1, -1).flatten(1)
        pairs = [(x[min(k, len(x) - 1)].flatten()[v[k]], drr[k].flatten().to(x.dtype)[v[k]]) for k in range(B)]
        if min(a.numel() for a, _ in pairs) < 16:
            return offset, scale, spread, ok
        qx = torch.stack([torch.quantile(a, q) for a, _ in pairs], 1)
        qd = torch.stack([torch.quantile(b, q) for _, b in pairs], 1)
    spread_x, spread = (qx[1] - qx[0]).expand(B), qd[1] - qd[0]
    ok = (spread > 0) & (spread_x > 0)
    scale = torch.where(ok, spread / spread_x.clamp_min(1e-30), torch.zeros_like(spread))
    offset = torch.where(ok, qd[0] - scale * qx[0].expand(B), torch.zeros_like(spread))
    return offset, scale, torch.where(ok, spread, torch.zeros_like(spread)), ok


def _valid_max(x: Tensor, valid: Tensor) -> Tensor:
    """Each image's largest value over the ``valid`` pixels, (B,)."""
    return x.masked_fill(~valid.expand_as(x), float("-inf")).flatten(1).max(1).values


def _dilated(mask: Tensor) -> Tensor:
    """``mask`` (B, 1, H, W) bool grown by one pixel: the blur around metal."""
    return F.max_pool2d(mask.to(torch.float32), 3, stride=1, padding=1) > 0


def _bright(x: Tensor, drr: Tensor, valid: Tensor, margin: float, offset, scale, spread, ok) -> Tensor:
    """:func:`bright_outliers` before dilation, given :func:`_on_drr_scale`'s answer."""
    top = _valid_max(drr.to(x.dtype), valid)
    mapped = offset[:, None, None, None] + scale[:, None, None, None] * x
    return (mapped > (top + margin * spread)[:, None, None, None]) & ok[:, None, None, None]


def bright_outliers(x: Tensor, drr: Tensor, valid: Tensor, margin: float = OUTLIER_MARGIN) -> Tensor:
    """Pixels of ``x`` (1 or B, 1, H, W) far brighter than anything ``drr`` (B, 1, H, W) shows:
    instruments and implants that are not in the CT. ``valid`` (B or 1, 1, H, W) bool.

    On the DRR's scale (:func:`_on_drr_scale`), a pixel is an outlier where it lies more than
    ``margin`` of the DRR's 10-80% range above the DRR's maximum. Dilated by one pixel (the blur
    around metal). No gradient flows through the mask."""
    with torch.no_grad():
        return _dilated(_bright(x, drr, valid, margin, *_on_drr_scale(x, drr, valid)))


LOCAL_OUTLIER_FACTOR = 1.5
""":func:`local_outliers`: how many times the DRR's 99th percentile of local excess an X-ray pixel's
must exceed. The DRR's maximum is not used: a ray grazing the CT's last slice makes a thin ridge
that is anatomy's largest excess in no X-ray."""


def _opening(x: Tensor, width: int) -> Tensor:
    """Grey-scale opening of ``x`` (B, 1, H, W) by a ``width`` x ``width`` square (separable)."""
    pad = width // 2

    def pool(y: Tensor, kernel, padding) -> Tensor:
        return F.max_pool2d(y, kernel, stride=1, padding=padding)

    eroded = -pool(pool(-x, (1, 2 * pad + 1), (0, pad)), (2 * pad + 1, 1), (pad, 0))
    return pool(pool(eroded, (1, 2 * pad + 1), (0, pad)), (2 * pad + 1, 1), (pad, 0))


def _excess(image: Tensor, width: int) -> Tensor:
    """The white top-hat by a ``width`` square of ``image`` (B, 1, H, W) smoothed by a 3 x 3 box."""
    smooth = F.avg_pool2d(image, 3, stride=1, padding=1, count_include_pad=False)
    return smooth - _opening(smooth, width)


def xray_excess(x: Tensor, valid: Tensor, width: int) -> Tensor:
    """The local excess of :func:`local_outliers` for the X-ray ``x`` (1 or B, 1, H, W) on its own
    scale, its invalid pixels filled by its valid maximum (a field's edge is not a ridge). It depends
    on the X-ray alone, so a registration takes it once per level and view."""
    with torch.no_grad():
        return _excess(torch.where(valid, x, _valid_max(x, valid)[:, None, None, None]), width)


def _local(excess_x: Tensor, drr: Tensor, valid: Tensor, width: int, factor: float | None, scale, ok) -> Tensor:
    """:func:`local_outliers` before dilation, given the X-ray's :func:`xray_excess` and
    :func:`_on_drr_scale`'s scale and which images allowed it."""
    B = drr.shape[0]
    factor = LOCAL_OUTLIER_FACTOR if factor is None else factor
    excess_d = _excess(drr.to(excess_x.dtype), width)
    values = _valid_values(excess_d, valid)
    if values is not None:
        top = torch.quantile(values, 0.99, dim=1)
    else:
        v = valid.expand(B, -1, -1, -1)
        top = torch.stack([torch.quantile(excess_d[k][v[k]], 0.99) for k in range(B)])
    ok = ok & (top > 0)
    return (scale[:, None, None, None] * excess_x > (factor * top)[:, None, None, None]) & valid & ok[:, None, None, None]


def local_outliers(x: Tensor, drr: Tensor, valid: Tensor, width: int, factor: float | None = None,
                   x_excess: Tensor | None = None) -> Tensor:
    """Pixels of ``x`` (1 or B, 1, H, W) that stand above their surroundings far more than the
    DRR's (B, 1, H, W) anatomy does anywhere: pedicle screws, retractors and other metal narrower
    than ``width`` px that the CT does not hold, over anatomy of any brightness (a K-wire a pixel
    wide is mostly smoothed below the bar). ``valid`` (B or 1, 1, H,
    W) bool. Where they lie is not compared with the DRR at the same place, so a pose still far off
    does not hide them.

    The local excess is the white top-hat (the image less its opening by a ``width`` square) of
    each image smoothed by a 3 x 3 box (noise does not count), the X-ray's (:func:`xray_excess`,
    which ``x_excess`` may pass precomputed) put on the DRR's scale (:func:`_on_drr_scale`;
    smoothing and opening commute with that increasing affine map, so the X-ray's top-hat is taken
    once for a batch of poses). An outlier's excess exceeds ``factor`` (default
    :data:`LOCAL_OUTLIER_FACTOR`) times the 99th percentile of the DRR's over the valid pixels.
    Dilated by one pixel. No gradient flows through the mask."""
    with torch.no_grad():
        _, scale, _, ok = _on_drr_scale(x, drr, valid)
        excess_x = xray_excess(x, valid, width) if x_excess is None else x_excess
        return _dilated(_local(excess_x, drr, valid, width, factor, scale, ok))


def metal_outliers(x: Tensor, drr: Tensor, valid: Tensor, width: int, x_excess: Tensor | None = None) -> Tensor:
    """:func:`bright_outliers` or, for ``width`` of 2 px or more, :func:`local_outliers`: the union,
    with the X-ray put on each DRR's scale once for both (``x_excess``: :func:`xray_excess`,
    precomputed). What the intensity stage leaves out."""
    with torch.no_grad():
        offset, scale, spread, ok = _on_drr_scale(x, drr, valid)
        out = _bright(x, drr, valid, OUTLIER_MARGIN, offset, scale, spread, ok)
        if width >= 2:
            excess_x = xray_excess(x, valid, width) if x_excess is None else x_excess
            out = out | _local(excess_x, drr, valid, width, None, scale, ok)
        return _dilated(out)


def _erode(mask: Tensor) -> Tensor:
    """A pixel stays valid only with its 8 neighbours (outside the image counts as valid): the
    3 x 3 Sobel of a masked X-ray sees the mask's edge."""
    inverted = (~mask).to(torch.float32)
    return ~(F.max_pool2d(inverted, 3, stride=1, padding=1) > 0)


def check_drr_model(drr_model) -> None:
    """A DRR model is one of :data:`DRR_MODELS`, or a clear error."""
    if drr_model not in DRR_MODELS:
        raise InputError("drr_model", f"is {drr_model!r}", " or ".join(DRR_MODELS))


def check_robust(robust) -> None:
    """A Cauchy scale is None or a positive number, or a clear error."""
    if robust is not None and not (isinstance(robust, (int, float)) and 0 < robust < math.inf):
        raise InputError("robust", f"is {robust!r}", "None or a positive number")


def robust_patches(local: Tensor, n_patches: Tensor | int, scale: float | None) -> Tensor:
    """Each patch's entries ``local`` (B, tiles, n) rescaled so that the patch costs Cauchy's
    ``c log(1 + d / c)`` instead of its ``d = 2 (1 - NCC)`` (``d = n_patches * ||entries||^2``), with
    ``c = scale``; None leaves them as they are.

    A patch that cannot match (collimator shadow, an instrument, tissue the CT does not hold) costs
    up to 4 under least squares and pulls the pose as hard as any; under Cauchy's loss its pull
    fades as it stays unmatched, while well-matched patches (``d << c``) count as before."""
    if scale is None:
        return local
    d = local.pow(2).sum(-1, keepdim=True) * n_patches
    ratio = torch.where(d > 1e-12, scale * torch.log1p(d / scale) / d.clamp_min(1e-12), torch.ones_like(d))
    return local * ratio.sqrt()


def ncc_residual(patch: int, form: str = "difference", min_valid: float = MIN_VALID, terms: tuple = TERMS,
                 robust: float | None = None, drr_model: str = "linear"):
    """The LM residual of patch NCC on intensities and on edges (Sobel), ``(B, 1, H, W) x 2 -> (B, M)``.

    ``0.5 ||r||^2`` is the mean of four costs either way: ``1 - NCC`` over patches and over the whole
    image, of intensities and of edges. ``form="difference"``: the entries are differences of
    standardised pixels; they vanish linearly at a perfect match, as Gauss-Newton's model assumes,
    so LM converges fast near the optimum, but its linear model has a small capture range.
    ``form="ncc"``: one entry ``sqrt(2 (1 - NCC))`` per patch; a few smooth entries that carry LM
    far from the optimum, but quadratic at it, where LM stalls. Coarse levels use the second, fine
    levels the first.

    ``residual(a, b, mask)``: ``mask`` (B or 1, 1, H, W) bool, the pixels that count (the X-ray's
    valid pixels): NCC is taken over them only, masked entries are 0 and the length M stays that of
    the unmasked residual (LM needs a fixed M). A patch with fewer than ``min_valid`` of its pixels
    valid gives 0 entries; the edge terms use the mask shrunk by one pixel. With no mask, or an
    all-true one, the result is the unmasked residual to the bit. ``terms``: which comparisons enter,
    of intensities, of edges or both (the default; with one, the cost is the mean of its two).
    ``robust``: Cauchy's scale for each patch's cost (:func:`robust_patches`); None, least squares.
    ``drr_model``: "linear" compares ``b`` as it is (NCC forgives a linear map); "quadratic" first
    replaces it by its best quadratic fit to ``a`` over the mask (:func:`~..intensity.quadratic_match`).
    """
    if form not in FORMS:
        raise InputError("form", f"is {form!r}", " or ".join(FORMS))
    check_robust(robust)
    check_drr_model(drr_model)
    used = check_terms(terms)
    scale = math.sqrt(2 * len(used))  # 0.5 ||r||^2: the mean of each term's patch and whole-image cost

    def tiles(x: Tensor, h: int, w: int) -> Tensor:
        B, c = x.shape[:2]
        x = x[..., :h, :w].reshape(B, c, h // patch, patch, w // patch, patch)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(B, -1, c * patch * patch)

    def unmasked(a: Tensor, b: Tensor) -> Tensor:
        H, W = a.shape[-2:]
        h, w = (H // patch) * patch, (W // patch) * patch
        parts = []
        pairs = {"intensities": lambda: (a, b), "edges": lambda: (sobel(a), sobel(b))}
        for fa, fb in (pairs[t]() for t in used):
            ta, tb = tiles(fa, h, w), tiles(fb, h, w)
            n_tiles, n = ta.shape[1], ta.shape[2]
            local = robust_patches((standardise(ta, -1) - standardise(tb, -1)) / math.sqrt(n * n_tiles), n_tiles,
                                   robust)
            whole = (standardise(fa, (1, 2, 3)) - standardise(fb, (1, 2, 3))) / math.sqrt(fa[0].numel())
            if form == "ncc":  # the norm of each group of differences: sqrt(2 (1 - NCC)) per patch
                local = local.pow(2).sum(-1).clamp_min(1e-12).sqrt()
                whole = whole.flatten(1).pow(2).sum(-1, keepdim=True).clamp_min(1e-12).sqrt()
            parts += [local.flatten(1), whole.flatten(1)]
        return torch.cat(parts, dim=-1) / scale

    def masked(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
        H, W = a.shape[-2:]
        h, w = (H // patch) * patch, (W // patch) * patch
        mask = mask.expand(a.shape[0], 1, H, W)
        parts = []
        pairs = {"intensities": lambda: (a, b, mask),
                 "edges": lambda: (sobel(a), sobel(b), _erode(mask).expand(-1, 2, -1, -1))}
        for fa, fb, m in (pairs[t]() for t in used):
            wm = m.to(fa.dtype)
            ta, tb, tm = tiles(fa, h, w), tiles(fb, h, w), tiles(wm, h, w)
            n = ta.shape[2]
            n_valid = tm.sum(-1, keepdim=True)  # (B, tiles, 1)
            ok = (n_valid >= min_valid * n).to(fa.dtype)
            n_ok = ok.sum(1, keepdim=True).clamp_min(1)
            local = (standardise(ta, -1, tm) - standardise(tb, -1, tm)) * ok / (n_valid.clamp_min(1) * n_ok).sqrt()
            local = robust_patches(local, n_ok, robust)
            total = wm.sum((1, 2, 3), keepdim=True).clamp_min(1)
            whole = (standardise(fa, (1, 2, 3), wm) - standardise(fb, (1, 2, 3), wm)) / total.sqrt()
            if form == "ncc":
                local = local.pow(2).sum(-1).clamp_min(1e-12).sqrt() * ok[..., 0]
                whole = whole.flatten(1).pow(2).sum(-1, keepdim=True).clamp_min(1e-12).sqrt()
            parts += [local.flatten(1), whole.flatten(1)]
        return torch.cat(parts, dim=-1) / scale

    def residual(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
        if drr_model == "quadratic":
            b = quadratic_match(a, b, mask)
        if mask is None or bool(mask.all()):
            return unmasked(a, b)
        return masked(a, b, mask.to(torch.bool))

    return residual
