"""How close the X-rays training renders are to a case's X-ray as registration reads it.

    python benchmarks/xray_fidelity.py MODEL.pt CASES_DIR [--limit 6]

For each case, the X-ray the trainer renders at the true pose against the case's frame read
and warped into the model's camera (``XrayPyramid.in_camera``, as the learnt stage and the regressor
see it). Prints, inside the exposed field: the correlation, the RMS of the residual after the best
affine fit (in units of the case's standard deviation: what per-image standardisation leaves) and the
ratio of high-pass energy (sharpness, rendered over case); and the render time of a batch of 4.
Then the model's regressor (median error at the isocentre, mm and degrees) on the case's X-ray, on
the rendered one, and on the rendered one zeroed outside the case's field: which part of the gap
the field's edge makes.
Commit 3f72c5e also rendered training X-rays k x k rays a pixel over the CT at 1/k of the working
spacing (``--oversample``): no closer (docs/learnability.md, section 13), so that option went.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.register.pyramid import XrayPyramid
from SphericalRegLib.training import Trainer


def high_pass(x):
    return x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("cases", type=Path)
    parser.add_argument("--limit", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    folders = sorted(p for p in args.cases.iterdir() if (p / "geometry.json").is_file())[:args.limit]
    first = read_case(folders[0])
    trainer = Trainer.of_model(args.model, first.ct)
    camera = trainer.camera
    trainer.regressor.eval()
    stats = dict(corr=[], resid=[], sharp=[])
    regressor = {name: ([], []) for name in ("case X-ray", "rendered", "rendered, zero outside the case's field")}
    for folder in folders:
        case = read_case(folder)
        truth, _ = read_truth(folder)
        x, _, valid = XrayPyramid(case.xray, case.camera, case.reading["photometric"]).in_camera(camera)
        rendered = trainer.simulate(truth[None], torch.ones(1, dtype=torch.float64)).float()
        a, b = rendered[0, 0].double(), x[0, 0].double()
        inside = valid & F.max_pool2d((~valid).float()[None, None], 3, 1, 1)[0, 0].eq(0)  # off the field's edge
        ai, bi = a[inside], b[inside]
        A = torch.stack([ai, torch.ones_like(ai)], 1)
        fit = torch.linalg.lstsq(A, bi[:, None]).solution
        stats["corr"].append(float(torch.corrcoef(torch.stack([ai, bi]))[0, 1]))
        stats["resid"].append(float((A @ fit).flatten().sub(bi).pow(2).mean().sqrt() / bi.std()))
        ha, hb = high_pass(a[None, None])[0, 0][inside], high_pass(b[None, None])[0, 0][inside]
        stats["sharp"].append(float((ha * fit[0, 0]).pow(2).mean().sqrt() / hb.pow(2).mean().sqrt()))
        with torch.no_grad():
            for (rot, iso), image in zip(regressor.values(), (x.float(), rendered, rendered * valid.to(rendered))):
                r, i = trainer._regressor_errors(trainer.regressor(image).double(), truth[None].double())
                rot.append(float(r[0]))
                iso.append(float(i[0]))
    poses = trainer.reference.expand(4, 4, 4).clone()
    trainer.simulate(poses, torch.ones(4, dtype=torch.float64))
    t0 = time.perf_counter()
    for _ in range(3):
        trainer.simulate(poses, torch.ones(4, dtype=torch.float64))
    seconds = (time.perf_counter() - t0) / 3
    print(f"{len(folders)} cases of {args.cases}; model camera {camera.image_size} px of {camera.pixel_spacing[0]:.2f} mm")
    print("| correlation inside the field, median (min) | affine residual / case sd | sharpness rendered / case | s per batch of 4 |")
    print("|---|---:|---:|---:|")
    print(f"| {statistics.median(stats['corr']):.4f} ({min(stats['corr']):.4f}) | {statistics.median(stats['resid']):.3f} | "
          f"{statistics.median(stats['sharp']):.2f} | {seconds:.2f} |")
    print("| regressor input | isocentre mm, median | deg, median |")
    print("|---|---:|---:|")
    for name, (rot, iso) in regressor.items():
        print(f"| {name} | {statistics.median(iso):.1f} | {statistics.median(rot):.2f} |")

if __name__ == "__main__":
    main()
