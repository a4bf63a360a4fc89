"""Where the intensity stage's cost is lowest along depth: for each simulated case, the finest
level's cost (the registration's own residual) at the truth moved along view 0's central ray by
-16 .. 16 mm, and the depth of its minimum (a parabola through the lowest three samples).

    python benchmarks/depth_bias.py FOLDER [FOLDER ...] --model Resources/Models/chest_example.pt

A minimum away from 0 is a bias no optimiser can undo: one view pins depth only through
magnification, so any mismatch between the X-ray's physics and the DRR's can move it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from SphericalRegLib.geometry import perturb_left
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar

SHIFTS_MM = torch.linspace(-16, 16, 17, dtype=torch.float64)


def minimum(costs: torch.Tensor) -> float:
    k = min(max(int(costs.argmin()), 1), len(costs) - 2)
    a, b, c = (float(costs[i]) for i in (k - 1, k, k + 1))
    step, curvature = float(SHIFTS_MM[1] - SHIFTS_MM[0]), a - 2 * b + c
    return float(SHIFTS_MM[k]) + (0.5 * step * (a - c) / curvature if curvature > 0 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--model", default="Resources/Models/chest_example.pt")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registrar = None
    print("| folder | cases | median abs(depth of the minimum) (mm) | cases beyond 2 mm | per case (mm) |\n|---|---:|---:|---:|---|")
    for folder in map(Path, args.folders):
        found = []
        for case_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            case = read_case(case_dir)
            truth, _ = read_truth(case_dir)
            registrar = registrar or Registrar(load_model(args.model, case.ct), case.ct)
            ctx = registrar.context(case.xray, case.camera, photometric=case.reading["photometric"])
            twist = torch.zeros(len(SHIFTS_MM), 6, dtype=torch.float64)
            twist[:, 5] = SHIFTS_MM
            poses = perturb_left(twist, truth.to(torch.float64).expand(len(SHIFTS_MM), 4, 4))
            with torch.no_grad():
                costs = 0.5 * ctx.intensity_residual(registrar.options.refine_levels[-1])(poses).pow(2).sum(-1)
            found.append(minimum(costs))
        print(f"| {folder.name} | {len(found)} | {statistics.median(abs(f) for f in found):.2f} | "
              f"{sum(abs(f) > 2 for f in found)} | {', '.join(f'{f:+.1f}' for f in found)} |", flush=True)


if __name__ == "__main__":
    main()
