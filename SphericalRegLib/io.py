"""Reading CTs, X-rays and case folders; writing results and Slicer-loadable transforms.

Every file problem becomes an :class:`InputError` that names the file, what was wrong and what
was expected. World coordinates are RAS mm (ITK reads LPS: RAS = diag(-1, -1, 1) LPS).
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor

from .camera import Camera
from .errors import InputError
from .volume import Volume

__all__ = [
    "Case", "read_ct", "read_xray", "read_case", "read_truth", "read_pose",
    "write_json", "write_result", "write_itk_transform", "read_itk_transform", "atomic_write",
    "CT_NAMES", "XRAY_NAMES", "LPS_TO_RAS",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
CT_NAMES = ("ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha", "ct")
XRAY_NAMES = ("xray.dcm", "xray.png", "xray.tif", "xray.tiff", "xray.npy")

# DICOM tags, as SimpleITK's GetMetaData keys them
_SDD = "0018|1110"
_IMAGER_SPACING = "0018|1164"
_PIXEL_SPACING = "0028|0030"
_ACTIVE_ORIGIN = "0018|7028"
_PHOTOMETRIC = "0028|0004"
_PRIMARY_ANGLE = "0018|1510"
_SECONDARY_ANGLE = "0018|1511"
_BITS_STORED = "0028|0101"
_DICOM_PIXEL_TAG = b"\xe0\x7f\x10\x00"


# --------------------------------------------------------------------------------------- CT


def _exists(path: Path, what: str) -> None:
    if not path.exists():
        raise InputError(path, "file not found", what)


def _read_sitk(path: Path, what: str) -> sitk.Image:
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti(path, what)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1][:200]
        if "spacing" in detail.lower():
            raise InputError(path, f"has zero or negative voxel spacing ({detail})", "positive voxel spacing in mm") from None
        raise InputError(path, f"cannot be read; the file is unreadable or truncated ({detail})", what) from None


def _check_nifti(path: Path, what: str) -> None:
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


def _read_dicom_series(folder: Path) -> sitk.Image:
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
    _exists(path, expected)
    image = _read_dicom_series(path) if path.is_dir() else _read_sitk(path, expected)
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


# ------------------------------------------------------------------------------------ X-ray


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.replace(" ", "").split("\\") if x]


def _dicom_tags(reader: sitk.ImageFileReader, keys) -> dict:
    return {k: reader.GetMetaData(k).strip() for k in keys if reader.HasMetaDataKey(k)}


def _read_dicom_xray(path: Path) -> tuple[np.ndarray, dict]:
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
    tags = _dicom_tags(reader, (_SDD, _IMAGER_SPACING, _PIXEL_SPACING, _ACTIVE_ORIGIN, _PHOTOMETRIC,
                                _PRIMARY_ANGLE, _SECONDARY_ANGLE, _BITS_STORED))
    return sitk.GetArrayFromImage(image), tags


def _read_pixels(path: Path) -> tuple[np.ndarray, dict]:
    suffix = path.suffix.lower()
    expected = "a 2D X-ray (.dcm, .png, .tif or .npy)"
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False), {}
        except (ValueError, OSError, EOFError) as e:
            raise InputError(path, f"cannot be read; the file is unreadable or truncated ({e})", expected) from None
    if suffix in (".dcm", ".dicom") or (path.read_bytes()[128:132] == b"DICM"):
        return _read_dicom_xray(path)
    image = _read_sitk(path, expected)
    arr = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:  # grey saved as RGB(A): keep it only if it is grey
        colour = arr[..., :3]
        if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
            raise InputError(path, "is a colour image", "a greyscale X-ray")
        arr = colour[..., 0]
    return arr, {}


def _camera_from_dicom(tags: dict, rows: int, cols: int, path: Path) -> Camera | None:
    spacing_tag = tags.get(_IMAGER_SPACING) or tags.get(_PIXEL_SPACING)
    if _SDD not in tags and not spacing_tag:
        return None
    if _SDD not in tags:
        raise InputError(path, "DICOM gives a pixel spacing but no DistanceSourceToDetector (0018,1110)",
                         "a positive source-to-detector distance, or a geometry.json beside the X-ray")
    if not spacing_tag:
        raise InputError(path, "DICOM gives no ImagerPixelSpacing (0018,1164) or PixelSpacing (0028,0030)",
                         "positive pixel spacing in mm, or a geometry.json beside the X-ray")
    try:
        sdd = float(tags[_SDD])
        dv, du = _floats(spacing_tag)[:2]  # DICOM: row spacing \ column spacing
    except ValueError:
        raise InputError(path, f"malformed DICOM geometry tags {tags}", "numbers in mm") from None
    cu, cv = (cols - 1) / 2, (rows - 1) / 2
    if _ACTIVE_ORIGIN in tags:
        # offset (row, column) in mm of the top-left corner of the active area from the detector
        # centre, taken as the foot of the perpendicular from the source
        oy, ox = _floats(tags[_ACTIVE_ORIGIN])[:2]
        cu, cv = -ox / du - 0.5, -oy / dv - 0.5
    return Camera(sdd, (du, dv), (cu, cv), (rows, cols)).validate(path)


def read_xray(path: str | Path, geometry: Camera | str | Path | None = None) -> tuple[Tensor, Camera, dict]:
    """One 2D X-ray as raw pixel values ``(rows, cols)`` float32, its :class:`Camera` and metadata.

    Geometry comes from, in order: ``geometry`` when it is a Camera; a DICOM's own tags
    (DistanceSourceToDetector, ImagerPixelSpacing or PixelSpacing, DetectorActiveOrigin); the
    ``geometry`` path or ``geometry.json`` beside the X-ray. Values come back as MONOCHROME2
    (``meta["photometric"]``): a MONOCHROME1 DICOM is inverted by the reader, and its tag is kept
    in ``meta["stored_photometric"]``; see :func:`SphericalRegLib.xray.to_line_integrals`.
    """
    path = Path(path)
    _exists(path, "a 2D X-ray (.dcm, .png, .tif or .npy)")
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
    if _PHOTOMETRIC in tags:
        meta["stored_photometric"] = tags[_PHOTOMETRIC].upper()
    for key, name in ((_PRIMARY_ANGLE, "positioner_primary_angle"), (_SECONDARY_ANGLE, "positioner_secondary_angle")):
        if key in tags:
            try:
                meta[name] = float(tags[key])
            except ValueError:
                pass
    if _BITS_STORED in tags:
        meta["bits_stored"] = int(tags[_BITS_STORED])

    if isinstance(geometry, Camera):
        camera, meta["geometry_source"] = geometry.validate(path), "argument"
    else:
        camera = _camera_from_dicom(tags, rows, cols, path) if tags else None
        meta["geometry_source"] = "dicom"
        if camera is None:
            gpath = Path(geometry) if geometry is not None else path.parent / "geometry.json"
            camera, meta["geometry_source"] = Camera.load(gpath), str(gpath)
    if camera.image_size != (rows, cols):
        raise InputError(path, f"geometry from {meta['geometry_source']} is for a {camera.image_size[0]} x {camera.image_size[1]} image but "
                         f"{path.name} is {rows} x {cols}", "image_size equal to the X-ray's [rows, cols]")
    return torch.from_numpy(image), camera, meta


# ------------------------------------------------------------------------------------ cases


def _as_pose(value, source, key: str = "camera_from_world") -> Tensor:
    try:
        T = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError):
        raise InputError(source, f"{key} is not a 4x4 matrix of numbers", "a rigid 4x4 matrix") from None
    if T.shape != (4, 4) or not torch.isfinite(T).all():
        raise InputError(source, f"{key} has shape {list(T.shape)} or non-finite entries", "a rigid 4x4 matrix")
    R = T[:3, :3]
    rigid = (torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-4)
             and torch.det(R) > 0 and torch.allclose(T[3], torch.tensor([0.0, 0, 0, 1], dtype=torch.float64)))
    if not rigid:
        raise InputError(source, f"{key} is not a rigid transform", "[[R, t], [0, 0, 0, 1]] with R a rotation")
    return T


def _read_json(path: Path, what: str) -> dict:
    _exists(path, what)
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"is not valid JSON ({e})", what) from None
    if not isinstance(obj, dict):
        raise InputError(path, "is not a JSON object", what)
    return obj


def read_pose(path: str | Path) -> Tensor:
    """``{"camera_from_world": 4x4}`` (init.json, result.json) -> ``(4, 4)`` float64."""
    path = Path(path)
    obj = _read_json(path, '{"camera_from_world": 4x4}')
    if "camera_from_world" not in obj:
        raise InputError(path, "has no camera_from_world", '{"camera_from_world": 4x4}')
    return _as_pose(obj["camera_from_world"], path)


@dataclass
class Case:
    """One case folder as the conventions define it (ground truth is never part of it)."""

    folder: Path
    ct: Volume
    xray: Tensor
    camera: Camera
    init: Tensor | None
    paths: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def _one_of(folder: Path, names, what: str) -> Path:
    found = [folder / n for n in names if (folder / n).exists()]
    if not found:
        raise InputError(folder, f"has no {what}", f"one of {', '.join(names)}")
    if len(found) > 1:
        raise InputError(folder, f"has several {what}s ({', '.join(p.name for p in found)})", f"exactly one {what}")
    return found[0]


def read_case(folder: str | Path) -> Case:
    """Read a case folder: CT, X-ray, geometry (geometry.json or DICOM tags), optional init.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a folder" if folder.exists() else "folder not found",
                         "a case folder holding ct.*, xray.* and geometry.json")
    ct_path = _one_of(folder, CT_NAMES, "CT")
    xray_path = _one_of(folder, XRAY_NAMES, "X-ray")
    geometry = folder / "geometry.json"
    image, camera, meta = read_xray(xray_path, geometry)
    init_path = folder / "init.json"
    init = read_pose(init_path) if init_path.exists() else None
    paths = {"ct": ct_path, "xray": xray_path, "geometry": geometry if geometry.exists() else None,
             "init": init_path if init is not None else None}
    return Case(folder, read_ct(ct_path), image, camera, init, paths, meta)


def truth_path(case_folder: str | Path) -> Path:
    """``<case>.truth.json`` beside the case folder."""
    folder = Path(case_folder)
    return folder.parent / f"{folder.name}.truth.json"


def read_truth(case_folder: str | Path) -> tuple[Tensor, Tensor]:
    """Ground truth of a case: ``camera_from_world`` (4, 4) and ``landmarks_world`` (N, 3), float64."""
    path = truth_path(case_folder)
    expected = '{"camera_from_world": 4x4, "landmarks_world": [[x, y, z], ...]}'
    obj = _read_json(path, expected)
    missing = [k for k in ("camera_from_world", "landmarks_world") if k not in obj]
    if missing:
        raise InputError(path, f"missing {', '.join(missing)}", expected)
    T = _as_pose(obj["camera_from_world"], path)
    try:
        X = torch.as_tensor(obj["landmarks_world"], dtype=torch.float64).reshape(-1, 3)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(path, "landmarks_world is not a list of [x, y, z]", expected) from None
    if not torch.isfinite(X).all():
        raise InputError(path, "landmarks_world holds non-finite values", "finite world points in mm")
    return T, X


# ---------------------------------------------------------------------------------- writers


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise InputError(path, "already exists", "a new path, or overwrite=True (--overwrite) to replace it")


def atomic_write(path: str | Path, write) -> None:
    """``write(temporary_path)`` then rename over ``path``: never a half-written file, whatever interrupts.

    The temporary file sits in the same folder (same file system) and gets the permissions any new
    file of the user would get, not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(obj):
    if isinstance(obj, Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: str | Path, obj, overwrite: bool = False) -> Path:
    """Write ``obj`` as indented JSON, atomically; refuses to replace a file unless ``overwrite``."""
    path = Path(path)
    _refuse_existing(path, overwrite)
    text = json.dumps(obj, indent=2, default=_jsonable) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def write_result(folder: str | Path, camera_from_world, seconds: float, similarity: float,
                 confidence: float | None, iterations: int, extra: dict | None = None,
                 overwrite: bool = False) -> Path:
    """``folder/result.json`` of the conventions; ``extra`` adds keys but never replaces these."""
    T = _as_pose(camera_from_world.detach().cpu() if isinstance(camera_from_world, Tensor) else camera_from_world,
                 "camera_from_world")
    obj = dict(extra or {})
    obj.update({
        "camera_from_world": T.tolist(),
        "seconds": float(seconds),
        "similarity": float(similarity),
        "confidence": None if confidence is None else float(confidence),
        "iterations": int(iterations),
    })
    return write_json(Path(folder) / "result.json", obj, overwrite)


def write_itk_transform(path: str | Path, matrix_ras, overwrite: bool = False) -> Path:
    """Save a 4x4 RAS matrix so that 3D Slicer loads it as a linear transform whose ToParent is it.

    ITK transform files hold the resampling ("FromParent") direction in LPS; Slicer converts
    with diag(-1, -1, 1) and inverts on load, so the file stores ``F inv(M) F``.
    """
    path = Path(path)
    _refuse_existing(path, overwrite)
    M = np.asarray(matrix_ras.detach().cpu() if isinstance(matrix_ras, Tensor) else matrix_ras, dtype=np.float64)
    if M.shape != (4, 4) or not np.all(np.isfinite(M)) or not np.allclose(M[3], [0, 0, 0, 1]):
        raise InputError("matrix_ras", f"is not an affine 4x4 matrix (shape {list(M.shape)})", "[[A, t], [0, 0, 0, 1]]")
    F = LPS_TO_RAS
    L = F @ np.linalg.inv(M) @ F
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(L[:3, :3].ravel().tolist())
    tx.SetTranslation(L[:3, 3].tolist())
    atomic_write(path, lambda tmp: sitk.WriteTransform(tx, tmp))
    return path


def read_itk_transform(path: str | Path) -> Tensor:
    """The RAS ToParent matrix ``(4, 4)`` float64 that 3D Slicer would show for an ITK linear transform file."""
    path = Path(path)
    _exists(path, "an ITK transform file (.tfm, .txt, .h5)")
    try:
        tx = sitk.ReadTransform(str(path))
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1][:200]
        raise InputError(path, f"cannot be read as an ITK transform ({detail})", "a .tfm, .txt or .h5 transform") from None
    # sample the transform: works for any linear ITK type (affine, Euler, versor, composite of them)
    probe = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3.0, -7.0, 11.0]], dtype=np.float64) * 100
    try:
        out = np.array([tx.TransformPoint(p.tolist()) for p in probe])
    except RuntimeError as e:
        raise InputError(path, f"transform cannot be evaluated ({e})", "a linear transform") from None
    L = np.eye(4)
    L[:3, 3] = out[0]
    L[:3, :3] = (out[1:4] - out[0]).T / 100
    if not np.allclose(L[:3, :3] @ probe[4] + L[:3, 3], out[4], atol=1e-4):
        raise InputError(path, "holds a non-linear transform", "a linear (affine or rigid) transform")
    F = LPS_TO_RAS
    return torch.from_numpy(np.linalg.inv(F @ L @ F))
