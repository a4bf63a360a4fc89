"""Case folders of the conventions (CT, X-ray, geometry, optional init.json) and their ground truth."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..camera import Camera
from ..errors import InputError
from ..views import View
from ..volume import Volume
from .files import read_json
from .images import read_ct, read_xray

__all__ = ["Case", "read_case", "read_truth", "read_pose", "truth_path", "as_pose", "CT_NAMES", "XRAY_NAMES"]

CT_NAMES = ("ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha", "ct")


XRAY_NAMES = ("xray.dcm", "xray.png", "xray.tif", "xray.tiff", "xray.npy")


def as_pose(value, source, key: str = "camera_from_world") -> Tensor:
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


def read_pose(path: str | Path) -> Tensor:
    """``{"camera_from_world": 4x4}`` (init.json, result.json) -> ``(4, 4)`` float64."""
    path = Path(path)
    obj = read_json(path, '{"camera_from_world": 4x4}')
    if "camera_from_world" not in obj:
        raise InputError(path, "has no camera_from_world", '{"camera_from_world": 4x4}')
    return as_pose(obj["camera_from_world"], path)


@dataclass
class Case:
    """One case folder as the conventions define it (ground truth is never part of it).

    xray, camera, meta: view 0's; views: every view, view 0 first (one for a single-view case)."""

    folder: Path
    ct: Volume
    xray: Tensor
    camera: Camera
    init: Tensor | None
    paths: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    views: list[View] = field(default_factory=list)

    @property
    def reading(self) -> dict:
        """How registration reads view 0, as :meth:`~SphericalRegLib.register.Registrar.register`'s
        keywords: the photometric interpretation, whether the CT checks it (it came from the pixels, not
        a DICOM tag) and the encoding (a DICOM's Pixel Intensity Relationship, else "auto")."""
        return {"photometric": self.meta.get("photometric", "MONOCHROME2"),
                "check_polarity": self.meta.get("photometric_source") == "pixels",
                "encoding": self.meta["encoding"] if self.meta.get("encoding_source") == "dicom" else "auto"}


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
    views = [View(image, camera, name="view 0", meta=meta, paths={"xray": xray_path, "geometry": paths["geometry"]})]
    views += _further_views(folder)
    return Case(folder, read_ct(ct_path), image, camera, init, paths, meta, views)


VIEW_FOLDER = re.compile(r"view_(\d+)$")


def _further_views(folder: Path) -> list[View]:
    """``view_1/``, ``view_2/`` ... of a case folder, in order; each needs its own X-ray and a
    geometry.json with ``camera_from_reference``."""
    found = {}
    for sub in folder.iterdir():
        match = VIEW_FOLDER.match(sub.name)
        if sub.is_dir() and match:
            found[int(match.group(1))] = sub
    expected = list(range(1, len(found) + 1))
    if sorted(found) != expected:
        names = ", ".join(found[k].name for k in sorted(found))
        raise InputError(folder, f"has view folders {names}", "view_1, view_2, ... numbered from 1 without gaps")
    views = []
    for k in expected:
        sub = found[k]
        geometry = sub / "geometry.json"
        expected_geometry = 'a geometry.json with the camera and "camera_from_reference" (4x4, view 0 camera to this view\'s)'
        if not geometry.exists():
            raise InputError(sub, "has no geometry.json", expected_geometry)
        obj = read_json(geometry, expected_geometry)
        if "camera_from_reference" not in obj:
            raise InputError(geometry, "has no camera_from_reference", expected_geometry)
        relative = as_pose(obj["camera_from_reference"], geometry, "camera_from_reference")
        xray_path = _one_of(sub, XRAY_NAMES, "X-ray")
        image, camera, meta = read_xray(xray_path, geometry)
        views.append(View(image, camera, relative, name=sub.name, meta=meta,
                          paths={"xray": xray_path, "geometry": geometry}))
    return views


def truth_path(case_folder: str | Path) -> Path:
    """``<case>.truth.json`` beside the case folder."""
    folder = Path(case_folder)
    return folder.parent / f"{folder.name}.truth.json"


def read_truth(case_folder: str | Path) -> tuple[Tensor, Tensor]:
    """Ground truth of a case: ``camera_from_world`` (4, 4) and ``landmarks_world`` (N, 3), float64."""
    path = truth_path(case_folder)
    expected = '{"camera_from_world": 4x4, "landmarks_world": [[x, y, z], ...]}'
    obj = read_json(path, expected)
    missing = [k for k in ("camera_from_world", "landmarks_world") if k not in obj]
    if missing:
        raise InputError(path, f"missing {', '.join(missing)}", expected)
    T = as_pose(obj["camera_from_world"], path)
    try:
        X = torch.as_tensor(obj["landmarks_world"], dtype=torch.float64).reshape(-1, 3)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(path, "landmarks_world is not a list of [x, y, z]", expected) from None
    if not torch.isfinite(X).all():
        raise InputError(path, "landmarks_world holds non-finite values", "finite world points in mm")
    return T, X
