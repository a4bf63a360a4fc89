"""Where registration starts and where the translation search moves it, split in the true camera frame.

    python benchmarks/start_errors.py CASES [CASES ...] [--model M] [--threads 1]

For each case: the regressor's start (``register.stages.initial_pose``, after the polarity check
where the case's polarity is a guess), the search's pick from it (after the reading choice, as the
registrar does) and the search's pick from the true pose; each as
mTRE, rotation error (deg, with its rotation vector in the camera frame: x and y out of plane, z in
plane) and the CT centre's displacement (camera x, y and z = depth, mm). Then medians per folder, and
how often the search made the start worse or better by more than 1 mm and moved away from the truth.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from SphericalRegLib.geometry import so3_log, transform_points
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.metrics import mtre
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar
from SphericalRegLib.register.stages import choose_polarity, choose_reading, initial_pose, translation_search


def split(pose: torch.Tensor, truth: torch.Tensor, centre: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Rotation error (deg), its rotation vector (3,) in the camera frame, the centre's shift (3,) in mm."""
    rotation = torch.rad2deg(so3_log((pose @ torch.linalg.inv(truth))[:3, :3]))
    shift = transform_points(pose, centre[None])[0] - transform_points(truth, centre[None])[0]
    return float(rotation.norm()), rotation, shift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--model", default="Resources/Models/chest_example.pt")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = None
    for folder in map(Path, args.cases):
        found = {"start": [], "searched": [], "searched from the truth": []}
        for case_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            case = read_case(case_dir)
            truth, landmarks = read_truth(case_dir)
            truth = truth.to(torch.float64)
            model = model or load_model(args.model, case.ct)
            ctx = Registrar(model, case.ct).context(case.xray, case.camera, photometric=case.reading["photometric"])
            if case.reading.get("check_polarity"):  # a guessed polarity, tried both ways as the registrar does
                choose_polarity(ctx)
            start = initial_pose(ctx).pose.to(torch.float64)
            searched = translation_search(ctx, {"initial": start}).pose.to(torch.float64)
            if choose_reading(ctx, searched):
                searched = translation_search(ctx, {"initial": searched}).pose.to(torch.float64)
            from_truth = translation_search(ctx, {"truth": truth}).pose.to(torch.float64)
            line = [case_dir.name]
            for name, pose in zip(found, (start, searched, from_truth)):
                angle, w, t = split(pose, truth, case.ct.centre.to(torch.float64))
                error = float(mtre(pose, truth, landmarks))
                found[name].append((error, angle, float(t[:2].norm()), abs(float(t[2]))))
                line.append(f"{name}: mTRE {error:6.1f} rot {angle:5.1f} ({w[0]:+5.1f} {w[1]:+5.1f} {w[2]:+5.1f}) "
                            f"shift ({t[0]:+6.1f} {t[1]:+6.1f} {t[2]:+6.1f})")
            print(" | ".join(line), flush=True)
        for name, rows in found.items():
            print(f"{folder.name} {name}: median mTRE {statistics.median(r[0] for r in rows):.1f}, rotation "
                  f"{statistics.median(r[1] for r in rows):.1f} deg, in-plane {statistics.median(r[2] for r in rows):.1f} "
                  f"mm, depth {statistics.median(r[3] for r in rows):.1f} mm")
        pairs = list(zip(found["start"], found["searched"]))
        print(f"{folder.name}: the search made {sum(b[0] > a[0] + 1 for a, b in pairs)} of {len(pairs)} starts worse "
              f"by more than 1 mm and {sum(b[0] < a[0] - 1 for a, b in pairs)} better; from the truth it moved "
              f"{sum(r[0] > 0.5 for r in found['searched from the truth'])} away", flush=True)


if __name__ == "__main__":
    main()
