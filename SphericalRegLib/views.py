"""Several X-rays of one patient position: a biplane C-arm, or a mobile C-arm turned between shots.

View 0 is the reference: its ``camera_from_world`` is the unknown. View k sees the patient with
``camera_from_reference @ camera_from_world`` (conventions, "Several views of one case"), so one
pose pins every view, and a second view sees along the first one's central ray, where a single
view is nearly blind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .camera import Camera
from .geometry import make_pose, so3_exp

__all__ = ["View", "view_poses", "orbit", "IDENTITY"]

IDENTITY = torch.eye(4, dtype=torch.float64)


@dataclass
class View:
    """One X-ray of a case.

    xray: raw pixel values ``(rows, cols)`` (air bright, see :func:`~SphericalRegLib.xray.preprocess`);
    camera: its intrinsics; camera_from_reference: ``(4, 4)`` from view 0's camera frame to this
    view's (identity for view 0); name: how messages refer to it (``view 0``, ``view_1``);
    meta: the reader's metadata (``photometric`` and the like); paths: the files it came from.
    """

    xray: Tensor
    camera: Camera
    camera_from_reference: Tensor = field(default_factory=IDENTITY.clone)
    name: str = "view 0"
    meta: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)

    @property
    def photometric(self) -> str:
        return self.meta.get("photometric", "MONOCHROME2")


def view_poses(camera_from_reference: Tensor, camera_from_world: Tensor) -> Tensor:
    """Every view's pose from view 0's: ``(V, 4, 4), (B, 4, 4) -> (V, B, 4, 4)``."""
    C = camera_from_reference.to(camera_from_world)
    return C[:, None] @ camera_from_world[None]


def orbit(orbital_deg: float, angulation_deg: float, isocentre_mm: float) -> Tensor:
    """``camera_from_reference`` (4, 4) of a C-arm turned about its isocentre from view 0.

    The orbit turns about view 0's image rows (camera y, the patient's long axis in an AP view:
    AP to lateral at 90 deg), the angulation about its columns (camera x, cranial/caudal tilt).
    The isocentre lies on view 0's central ray ``isocentre_mm`` from the source (for a C-arm of
    the conventions' geometry, ``ISOCENTRE_FRACTION * sdd``) and stays there:
    ``X_k = R^T (X_0 - p) + p``.
    """
    a, b = math.radians(orbital_deg), math.radians(angulation_deg)
    R = so3_exp(torch.tensor([0.0, a, 0.0], dtype=torch.float64)) @ so3_exp(
        torch.tensor([b, 0.0, 0.0], dtype=torch.float64))
    p = torch.tensor([0.0, 0.0, float(isocentre_mm)], dtype=torch.float64)
    return make_pose(R.T, p - R.T @ p)
