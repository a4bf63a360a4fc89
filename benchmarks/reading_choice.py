"""Whether the coarse cost picks a processed export's LUT (log or linear) at the pose registration
decides at: for each simulated processed X-ray, the coarse cost (the translation search's 1 - NCC) of
both readings at the truth and at the default reading's searched pose, the same DRR for both.

    python benchmarks/reading_choice.py FOLDER [FOLDER ...] [--model M]

A row says AGREE when the reading cheaper at the searched pose is the one cheaper at the truth.
"""
import argparse
import json
import warnings
from pathlib import Path

import torch

from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.metrics import mtre
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar, XrayPyramid
from SphericalRegLib.register.stages import initial_pose, translation_search

READINGS = ("processed", "processed-linear")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--model", default="Resources/Models/chest_example.pt")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    registrar, agree, n = None, 0, 0
    print("| case | LUT | searched pose off by (mm) | truth: log / linear | searched: log / linear | |\n|---|---|---:|---|---|---|")
    for folder in map(Path, args.folders):
        for case_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            meta = json.loads((case_dir.parent / f"{case_dir.name}.truth.json").read_text())["physics"][0]
            if meta["physics"]["mapping"] == "none":
                continue
            case = read_case(case_dir)
            truth, landmarks = read_truth(case_dir)
            registrar = registrar or Registrar(load_model(args.model, case.ct), case.ct)
            ctx = registrar.context(case.xray, case.camera, photometric=meta["photometric"])
            searched = translation_search(ctx, {"initial": initial_pose(ctx).pose}).pose
            costs = {}
            for reading in READINGS:
                ctx.pyramids[0] = XrayPyramid(case.xray, case.camera, meta["photometric"], False, ctx.device, reading)
                costs[reading] = ctx.coarse_cost(torch.stack([truth.double(), searched.double()])).tolist()
            same = min(READINGS, key=lambda r: costs[r][0]) == min(READINGS, key=lambda r: costs[r][1])
            agree, n = agree + same, n + 1
            print(f"| {folder.name}/{case_dir.name} | {meta['physics']['mapping']} | "
                  f"{float(mtre(searched, truth, landmarks)):.1f} | {costs['processed'][0]:.3f} / "
                  f"{costs['processed-linear'][0]:.3f} | {costs['processed'][1]:.3f} / {costs['processed-linear'][1]:.3f} | "
                  f"{'AGREE' if same else 'DIFFER'} |", flush=True)
    print(f"\nThe searched pose picks the truth's reading on {agree} of {n} processed X-rays.")


if __name__ == "__main__":
    main()
