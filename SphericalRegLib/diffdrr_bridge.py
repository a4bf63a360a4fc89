"""Conversions between the conventions' frames and DiffDRR 0.6.1's, and DiffDRR's Siddon on our terms.

DiffDRR differs from the conventions in three places, each undone here and pinned by a test:

* **World.** ``diffdrr.data.read(..., center_volume=True)`` moves the volume's centre to the
  origin (and ``transform=`` may move it further). :class:`DiffDRRFrame` holds
  ``world_from_ras``, the rigid map from our RAS world into DiffDRR's world, recovered from the
  subject's affine and our ``ijk_to_ras`` of the same voxel grid.
* **Pose.** A DiffDRR pose ``E`` is camera-to-world, applied after the subject's ``reorient``:
  a point ``p`` of DiffDRR's camera frame sits at ``E @ reorient @ p`` in its world.
* **Detector.** DiffDRR's camera frame has the source at the origin and the detector at
  ``z = sdd`` like ours, but its rows run along -y and, with ``reverse_x_axis=True`` (the
  default), its columns along -x. Pixel (row r, col c) sits at
  ``x = delx * s_c + x0``, ``y = dely * ((H - 1) / 2 - r) + y0`` with
  ``s_c = (W - 1) / 2 - c`` (reversed) or ``c - (W - 1) / 2``. So ``p_diffdrr = F p_ours`` with
  ``F = diag(-1, -1, 1)`` (a half-turn about z) or ``diag(1, -1, 1)`` (a reflection), and
  ``x0 = du (cu - (W - 1) / 2)``, ``y0 = dv (cv - (H - 1) / 2)`` for the reversed axis.

Putting it together, with ``T`` our camera_from_world and ``W`` = world_from_ras:
``E = W T^-1 F reorient^-1`` and back ``T = F^-1 reorient^-1 E^-1 W``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .camera import Camera
from .errors import InputError
from .volume import Volume

__all__ = [
    "DiffDRRFrame",
    "detector_kwargs",
    "camera_from_detector",
    "diffdrr_pose",
    "camera_from_world_from_diffdrr",
    "make_diffdrr",
    "siddon_line_integrals",
]


def _flip(reverse_x_axis: bool) -> Tensor:
    """F: our camera frame -> DiffDRR's camera frame, (4, 4) float64."""
    return torch.diag(torch.tensor([-1.0 if reverse_x_axis else 1.0, -1.0, 1.0, 1.0], dtype=torch.float64))


@dataclass(frozen=True)
class DiffDRRFrame:
    """How DiffDRR's world and camera frames sit relative to ours.

    world_from_ras: (4, 4) float64 rigid map from our RAS world into DiffDRR's world;
    reorient: (4, 4) the subject's ``reorient`` (AP/PA/identity; PA is a reflection);
    reverse_x_axis: the Detector's flag.
    """

    world_from_ras: Tensor
    reorient: Tensor
    reverse_x_axis: bool = True

    @classmethod
    def from_subject(cls, subject, ijk_to_ras: Tensor, reverse_x_axis: bool = True) -> "DiffDRRFrame":
        """The frame of a DiffDRR subject whose volume has our ``ijk_to_ras`` voxel grid.

        Raises :class:`InputError` when the two affines do not differ by a rigid motion, i.e.
        the subject's voxel grid is not the one ``ijk_to_ras`` describes.
        """
        A_dd = torch.as_tensor(np.asarray(subject.volume.affine), dtype=torch.float64)
        A = torch.as_tensor(ijk_to_ras, dtype=torch.float64)
        W = A_dd @ torch.linalg.inv(A)
        R = W[:3, :3]
        if not torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-4):
            raise InputError(
                "ijk_to_ras",
                "the DiffDRR subject's affine is not a rigid motion of this ijk_to_ras",
                "the ijk_to_ras of the same voxel grid the subject holds",
            )
        reorient = torch.as_tensor(subject.reorient, dtype=torch.float64)
        return cls(W, reorient, reverse_x_axis)

    @classmethod
    def of(cls, drr, ijk_to_ras: Tensor) -> "DiffDRRFrame":
        """The frame of a built ``diffdrr.drr.DRR``."""
        frame = cls.from_subject(drr.subject, ijk_to_ras, bool(drr.detector.reverse_x_axis))
        return cls(frame.world_from_ras, drr.detector._reorient.to(torch.float64).cpu(), frame.reverse_x_axis)


def detector_kwargs(camera: Camera, reverse_x_axis: bool = True) -> dict:
    """Keyword arguments of ``diffdrr.drr.DRR`` that reproduce our ``camera``'s pixel grid."""
    du, dv = camera.pixel_spacing
    cu, cv = camera.principal_point
    rows, cols = camera.image_size
    sign = 1.0 if reverse_x_axis else -1.0
    return dict(
        sdd=camera.sdd,
        height=rows,
        width=cols,
        delx=du,
        dely=dv,
        x0=sign * du * (cu - (cols - 1) / 2),
        y0=dv * (cv - (rows - 1) / 2),
        reverse_x_axis=reverse_x_axis,
    )


def camera_from_detector(detector) -> Camera:
    """Our :class:`Camera` of a ``diffdrr.detector.Detector`` (inverse of :func:`detector_kwargs`)."""
    cal = detector._calibration.to(torch.float64).cpu()
    du, dv, sdd = float(cal[0, 0]), float(cal[1, 1]), float(cal[2, 2])
    x0, y0 = float(cal[0, 3]), float(cal[1, 3])
    rows, cols = int(detector.height), int(detector.width)
    sign = 1.0 if detector.reverse_x_axis else -1.0
    cu = (cols - 1) / 2 + sign * x0 / du
    cv = (rows - 1) / 2 + y0 / dv
    return Camera(sdd, (du, dv), (cu, cv), (rows, cols))


def diffdrr_pose(camera_from_world: Tensor, frame: DiffDRRFrame, dtype=torch.float32):
    """Our poses ``(B, 4, 4)`` as DiffDRR's camera-to-world ``RigidTransform`` (differentiable).

    ``E = world_from_ras @ camera_from_world^-1 @ F @ reorient^-1``.
    """
    from diffdrr.pose import RigidTransform

    T = camera_from_world if camera_from_world.dim() == 3 else camera_from_world[None]
    T = T.to(torch.float64)
    W = frame.world_from_ras.to(T)
    F = _flip(frame.reverse_x_axis).to(T)
    reorient_inv = torch.linalg.inv(frame.reorient.to(T))
    E = W @ torch.linalg.inv(T) @ F @ reorient_inv
    return RigidTransform(E.to(dtype))


def camera_from_world_from_diffdrr(pose, frame: DiffDRRFrame) -> Tensor:
    """DiffDRR's camera-to-world pose (``RigidTransform`` or ``(B, 4, 4)``) as our ``(B, 4, 4)`` float64.

    ``T = (W^-1 E reorient F)^-1``.
    """
    E = pose.matrix if hasattr(pose, "matrix") else pose
    E = (E if E.dim() == 3 else E[None]).to(torch.float64)
    W = frame.world_from_ras.to(E)
    F = _flip(frame.reverse_x_axis).to(E)
    world_from_camera = torch.linalg.inv(W) @ E @ frame.reorient.to(E) @ F
    return torch.linalg.inv(world_from_camera)


def make_diffdrr(volume: Volume, camera: Camera, renderer: str = "siddon", **drr_kwargs):
    """A ``diffdrr.drr.DRR`` that integrates ``volume.data`` as is, in our RAS world, with our camera.

    The volume's values are fed to DiffDRR unchanged (no HU-to-density rescaling), so the image
    is the line integral of the value times mm. The subject is not recentred and has no
    reorientation; use ``DiffDRRFrame.of(drr, volume.ijk_to_ras)`` for its poses.
    """
    from diffdrr.drr import DRR
    from torchio import ScalarImage, Subject

    data = volume.data
    if data.dim() == 4:
        if data.shape[0] != 1:
            raise InputError("volume", f"has {data.shape[0]} channels", "one channel for DiffDRR")
        data = data[0]
    if data.dim() != 3 or min(data.shape) < 2:
        raise InputError("volume", f"has shape {tuple(data.shape)}", "an [i, j, k] grid at least 2 voxels a side")
    tensor = data.detach().to(torch.float32).cpu()[None]
    affine = volume.ijk_to_ras.detach().cpu().numpy()
    image = ScalarImage(tensor=tensor, affine=affine)
    subject = Subject(
        volume=image,
        density=ScalarImage(tensor=tensor, affine=affine),
        mask=None,
        orientation=None,
        reorient=torch.eye(4, dtype=torch.float32),
        fiducials=None,
    )
    kwargs = detector_kwargs(camera, drr_kwargs.pop("reverse_x_axis", True))
    sdd = kwargs.pop("sdd")
    height = kwargs.pop("height")
    delx = kwargs.pop("delx")
    return DRR(subject, sdd, height, delx, renderer=renderer, **kwargs, **drr_kwargs)


def siddon_line_integrals(volume: Volume, camera_from_world: Tensor, camera: Camera, drr=None) -> Tensor:
    """DiffDRR's Siddon line integrals (value x mm) at our poses: ``(B, 4, 4) -> (B, rows, cols)``.

    Pass ``drr`` (from :func:`make_diffdrr` for this volume and camera) to reuse it across calls.
    """
    drr = make_diffdrr(volume, camera) if drr is None else drr
    pose = diffdrr_pose(camera_from_world, DiffDRRFrame.of(drr, volume.ijk_to_ras))
    return drr(pose)[:, 0]
