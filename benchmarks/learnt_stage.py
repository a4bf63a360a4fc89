"""The learnt stage alone: LM on the learnt similarity, no translation search, no intensity stage
(``register --no-refine``), from each case's init.json and from the regressor, for one or more
models on the same cases (issue 10's "learnt stage alone" rows).

    python benchmarks/learnt_stage.py CASES --models A.pt B.pt [--limit 20] [--starts init regressor]
        [--fix-depth] [--iterations 20] [--pipeline]

``--pipeline`` runs the whole pipeline instead, with the learnt stage and without it
(``optimizer="none"``): what the learnt stage adds to the final result.

Prints one row per case and model (start and end mTRE and mPE, iterations, seconds) and per model
and start the medians, the share that ended better than they started and the share under 5 mm.
mPE, the landmarks' error in the detector plane, is what one view shows; mTRE adds depth.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.metrics import mpe, mtre
from SphericalRegLib.model import load_model
from SphericalRegLib.register import RegisterOptions, Registrar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases")
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--starts", nargs="+", default=["init", "regressor"], choices=("init", "regressor"))
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fix-depth", action="store_true", help="RegisterOptions.learnt_moves_depth = False")
    parser.add_argument("--iterations", type=int, default=RegisterOptions.iterations,
                        help="LM iterations on the learnt similarity (RegisterOptions.iterations)")
    parser.add_argument("--pipeline", action="store_true",
                        help="the whole pipeline (search and intensity stage too), with and without the learnt stage")
    args = parser.parse_args()
    variants = {"learnt": RegisterOptions(refine=args.pipeline, learnt_stage="always", learnt_moves_depth=not args.fix_depth,
                                               iterations=args.iterations)}
    if args.pipeline:
        variants["no-learnt"] = RegisterOptions(optimizer="none")
    torch.set_num_threads(args.threads)

    def label(model_path, variant):
        return Path(model_path).name + ("" if variant == "learnt" and not args.pipeline else f" {variant}")

    case_dirs = sorted(p for p in Path(args.cases).iterdir() if p.is_dir())[: args.limit]
    rows = {(m, v, s): [] for m in args.models for v in variants for s in args.starts}
    print("| case | model | start | start mTRE (mm) | end mTRE (mm) | start mPE (mm) | end mPE (mm) | LM iterations | s |\n"
          "|---|---|---|---:|---:|---:|---:|---:|---:|")
    for case_dir in case_dirs:
        case = read_case(case_dir)
        truth, landmarks = read_truth(case_dir)
        for model_path, (variant, options) in ((m, v) for m in args.models for v in variants.items()):
            registrar = Registrar(load_model(model_path, case.ct), case.ct, options)
            name = label(model_path, variant)
            for start in args.starts:
                t0 = time.perf_counter()
                result = registrar.register(case.xray, case.camera, init=case.init if start == "init" else None,
                                            photometric=case.reading["photometric"])
                seconds = time.perf_counter() - t0
                first = result.stages["initial"].pose
                before = float(mtre(first, truth, landmarks))
                after = float(mtre(result.camera_from_world, truth, landmarks))
                iterations = len(result.stages["similarity"].cost) - 1 if "similarity" in result.stages else 0
                projected = [float(mpe(T, truth, landmarks, case.camera)) for T in (first, result.camera_from_world)]
                rows[model_path, variant, start].append((before, after, *projected))
                print(f"| {case_dir.name} | {name} | {start} | {before:.2f} | {after:.2f} | "
                      f"{projected[0]:.2f} | {projected[1]:.2f} | {iterations} | {seconds:.1f} |", flush=True)
    print("\n| model | start | cases | start median mTRE | end median mTRE | better than start | end < 5 mm | "
          "start median mPE | end median mPE | mPE better than start | end < 1 mm |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (model_path, variant, start), pairs in rows.items():
        n = len(pairs)
        name = label(model_path, variant)
        print(f"| {name} | {start} | {n} | {statistics.median(p[0] for p in pairs):.2f} | "
              f"{statistics.median(p[1] for p in pairs):.2f} | {sum(p[1] < p[0] for p in pairs)}/{n} | "
              f"{sum(p[1] < 5 for p in pairs)}/{n} | {statistics.median(p[2] for p in pairs):.2f} | "
              f"{statistics.median(p[3] for p in pairs):.2f} | {sum(p[3] < p[2] for p in pairs)}/{n} | "
              f"{sum(p[1] < 1 for p in pairs)}/{n} |")


if __name__ == "__main__":
    main()
