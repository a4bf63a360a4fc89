"""Which residual-shift signal: variants of the patch shift (intensities or edges; 16, 24 or 32 px
patches; median, 75th percentile, or the median over well-matched patches) at stored final poses.

    python benchmarks/residual_shift_probe.py OUT.csv EVALUATION [EVALUATION ...]

EVALUATION: folders `sphericalreg evaluate` wrote; each run is replayed as in
residual_shift_replay.py. OUT: one row per run with its errors, final NCC, sds and every variant.
The product's signal is the variant ``grad24_median_good`` (:mod:`SphericalRegLib.alignment`),
chosen on the tuning registrations (docs/results.md, twenty-eighth session).
"""
import csv
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from SphericalRegLib.intensity import sobel, standardise

from residual_shift_replay import replay  # the same script folder

torch.set_num_threads(1)


def shift_field(a, b, valid, patch, stride, radius):
    """Per patch of ``b``: the integer shift of ``a`` (within radius) of highest NCC, refined by a
    parabola; returns shifts (P, 2) px, peak NCC (P,), valid fraction (P,), saturated (P,)."""
    H, W = a.shape[-2:]
    ap = F.pad(a, (radius,) * 4, mode="replicate")
    box = lambda t: F.avg_pool2d(t, patch, stride)
    mb, vb = box(b), box(b * b) - box(b) ** 2
    scores = []
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            s = ap[..., radius + dy:radius + dy + H, radius + dx:radius + dx + W]
            ma, va = box(s), box(s * s) - box(s) ** 2
            scores.append((box(s * b) - ma * mb) / (va * vb).clamp_min(1e-12).sqrt())
    n = 2 * radius + 1
    S = torch.stack(scores, -1).reshape(*scores[0].shape, n, n)  # (B, C, h, w, n, n)
    S = S.mean(1)[0]  # over channels
    h, w = S.shape[:2]
    S = S.reshape(h * w, n, n)
    flat = S.reshape(h * w, -1)
    peak, arg = flat.max(-1)
    iy, ix = arg // n, arg % n

    def refine(i, get):
        inner = (i > 0) & (i < n - 1)
        im, i0, ip = get(torch.clamp(i - 1, 0, n - 1)), get(i), get(torch.clamp(i + 1, 0, n - 1))
        den = im - 2 * i0 + ip
        off = torch.where(inner & (den < 0), 0.5 * (im - ip) / den.where(den != 0, torch.ones_like(den)),
                          torch.zeros_like(den))
        return i.double() + off.double().clamp(-0.5, 0.5) - radius

    rows = torch.arange(h * w)
    sy = refine(iy, lambda j: S[rows, j, ix])
    sx = refine(ix, lambda j: S[rows, iy, j])
    frac = box(valid.float()[None, None])[0, 0].reshape(-1)
    saturated = (iy == 0) | (iy == n - 1) | (ix == 0) | (ix == n - 1)
    return torch.stack([sy, sx], -1), peak, frac, saturated


def signals(drr, x, valid, pixel_mm):
    out = {}
    a = standardise(drr[None, None], (1, 2, 3))
    b = standardise(x, (1, 2, 3))
    for name, (A, B) in {"int": (a, b), "grad": (sobel(a), sobel(b))}.items():
        for patch, radius in ((32, 6), (24, 6), (16, 4)):
            s, peak, frac, sat = shift_field(A, B, valid, patch, patch // 2, radius)
            keep = (frac > 0.95)
            if keep.sum() < 4:
                keep = frac > 0.5
            mag = s.norm(dim=-1)
            m = mag[keep] * pixel_mm
            out[f"{name}{patch}_median"] = float(m.median()) if m.numel() else float("nan")
            out[f"{name}{patch}_p75"] = float(m.quantile(0.75)) if m.numel() else float("nan")
            good = keep & (peak > 0.5)
            out[f"{name}{patch}_median_good"] = float((mag[good] * pixel_mm).median()) if good.sum() >= 3 else float("nan")
            out[f"{name}{patch}_sat"] = float(sat[keep].float().mean()) if keep.any() else float("nan")
            out[f"{name}{patch}_peak"] = float(peak[keep].median()) if keep.any() else float("nan")
    return out


def main():
    out_path, folders = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    lines = []
    for folder in folders:
        for r, drr, x, valid, camera in replay(folder):
            if drr is None:
                continue
            with torch.no_grad():
                sig = signals(drr[0, 0], x, valid, camera.pixel_spacing[0])
            lines.append({"folder": str(folder), "case": r.case, "method": r.method, "mTRE": r.mTRE, "mPE": r.mPE,
                          "final_ncc": r.final_ncc, "inplane_sd": r.centre_inplane_sd, "depth_sd": r.centre_depth_sd,
                          **sig})
            print(folder.name, r.case, r.method, f"mTRE {r.mTRE:.2f} mPE {r.mPE:.2f}",
                  f"grad24 {sig['grad24_median_good']:.2f}", flush=True)
    with out_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(lines[0]))
        w.writeheader()
        w.writerows(lines)


if __name__ == "__main__":
    main()
