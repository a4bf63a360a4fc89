"""Simulated cases re-rendered with one effect of their drawn physics switched off at a time.

    python benchmarks/effect_ablation.py CASES OUT case_000,case_005,... [asis,instruments,...]

For each named case of CASES (``sphericalreg simulate --physics ...``) and each effect of
:data:`OFF`, ``OUT/<effect>/<case>`` holds the case with view 0 re-rendered from its truth file's
physics with that effect off (same pose, same instruments; the noise is drawn afresh, seeded by the
case, so ``OUT/asis`` is the same physics with only the noise redrawn, the baseline to compare with).
Register them with ``benchmarks/intensity_ab.py``, e.g. ``truth+nosearch`` over ``OUT/*``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch

from SphericalRegLib.camera import Camera
from SphericalRegLib.io import read_ct
from SphericalRegLib.physics import Physics, Prepared, simulate_frame
from SphericalRegLib.simulate import _write_xray

OFF = {
    "asis": {}, "scatter": dict(scatter_fraction=0.0), "dark": dict(offset=0.0, read_noise=0.0),
    "table": dict(table=False), "field": dict(shutters=0.0, iris=0.0),
    "distortion": dict(pincushion=0.0, s_distortion=0.0, vignetting=0.0), "heel": dict(heel=0.0),
    "truncation": dict(truncation=0.0), "spectrum": dict(kvp=None), "blur": dict(blur_mm=0.0),
    "instruments": dict(screws=0, kwires=0, retractors=0), "screws": dict(screws=0), "processing": dict(gamma=1.0, unsharp_amount=0.0),
    "grid": dict(grid_depth=0.0),
}


def main() -> None:
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__)
    source, out, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(",")
    effects = sys.argv[4].split(",") if len(sys.argv) == 5 else list(OFF)
    unknown = set(effects) - set(OFF)
    if unknown:
        raise SystemExit(f"unknown effects {sorted(unknown)}; expected some of {', '.join(OFF)}")
    torch.set_num_threads(1)
    ct = prepared = None
    for name in names:
        truth = json.loads((source / f"{name}.truth.json").read_text())
        if "physics" not in truth:
            raise SystemExit(f"{name}: plain physics, nothing to switch off")
        meta = truth["physics"][0]
        physics = Physics.from_json(meta["physics"])
        camera = Camera.from_json(json.loads((source / name / "geometry.json").read_text()))
        if ct is None:  # the cases of one simulate run share their CT and camera
            ct = read_ct(source / name / "ct.nii.gz")
            prepared = Prepared(ct, camera)
        pose = torch.tensor(truth["camera_from_world"], dtype=torch.float64)
        for effect in effects:
            change = OFF[effect]
            folder = out / effect / name
            folder.mkdir(parents=True, exist_ok=True)
            noise = torch.Generator().manual_seed(int(name.split("_")[-1]) + 99)
            changed = replace(physics, **change)
            kept = [tool for tool in meta.get("instruments") or []
                    if getattr(changed, {"screw": "screws", "kwire": "kwires", "retractor": "retractors"}[tool["kind"]])]
            pixels, drawn = simulate_frame(ct, pose, camera, changed, noise, prepared, kept or None)
            _write_xray(folder / "xray.png", pixels, drawn.get("bits", 16))
            for file in ("geometry.json", "init.json"):
                shutil.copy(source / name / file, folder / file)
            if not (folder / "ct.nii.gz").exists():
                os.symlink((source / name / "ct.nii.gz").resolve(), folder / "ct.nii.gz")
            (out / effect / f"{name}.truth.json").write_text(json.dumps({**truth, "physics": [drawn]}))
        print(name, flush=True)


if __name__ == "__main__":
    main()
