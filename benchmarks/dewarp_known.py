"""What a C-arm's dewarp calibration buys: each simulated case registered twice, once as is and once
with ``RegisterOptions.distortion`` set to the image-intensifier distortion it was simulated with
(the role of a grid-phantom calibration), from the regressor or from the truth moved by 2 deg /
8 mm sd per axis (``--near``).

    python benchmarks/dewarp_known.py FOLDER [FOLDER ...] --model Resources/Models/chest_example.pt

Cases without distortion are skipped (both runs would be the same). Prints one row per case and
per folder the share under 1 mm and the median, as is and dewarped.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from SphericalRegLib.confidence import load_calibration
from SphericalRegLib.evaluation.methods import far_start
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.metrics import mtre
from SphericalRegLib.model import load_model
from SphericalRegLib.register import RegisterOptions, Registrar


def simulated_distortion(case_dir: Path) -> tuple[float, float] | None:
    """View 0's (pincushion, s_distortion) from the case's truth file, None when it had none."""
    physics = json.loads(case_dir.with_name(case_dir.name + ".truth.json").read_text()).get("physics")
    p = physics[0]["physics"] if physics else {}
    k, s = p.get("pincushion", 0.0), p.get("s_distortion", 0.0)
    return (k, s) if (k or s) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--model", default="Resources/Models/chest_example.pt")
    parser.add_argument("--near", action="store_true", help="start near the truth instead of from the regressor")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    calibration = load_calibration(args.model)
    print("| case | pincushion | S (rad) | as is: mTRE (mm) | confidence | dewarped: mTRE (mm) | confidence |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for folder in map(Path, args.folders):
        plain, dewarped = [], []
        for case_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            distortion = simulated_distortion(case_dir)
            if distortion is None:
                continue
            case = read_case(case_dir)
            truth, landmarks = read_truth(case_dir)
            start = far_start(case_dir.name, truth, case.camera, (2.0,) * 3, (8.0,) * 3) if args.near else None
            cells = []
            for d, errors in ((None, plain), (distortion, dewarped)):
                registrar = Registrar(load_model(args.model, case.ct), case.ct, RegisterOptions(distortion=d),
                                      calibration=calibration)
                result = registrar.register(case.xray, case.camera, init=start, photometric=case.reading["photometric"])
                errors.append(float(mtre(result.camera_from_world, truth, landmarks)))
                conf = "diverged" if result.diverged else (
                    "-" if result.confidence is None else f"{result.confidence:.2f}")
                cells += [f"{errors[-1]:.2f}", conf]
            print(f"| {folder.name}/{case_dir.name} | {distortion[0]:.3f} | {distortion[1]:.3f} | "
                  + " | ".join(cells) + " |", flush=True)
        if plain:
            print(f"| **{folder.name}: {len(plain)} cases** | | | {sum(e < 1 for e in plain)}/{len(plain)} < 1 mm, "
                  f"median {statistics.median(plain):.2f} | | {sum(e < 1 for e in dewarped)}/{len(dewarped)} < 1 mm, "
                  f"median {statistics.median(dewarped):.2f} | |", flush=True)


if __name__ == "__main__":
    main()
