"""How well the reader recovers the line integrals of each physics preset (docs/physics.md, "Reading
the frames back"): the example CT, 128 px, the canonical AP view, seed 0 (random: seeds 0-11);
each frame written as the PNG ``simulate`` writes and read back with ``io.read_xray`` and
``xray.preprocess`` as registration reads it (photometric from the reader's metadata). NCC with
the true 60 keV line integrals over the pixels the reader calls valid, the valid share and the
share of the shuttered area left valid.

    .venv/bin/python benchmarks/physics_reader.py                 # this tree
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/physics_reader.py   # another checkout's library
(run from outside the repository for the second, or the working tree's package is imported)
"""

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from SphericalRegLib import physics as P
from SphericalRegLib.camera import canonical_ap_pose
from SphericalRegLib.diffdrr_bridge import siddon_line_integrals
from SphericalRegLib.example import example_ct_path
from SphericalRegLib.io.images import read_ct, read_xray
from SphericalRegLib.simulate import default_camera
from SphericalRegLib.xray import preprocess


def ncc(a, b, m):
    a, b = a[m].double(), b[m].double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def main():
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    ct = read_ct(example_ct_path())
    camera = default_camera(ct, 1020.0, 128)
    pose = canonical_ap_pose(ct.centre, 1020.0)
    prepared = P.prepare(ct, camera)
    with torch.no_grad():
        truth = siddon_line_integrals(prepared.mu, torch.as_tensor(pose, dtype=torch.float64)[None], camera,
                                      drr=prepared.drr)[0].double()
    names = list(P.PRESETS) + [f"random{i}" for i in range(12)]
    tmp = Path(tempfile.mkdtemp())
    camera.save(tmp / "geometry.json")
    print("| preset | NCC | valid | shutter left valid | photometric read (true) |")
    print("| --- | --- | --- | --- | --- |")
    for i, name in enumerate(names):
        g = torch.Generator().manual_seed(i - len(P.PRESETS) if name.startswith("random") else 0)
        p = P.physics_for("random" if name.startswith("random") else name, g)
        image, meta = P.simulate_frame(ct, pose, camera, p, g, prepared)
        dtype = np.uint8 if meta["bits"] == 8 else np.uint16
        sitk.WriteImage(sitk.GetImageFromArray(image.numpy().astype(dtype)), str(tmp / "xray.png"))
        pixels, cam, read_meta = read_xray(tmp / "xray.png")
        L, _, valid = preprocess(pixels, cam, 128, photometric=read_meta["photometric"])
        field = torch.ones_like(valid)
        if "shutters_px" in meta:
            t, b, l, r = meta["shutters_px"]
            field[:] = False
            field[t:128 - b, l:128 - r] = True
        left = float((valid & ~field).double().sum() / max(1, int((~field).sum()))) if (~field).any() else float("nan")
        print(f"| {name} | {ncc(L, truth, valid):.3f} | {float(valid.double().mean()):.2f} | "
              f"{'' if left != left else f'{left:.2f}'} | {read_meta['photometric'][-1]} ({meta['photometric'][-1]}) |",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
