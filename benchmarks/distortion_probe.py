"""Can one view tell that its X-ray is warped? Fit the residual patch-shift field at each stored final
pose with a rigid-plus-distortion model and compare the distortion part with the simulated one.

    python benchmarks/distortion_probe.py OUT.csv EVALUATION [EVALUATION ...]

EVALUATION: folders `sphericalreg evaluate` wrote; each run is replayed as in residual_shift_replay.py
(its final DRR and X-ray, the replayed NCC checked against the recorded one). OUT: one row per run with
its errors, the simulated pincushion and S distortion, and the fitted ones.
"""
import csv
import json
import sys
from pathlib import Path

import torch

from SphericalRegLib.alignment import residual_distortion

from residual_shift_replay import replay  # the same script folder

torch.set_num_threads(1)


def truth_distortion(cases_dir: Path, case: str) -> tuple[float, float]:
    views = json.loads((cases_dir / f"{case}.truth.json").read_text()).get("physics") or [{}]
    physics = views[0].get("physics", {})  # plain physics records none
    return physics.get("pincushion", 0.0), physics.get("s_distortion", 0.0)


def main() -> None:
    out, folders = Path(sys.argv[1]), [Path(f) for f in sys.argv[2:]]
    rows = []
    for folder in folders:
        cases_dir = Path(json.loads((folder / "info.json").read_text())["cases_dir"])
        for row, drr, x, valid, camera in replay(folder):
            if drr is None:
                continue
            with torch.no_grad():
                fit = residual_distortion(drr, x, valid[None, None])
            k, s = truth_distortion(cases_dir, row.case)
            rows.append(dict(evaluation=folder.name, case=row.case, method=row.method, mTRE=row.mTRE, mPE=row.mPE,
                             depth=row.depth, residual_shift=row.residual_shift, pincushion=k, s_distortion=s,
                             fit_pincushion=float(fit.coefficients[0, 0]), fit_s=float(fit.coefficients[0, 1]),
                             fit_pincushion_se=float(fit.standard_errors[0, 0]),
                             fit_s_se=float(fit.standard_errors[0, 1]), patches=int(fit.patches[0])))
            r = rows[-1]
            print(f"{folder.name} {row.case} {row.method}: mTRE {row.mTRE:6.2f} depth {row.depth:6.2f} | k {k:+.3f} "
                  f"fit {r['fit_pincushion']:+.3f}+-{r['fit_pincushion_se']:.3f} | s {s:+.3f} fit {r['fit_s']:+.3f}"
                  f"+-{r['fit_s_se']:.3f} ({r['patches']} patches)", flush=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
