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

from SphericalRegLib.alignment import patch_shifts
from SphericalRegLib.intensity import sobel, standardise

from residual_shift_replay import replay  # the same script folder

torch.set_num_threads(1)


def signals(drr, x, valid, pixel_mm):
    """Every variant's value for one run: ``drr`` (H, W), ``x`` (1, 1, H, W), ``valid`` (H, W)."""
    out = {}
    a = standardise(drr[None, None], (1, 2, 3))
    b = standardise(x, (1, 2, 3))
    for name, (A, B) in {"int": (a, b), "grad": (sobel(a), sobel(b))}.items():
        for patch, radius in ((32, 6), (24, 6), (16, 4)):
            s, peak = patch_shifts(A, B, patch, radius)
            s, peak = s[0], peak[0]
            frac = F.avg_pool2d(valid.float()[None, None], patch, patch // 2).reshape(-1)
            keep = frac > 0.95
            if keep.sum() < 4:
                keep = frac > 0.5
            mag = s.norm(dim=-1)
            m = mag[keep] * pixel_mm
            out[f"{name}{patch}_median"] = float(m.median()) if m.numel() else float("nan")
            out[f"{name}{patch}_p75"] = float(m.quantile(0.75)) if m.numel() else float("nan")
            good = keep & (peak > 0.5)
            out[f"{name}{patch}_median_good"] = float((mag[good] * pixel_mm).median()) if good.sum() >= 3 else float("nan")
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
