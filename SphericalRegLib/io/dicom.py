"""DICOM: CT series, and X-ray frames with the tags that give their C-arm geometry
(DistanceSourceToDetector, ImagerPixelSpacing or PixelSpacing, DetectorActiveOrigin)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..camera import Camera
from ..errors import InputError

__all__ = ["read_dicom_series", "read_dicom_xray", "camera_from_dicom", "SDD", "IMAGER_SPACING", "PIXEL_SPACING",
           "ACTIVE_ORIGIN", "PHOTOMETRIC", "PRIMARY_ANGLE", "SECONDARY_ANGLE", "BITS_STORED",
           "INTENSITY_RELATIONSHIP"]

# DICOM tags, as SimpleITK's GetMetaData keys them
SDD = "0018|1110"
IMAGER_SPACING = "0018|1164"
PIXEL_SPACING = "0028|0030"
ACTIVE_ORIGIN = "0018|7028"
PHOTOMETRIC = "0028|0004"
PRIMARY_ANGLE = "0018|1510"
SECONDARY_ANGLE = "0018|1511"
BITS_STORED = "0028|0101"
INTENSITY_RELATIONSHIP = "0028|1040"  # Pixel Intensity Relationship: LIN, LOG or DISP
_DICOM_PIXEL_TAG = b"\xe0\x7f\x10\x00"


def read_dicom_series(folder: Path) -> sitk.Image:
    """The CT series of a DICOM folder (the series with the most slices), as one SimpleITK image."""
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise InputError(folder, "folder holds no DICOM series", "a folder of DICOM slices of one CT series")
    # the series with the most slices is the CT; scouts and dose reports have one or two
    files = max((reader.GetGDCMSeriesFileNames(str(folder), i) for i in ids), key=len)
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1][:200]
        raise InputError(folder, f"DICOM series cannot be read ({detail})", "readable DICOM CT slices") from None


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.replace(" ", "").split("\\") if x]


def _dicom_tags(reader: sitk.ImageFileReader, keys) -> dict:
    return {k: reader.GetMetaData(k).strip() for k in keys if reader.HasMetaDataKey(k)}


def read_dicom_xray(path: Path) -> tuple[np.ndarray, dict]:
    head = path.read_bytes()
    is_dicom = head[128:132] == b"DICM"
    if is_dicom and _DICOM_PIXEL_TAG not in head:
        raise InputError(path, "is a DICOM file without pixel data", "a DICOM X-ray image with pixel data")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        image = reader.Execute()
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1][:200]
        raise InputError(path, f"cannot be read; the file is unreadable or truncated ({detail})",
                         "a DICOM X-ray image") from None
    tags = _dicom_tags(reader, (SDD, IMAGER_SPACING, PIXEL_SPACING, ACTIVE_ORIGIN, PHOTOMETRIC,
                                PRIMARY_ANGLE, SECONDARY_ANGLE, BITS_STORED, INTENSITY_RELATIONSHIP))
    return sitk.GetArrayFromImage(image), tags


def camera_from_dicom(tags: dict, rows: int, cols: int, path: Path) -> Camera | None:
    spacing_tag = tags.get(IMAGER_SPACING) or tags.get(PIXEL_SPACING)
    if SDD not in tags and not spacing_tag:
        return None
    if SDD not in tags:
        raise InputError(path, "DICOM gives a pixel spacing but no DistanceSourceToDetector (0018,1110)",
                         "a positive source-to-detector distance, or a geometry.json beside the X-ray")
    if not spacing_tag:
        raise InputError(path, "DICOM gives no ImagerPixelSpacing (0018,1164) or PixelSpacing (0028,0030)",
                         "positive pixel spacing in mm, or a geometry.json beside the X-ray")
    try:
        sdd = float(tags[SDD])
        dv, du = _floats(spacing_tag)[:2]  # DICOM: row spacing \ column spacing
    except ValueError:
        raise InputError(path, f"malformed DICOM geometry tags {tags}", "numbers in mm") from None
    cu, cv = (cols - 1) / 2, (rows - 1) / 2
    if ACTIVE_ORIGIN in tags:
        # offset (row, column) in mm of the top-left corner of the active area from the detector
        # centre, taken as the foot of the perpendicular from the source
        oy, ox = _floats(tags[ACTIVE_ORIGIN])[:2]
        cu, cv = -ox / du - 0.5, -oy / dv - 0.5
    return Camera(sdd, (du, dv), (cu, cv), (rows, cols)).validate(path)
