"""Gradient-descent rates for the learnt stage, against LM: the sweep behind RegisterOptions.lr_rot/lr_trans.

Runs the learnt stage alone (from the regressor) on the first N cases of a folder, LM for 20
iterations and GD for 100 at each (lr_rot, lr_trans) pair, and prints the median cost relative to
its start and the median mTRE. Tune on held-out cases, not the evaluation set:

    python benchmarks/sweep_gd_rates.py runs/calib_cases --model Resources/Models/chest_example.pt \\
        --n 8 --rates 1e-5,0.5 3e-6,0.5 3e-6,1.5 1e-5,1.5
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.metrics import mtre
from SphericalRegLib.model import load_model
from SphericalRegLib.optimize import gradient_descent, least_squares_cost, levenberg_marquardt
from SphericalRegLib.register import Registrar
from SphericalRegLib.register.stages import initial_pose, learnt_residual


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases")
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--rates", nargs="+", required=True, metavar="ROT,TRANS")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rates = [tuple(float(v) for v in r.split(",")) for r in args.rates]
    bounds = dict(max_rotation=math.radians(45), max_translation=200.0)
    folders = sorted(p for p in Path(args.cases).iterdir() if p.is_dir())[:args.n]
    model, results = None, {}
    for folder in folders:
        case = read_case(folder)
        truth, landmarks = read_truth(folder)
        model = model or load_model(args.model, case.ct)
        ctx = Registrar(model, case.ct).context(case.xray, case.camera)
        start, residual = initial_pose(ctx).pose[None], learnt_residual(ctx)
        runs = {"LM, 20 iterations": levenberg_marquardt(residual, start, max_iters=20, **bounds)}
        for lr_rot, lr_trans in rates:
            runs[f"GD {lr_rot:g} rad / {lr_trans:g} mm, 100 iterations"] = gradient_descent(
                least_squares_cost(residual), start, iters=100, lr_rot=lr_rot, lr_trans=lr_trans, **bounds)
        for name, res in runs.items():
            cost = [float(h["cost"][0]) for h in res.history]
            results.setdefault(name, []).append((cost[-1] / cost[0], float(mtre(res.pose[0].detach(), truth, landmarks)),
                                                 bool(res.diverged[0])))
        print(f"{folder.name} done", flush=True)
    print("\n| method | median cost / start | median mTRE (mm) | diverged |\n|---|---:|---:|---:|")
    for name, rows in results.items():
        print(f"| {name} | {statistics.median(r[0] for r in rows):.3f} | "
              f"{statistics.median(r[1] for r in rows):.1f} | {sum(r[2] for r in rows)} |")


if __name__ == "__main__":
    main()
