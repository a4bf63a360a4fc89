"""The regressor's start on X-rays of other C-arm intrinsics: the X-ray resized on its own detector
(what the networks saw before) against the X-ray warped into the model's training intrinsics.

    python benchmarks/regressor_intrinsics.py CASES [CASES ...] --model Resources/Models/chest_example.pt

Prints, per case folder set, the median mTRE of the regressor's pose both ways.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.metrics import mtre
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar
from SphericalRegLib.register.stages import initial_pose


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| cases | detector | regressor median mTRE, resized (mm) | in training intrinsics (mm) |\n|---|---|---:|---:|")
    model = None
    for folder in map(Path, args.cases):
        resized, warped, camera = [], [], None
        for case_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            case = read_case(case_dir)
            truth, landmarks = read_truth(case_dir)
            model = model or load_model(args.model, case.ct)
            ctx = Registrar(model, case.ct).context(case.xray, case.camera)
            with torch.no_grad():
                a = model.regressor(ctx.xray.level(model.config.image_size)[0])[0].double()
            resized.append(float(mtre(a, truth, landmarks)))
            warped.append(float(mtre(initial_pose(ctx).pose, truth, landmarks)))
            camera = case.camera
        print(f"| {folder} ({len(resized)}) | sdd {camera.sdd:g}, {camera.cols} px of {camera.pixel_spacing[0]:.2f} mm "
              f"| {statistics.median(resized):.1f} | {statistics.median(warped):.1f} |", flush=True)


if __name__ == "__main__":
    main()
