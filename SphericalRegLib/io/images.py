"""CTs and X-rays from disk as the library's types: a :class:`~SphericalRegLib.volume.Volume` in
HU with its exact IJK->RAS, and an X-ray frame with its :class:`~SphericalRegLib.camera.Camera`."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor

from ..camera import Camera
from ..errors import InputError
from ..volume import Volume
from . import dicom
from .dicom import camera_from_dicom, read_dicom_series, read_dicom_xray
from .files import require_file
from .nifti import read_sitk

__all__ = ["read_ct", "read_xray", "LPS_TO_RAS"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ijk_to_ras(image: sitk.Image) -> np.ndarray:
    D = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    A = np.eye(4)
    A[:3, :3] = D * np.array(image.GetSpacing(), dtype=np.float64)
    A[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ A


def read_ct(path: str | Path) -> Volume:
    """A CT in HU as a :class:`Volume` (float32 data ``[i, j, k]``, ``ijk_to_ras`` from the header).

    Reads NIfTI, NRRD, MHA or a folder of DICOM slices; direction, origin and spacing are kept
    exactly, only LPS -> RAS is applied.
    """
    path = Path(path)
    expected = "a 3D CT in Hounsfield units (.nii.gz, .nrrd, .mha or a DICOM folder)"
    require_file(path, expected)
    image = read_dicom_series(path) if path.is_dir() else read_sitk(path, expected)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel", "a scalar CT")
    size = image.GetSize()
    if image.GetDimension() == 4 and size[3] == 1:
        image = image[:, :, :, 0]
        size = image.GetSize()
    if image.GetDimension() != 3 or min(size) < 2:
        raise InputError(path, f"is not a 3D volume (size {list(size)})", "a 3D CT with at least 2 voxels per axis")
    spacing = np.array(image.GetSpacing())
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise InputError(path, f"voxel spacing is {spacing.tolist()}", "positive voxel spacing in mm")
    A = _ijk_to_ras(image)
    if not (np.all(np.isfinite(A)) and abs(np.linalg.det(A[:3, :3])) > 0):
        raise InputError(path, "has a degenerate voxel-to-world direction matrix", "an invertible orientation")
    data = torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32)).permute(2, 1, 0).contiguous()
    if not torch.isfinite(data).all():
        raise InputError(path, "holds NaN or infinite voxels", "finite Hounsfield units")
    return Volume(data, torch.from_numpy(A))


def _read_pixels(path: Path) -> tuple[np.ndarray, dict]:
    suffix = path.suffix.lower()
    expected = "a 2D X-ray (.dcm, .png, .tif or .npy)"
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False), {}
        except (ValueError, OSError, EOFError) as e:
            raise InputError(path, f"cannot be read; the file is unreadable or truncated ({e})", expected) from None
    if suffix in (".dcm", ".dicom") or (path.read_bytes()[128:132] == b"DICM"):
        return read_dicom_xray(path)
    image = read_sitk(path, expected)
    arr = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:  # grey saved as RGB(A): keep it only if it is grey
        colour = arr[..., :3]
        if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
            raise InputError(path, "is a colour image", "a greyscale X-ray")
        arr = colour[..., 0]
    return arr, {}


def read_xray(path: str | Path, geometry: Camera | str | Path | None = None) -> tuple[Tensor, Camera, dict]:
    """One 2D X-ray as raw pixel values ``(rows, cols)`` float32, its :class:`Camera` and metadata.

    Geometry comes from, in order: ``geometry`` when it is a Camera; a DICOM's own tags
    (DistanceSourceToDetector, ImagerPixelSpacing or PixelSpacing, DetectorActiveOrigin); the
    ``geometry`` path or ``geometry.json`` beside the X-ray. Values come back as stored, and
    ``meta["photometric"]`` says how to read them: for a DICOM, MONOCHROME2 (a MONOCHROME1 DICOM is
    inverted by the reader; its tag is kept in ``meta["stored_photometric"]``); for other files
    (which cannot say), what :func:`SphericalRegLib.xray.describe` decides from the pixels, with
    ``photometric_source`` ("dicom" or "pixels"), ``photometric_evidence`` and
    ``photometric_confident``. ``meta["encoding"]``: "intensity" (raw detector counts),
    "processed" (a windowed export, read affinely) or, from a DICOM's Pixel Intensity Relationship
    (0028,1040) LIN on a windowed export, "processed-linear"; ``meta["encoding_source"]`` says
    whether the tag ("dicom") or the pixels ("pixels") decided. Without the tag a processed export's
    LUT is left to registration, which asks the CT (:func:`~SphericalRegLib.register.stages.choose_reading`).
    """
    path = Path(path)
    require_file(path, "a 2D X-ray (.dcm, .png, .tif or .npy)")
    arr, tags = _read_pixels(path)
    arr = np.asarray(arr)
    if arr.ndim == 3 and 1 in arr.shape:  # a single frame stored as a volume of depth 1
        arr = arr.squeeze(axis=arr.shape.index(1))
    if arr.ndim != 2:
        raise InputError(path, f"is not a 2D image (shape {list(arr.shape)})", "one X-ray frame, rows x cols")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(path, f"holds {arr.dtype} values", "real pixel values")
    image = arr.astype(np.float32)
    if not np.all(np.isfinite(image)):
        raise InputError(path, "holds NaN or infinite pixels", "finite detector intensities")
    if image.max() == image.min():
        raise InputError(path, f"is a constant image (every pixel {image.flat[0]:g})", "an X-ray with contrast")
    rows, cols = image.shape

    # GDCM already inverts MONOCHROME1 pixel data on reading (v -> type max - v): what comes back
    # is MONOCHROME2 whatever the file stored
    meta = {"path": str(path), "dtype": str(arr.dtype), "photometric": "MONOCHROME2"}
    if dicom.PHOTOMETRIC in tags:
        meta["stored_photometric"] = tags[dicom.PHOTOMETRIC].upper()
    # how to read the pixels: a DICOM's photometric wins; otherwise the pixels decide (xray.describe)
    from ..xray import describe

    found = describe(torch.from_numpy(image), "MONOCHROME2" if dicom.PHOTOMETRIC in tags else None)
    meta.update(photometric=found["photometric"], encoding=found["encoding"],
                photometric_source="dicom" if dicom.PHOTOMETRIC in tags else "pixels",
                photometric_evidence=found["evidence"], photometric_confident=found["confident"])
    relationship = tags.get(dicom.INTENSITY_RELATIONSHIP, "").strip().upper()
    if relationship in ("LIN", "LOG"):  # values proportional to intensity, or to its logarithm
        linear = "processed-linear" if found["encoding"] == "processed" else "intensity"
        meta.update(encoding=linear if relationship == "LIN" else "processed", encoding_source="dicom")
    else:
        meta["encoding_source"] = "pixels"
    if not found["confident"]:
        warnings.warn(f"{path.name}: a processed export whose polarity the pixels do not tell ({found['evidence']}); "
                      f"read as {found['photometric']}. If bone is bright in it, pass photometric MONOCHROME1.",
                      stacklevel=2)
    for key, name in ((dicom.PRIMARY_ANGLE, "positioner_primary_angle"), (dicom.SECONDARY_ANGLE, "positioner_secondary_angle")):
        if key in tags:
            try:
                meta[name] = float(tags[key])
            except ValueError:
                pass
    if dicom.BITS_STORED in tags:
        meta["bits_stored"] = int(tags[dicom.BITS_STORED])

    if isinstance(geometry, Camera):
        camera, meta["geometry_source"] = geometry.validate(path), "argument"
    else:
        camera = camera_from_dicom(tags, rows, cols, path) if tags else None
        meta["geometry_source"] = "dicom"
        if camera is None:
            gpath = Path(geometry) if geometry is not None else path.parent / "geometry.json"
            camera, meta["geometry_source"] = Camera.load(gpath), str(gpath)
    if camera.image_size != (rows, cols):
        raise InputError(path, f"geometry from {meta['geometry_source']} is for a {camera.image_size[0]} x {camera.image_size[1]} image but "
                         f"{path.name} is {rows} x {cols}", "image_size equal to the X-ray's [rows, cols]")
    return torch.from_numpy(image), camera, meta
