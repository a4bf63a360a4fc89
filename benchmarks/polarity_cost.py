"""What the polarity check (``register(check_polarity=True)``, :func:`~SphericalRegLib.register.stages.choose_polarity`)
costs: the check alone, timed inside a registration context, and the whole registration with it and without it.

    python benchmarks/polarity_cost.py CASES [--model M] [--limit 4] [--threads 1]

One row per case: the check's seconds and the two registrations' seconds and mTRE; the medians last.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from SphericalRegLib.example import SHIPPED_MODEL
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.metrics import mtre
from SphericalRegLib.model import load_model
from SphericalRegLib.register import RegisterOptions, Registrar
from SphericalRegLib.register.stages import choose_polarity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases")
    parser.add_argument("--model", default=None, help="default: the shipped example model")
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_path = args.model or SHIPPED_MODEL
    rows = []
    print("| case | check s | with check: s, mTRE | without: s, mTRE |\n|---|---:|---|---|")
    for case_dir in sorted(p for p in Path(args.cases).iterdir() if p.is_dir())[: args.limit]:
        case = read_case(case_dir)
        truth, landmarks = read_truth(case_dir)
        registrar = Registrar(load_model(model_path, case.ct), case.ct, RegisterOptions())
        photometric = case.reading["photometric"]
        ctx = registrar.context(case.xray, case.camera, photometric=photometric)
        t0 = time.perf_counter()
        choose_polarity(ctx)
        check = time.perf_counter() - t0
        out = []
        for checked in (True, False):
            t0 = time.perf_counter()
            result = registrar.register(case.xray, case.camera, photometric=photometric, check_polarity=checked)
            out.append((time.perf_counter() - t0, float(mtre(result.camera_from_world, truth, landmarks))))
        rows.append((check, out[0][0], out[1][0]))
        print(f"| {case_dir.name} | {check:.2f} | {out[0][0]:.1f} s, {out[0][1]:.2f} mm | "
              f"{out[1][0]:.1f} s, {out[1][1]:.2f} mm |", flush=True)
    med = [statistics.median(r[k] for r in rows) for k in range(3)]
    print(f"\nmedian over {len(rows)} cases: check {med[0]:.2f} s; registration {med[1]:.1f} s with it, "
          f"{med[2]:.1f} s without")


if __name__ == "__main__":
    main()
