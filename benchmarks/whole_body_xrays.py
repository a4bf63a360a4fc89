"""Cases of a cropped CT whose X-rays show the whole body, as a real C-arm's do.

    python benchmarks/whole_body_xrays.py CASES WHOLE_CT OUT

``sphericalreg simulate --ct CROP`` renders each X-ray from the cropped CT itself, so its frames end
where the crop does: a narrow spine CT's X-rays show a slab of tissue with straight, sharp sides
and air beyond. A patient's X-ray shows the body on past the CT's field. This writes a copy of each
case of CASES (a folder of cases simulated from the crop, plain physics) whose X-ray is rendered
from WHOLE_CT (the CT the crop was cut from, in the same world coordinates) at the case's true
pose, with the simulator's plain physics and a noise seed of its own; the crop, geometry, start
and truth are copied unchanged.
"""
import shutil
import sys
from pathlib import Path

import torch

from SphericalRegLib.diffdrr_bridge import make_diffdrr
from SphericalRegLib.io import read_case, read_ct, read_truth, truth_path
from SphericalRegLib.simulate import _write_xray, simulate_case
from SphericalRegLib.volume import Volume, hu_to_mu


def main():
    cases, whole, out = Path(sys.argv[1]), read_ct(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=False)
    drr, camera = None, None
    for k, case in enumerate(sorted(p for p in cases.iterdir() if p.is_dir())):
        target = out / case.name
        shutil.copytree(case, target)
        shutil.copyfile(truth_path(case), truth_path(target))
        if camera is None:
            camera = read_case(case).camera
            drr = make_diffdrr(Volume(hu_to_mu(whole.data.float()), whole.ijk_to_ras), camera, patch_size=64)
        truth, _ = read_truth(case)
        pixels = simulate_case(whole, truth.to(torch.float64), camera, torch.Generator().manual_seed(9_000_000 + k),
                               drr=drr)
        _write_xray(target / "xray.png", pixels)
        print(f"{target}: X-ray from the whole CT", flush=True)


if __name__ == "__main__":
    main()
