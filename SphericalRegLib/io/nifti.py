"""Reading images through SimpleITK, with the NIfTI checks ITK leaves out (truncated data,
non-positive voxel spacing), so that a damaged file never reads as a plausible volume."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

__all__ = ["read_sitk", "check_nifti"]


def read_sitk(path: Path, what: str) -> sitk.Image:
    if path.name.lower().endswith((".nii", ".nii.gz")):
        check_nifti(path, what)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1][:200]
        if "spacing" in detail.lower():
            raise InputError(path, f"has zero or negative voxel spacing ({detail})", "positive voxel spacing in mm") from None
        raise InputError(path, f"cannot be read; the file is unreadable or truncated ({detail})", what) from None


def check_nifti(path: Path, what: str) -> None:
    """What ITK lets pass silently: a truncated (.gz) data block, and pixdim <= 0 (read as 1 mm)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            header = f.read(348)
            size = len(header)
            while chunk := f.read(1 << 22):
                size += len(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(path, f"cannot be read; the file is unreadable or truncated ({e})", what) from None
    if len(header) < 348:
        raise InputError(path, "cannot be read; the file is truncated (no complete NIfTI header)", what)
    for endian in "<>":
        if struct.unpack(endian + "i", header[:4])[0] == 348:
            break
    else:
        return  # NIfTI-2 or not NIfTI at all: ITK's reader decides
    dim = struct.unpack(endian + "8h", header[40:56])
    bitpix = struct.unpack(endian + "h", header[72:74])[0]
    pixdim = struct.unpack(endian + "8f", header[76:108])
    vox_offset = struct.unpack(endian + "f", header[108:112])[0]
    sform_code = struct.unpack(endian + "h", header[254:256])[0]
    n = dim[0] if 1 <= dim[0] <= 7 else 0
    needed = int(vox_offset) + int(np.prod([max(d, 1) for d in dim[1:n + 1]], dtype=np.int64)) * max(bitpix, 8) // 8
    if size < needed:
        raise InputError(path, f"is truncated: {size} bytes of data where the header announces {needed}", what)
    spatial = pixdim[1:min(n, 3) + 1]
    if sform_code <= 0 and not all(np.isfinite(s) and s > 0 for s in spatial):
        raise InputError(path, f"voxel spacing (pixdim) is {list(spatial)}", "positive voxel spacing in mm")
