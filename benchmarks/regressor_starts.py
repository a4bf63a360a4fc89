"""Where several models' regressors start registration on simulated cases, read as registration reads them.

    python benchmarks/regressor_starts.py CASES [CASES ...] --models A.pt,B.pt

Each start is registration's own (``register.stages.initial_pose``): the X-ray through the reader,
its exposed field and the model's training intrinsics. Printed: each case's start mTRE per model (mm), then per case
set and model the median, the 75th percentile and how many start within 20 mm (about the intensity
stage's capture range).
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
    parser.add_argument("--models", required=True, help="comma-separated model files")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = args.models.split(",")
    for folder in map(Path, args.cases):
        errors: dict[str, list[float]] = {path: [] for path in paths}
        models = {}
        for case_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            case = read_case(case_dir)
            truth, landmarks = read_truth(case_dir)
            row = [case_dir.name]
            for path in paths:
                if path not in models:
                    models[path] = load_model(path, case.ct)
                model = models[path]
                start = initial_pose(Registrar(model, case.ct).context(case.xray, case.camera)).pose
                errors[path].append(float(mtre(start, truth, landmarks)))
                row.append(f"{errors[path][-1]:.1f}")
            print(" ".join(row), flush=True)
        for path, values in errors.items():
            values = sorted(values)
            print(f"{folder.name} {path}: median {statistics.median(values):.1f}, "
                  f"p75 {values[int(0.75 * (len(values) - 1))]:.1f}, "
                  f"within 20 mm {sum(v < 20 for v in values)} of {len(values)}", flush=True)


if __name__ == "__main__":
    main()
