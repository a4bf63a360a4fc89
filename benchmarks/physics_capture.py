"""Does the intensity stage hold under an X-ray physics when the start is good? Each case is
registered (the default pipeline) from its truth moved by a small random offset (default 2 deg
and 8 mm sd per axis, seeded by the case's name), so the regressor's start is out of the question.

    python benchmarks/physics_capture.py FOLDER [FOLDER ...] --model Resources/Models/chest_example.pt

Prints per case the start's and the result's mTRE and the confidence, and per folder the share
under 1 mm and the median.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from SphericalRegLib.confidence import load_calibration
from SphericalRegLib.evaluation.methods import far_start
from SphericalRegLib.evaluation.rows import Row, write_rows
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.metrics import mtre
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--model", default="Resources/Models/chest_example.pt")
    parser.add_argument("--rot-deg", type=float, default=2.0)
    parser.add_argument("--trans-mm", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--csv", help="also write every run as an evaluation table (method ours-init: a given "
                                      "start), e.g. for benchmarks/confidence_presets.py")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registrar, rows = None, []
    print("| physics | cases | start median mTRE | < 1 mm | median mTRE | confidence of the results >= 1 mm |\n"
          "|---|---:|---:|---:|---:|---|")
    for folder in map(Path, args.folders):
        starts, ends, wrong = [], [], []
        for case_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            case = read_case(case_dir)
            truth, landmarks = read_truth(case_dir)
            # every case of these folders holds the same CT: one registrar, prepared once
            registrar = registrar or Registrar(load_model(args.model, case.ct), case.ct,
                                               calibration=load_calibration(args.model))
            start = far_start(case_dir.name, truth, case.camera, (args.rot_deg,) * 3, (args.trans_mm,) * 3)
            result = registrar.register(case.xray, case.camera, init=start,
                                                        other_views=case.views[1:] if len(case.views) > 1 else [])
            a, b = float(mtre(start, truth, landmarks)), float(mtre(result.camera_from_world, truth, landmarks))
            rows.append(Row.from_result("ours-init", f"{folder.name}/{case_dir.name}", result, truth, landmarks))
            starts.append(a)
            ends.append(b)
            if b >= 1:
                wrong.append(f"{b:.1f} mm: {'diverged' if result.diverged else f'{result.confidence:.2f}' if result.confidence is not None else 'none'}")
        print(f"| {folder.name} | {len(ends)} | {statistics.median(starts):.1f} | "
              f"{sum(e < 1 for e in ends)}/{len(ends)} | {statistics.median(ends):.2f} | {'; '.join(wrong) or '-'} |",
              flush=True)
    if args.csv:
        write_rows(Path(args.csv), rows)


if __name__ == "__main__":
    main()
