"""Fill the residual_shift column of an evaluation's cases.csv by replaying each run's final images.

    python benchmarks/residual_shift_replay.py EVALUATION OUT.csv [--model M]

EVALUATION: a folder `sphericalreg evaluate` wrote before the column existed (its info.json names
the cases and the model). For each run of the main model that did not diverge, the X-ray is read as
that run read it (its result.json's polarity and LUT note), the finest intensity level's DRR is
rendered at its final pose, and :func:`~SphericalRegLib.alignment.residual_shift_mm` is computed as
registration computes it. The replayed final NCC must equal the recorded one (else the script stops):
the images are then the registration's own. OUT gets every row, the column filled where it could be.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from SphericalRegLib.alignment import residual_shift_mm
from SphericalRegLib.evaluation.calibration import CALIBRATION_METHODS
from SphericalRegLib.evaluation.rows import read_rows, write_rows
from SphericalRegLib.intensity import standardise
from SphericalRegLib.io import read_case, read_pose
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar

LINEAR_NOTE = "read as a linear-LUT export"


def replay(folder: Path, model: str | None = None):
    """Yield ``(row, drr (1, 1, H, W), xray (1, 1, H, W), valid (H, W), camera)`` per replayable run."""
    info = json.loads((folder / "info.json").read_text())
    cases_dir, model = Path(info["cases_dir"]), model or info["models"]["main"]
    registrar = None
    for row in read_rows(folder / "cases.csv"):
        path = folder / row.method / row.case / "result.json"
        if row.method not in CALIBRATION_METHODS or row.diverged or not path.exists():
            yield row, None, None, None, None
            continue
        result = json.loads(path.read_text())
        case = read_case(cases_dir / row.case)
        registrar = registrar or Registrar(load_model(model, case.ct), case.ct)
        encoding = "processed-linear" if any(LINEAR_NOTE in n for n in result.get("notes", [])) else \
            case.reading["encoding"]
        ctx = registrar.context(case.xray, case.camera, photometric=result.get("photometric")
                                or case.reading["photometric"], encoding=encoding)
        level = registrar.options.refine_levels[-1]
        mu = registrar.attenuation[level.spacing_mm]
        x, camera, valid = ctx.xray_level(0, level.image_size)
        with torch.no_grad():
            drr = ctx.renderer(camera, mu)(mu.data, read_pose(path)[None])
        ncc = float((standardise(drr, (1, 2, 3)) * standardise(x, (1, 2, 3))).mean())
        if abs(ncc - row.final_ncc) > 1e-3:
            raise SystemExit(f"{path}: replayed NCC {ncc:.4f} against {row.final_ncc:.4f} recorded; not the same images")
        yield row, drr.float(), x.float(), valid, camera


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("evaluation", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for row, drr, x, valid, camera in replay(args.evaluation, args.model):
        if drr is not None:
            with torch.no_grad():
                shift = float(residual_shift_mm(drr, x, valid[None, None], camera.pixel_spacing[0]))
            row = replace(row, residual_shift=shift)
            print(f"{row.case} {row.method}: mTRE {row.mTRE:.2f} mPE {row.mPE:.2f} residual shift {shift:.2f} mm",
                  flush=True)
        rows.append(row)
    write_rows(args.out, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
