"""Pose distributions of the conventions: the canonical AP view and seeded offsets about it."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .camera import ISOCENTRE_FRACTION, canonical_ap_pose
from .geometry import make_pose, so3_exp

__all__ = ["camera_frame_offset", "sample_offsets", "evaluation_poses", "EVAL_ROT_DEG", "EVAL_TRANS_MM",
           "INIT_ROT_DEG", "INIT_TRANS_MM"]

EVAL_ROT_DEG = (10.0, 10.0, 10.0)
EVAL_TRANS_MM = (30.0, 30.0, 60.0)
INIT_ROT_DEG = (5.0, 5.0, 5.0)
INIT_TRANS_MM = (15.0, 15.0, 15.0)


def _xyz_rotation(angles: Tensor) -> Tensor:
    """Rotations about camera x, then y, then z: ``(..., 3) radians -> (..., 3, 3)``."""
    e = torch.eye(3, dtype=angles.dtype, device=angles.device)
    Rx = so3_exp(angles[..., 0:1] * e[0])
    Ry = so3_exp(angles[..., 1:2] * e[1])
    Rz = so3_exp(angles[..., 2:3] * e[2])
    return Rz @ Ry @ Rx


def camera_frame_offset(angles: Tensor, translation: Tensor, isocentre_depth: float) -> Tensor:
    """D: ``Y -> R_o (Y - p) + p + t_o`` in the camera frame, ``p = (0, 0, d)``.

    ``angles`` (..., 3) radians about camera x, y, z; ``translation`` (..., 3) mm; returns (..., 4, 4).
    Left-multiplying a pose by D turns the C-arm about the isocentre instead of about the source.
    """
    R = _xyz_rotation(angles)
    p = torch.zeros_like(translation)
    p[..., 2] = isocentre_depth
    t = p - (R @ p[..., None])[..., 0] + translation
    return make_pose(R, t)


def sample_offsets(n: int, rot_deg, trans_mm, isocentre_depth: float, generator: torch.Generator) -> Tensor:
    """``n`` seeded offsets D with per-axis N(0, rot_deg^2) angles and N(0, trans_mm^2) translations."""
    rot = torch.tensor(rot_deg, dtype=torch.float64) * math.pi / 180
    tr = torch.tensor(trans_mm, dtype=torch.float64)
    angles = torch.randn(n, 3, generator=generator, dtype=torch.float64) * rot
    trans = torch.randn(n, 3, generator=generator, dtype=torch.float64) * tr
    return camera_frame_offset(angles, trans, isocentre_depth)


def evaluation_poses(isocentre: Tensor, sdd: float, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Ground-truth and starting poses ``(n, 4, 4)`` float64 of the conventions' evaluation protocol."""
    g = torch.Generator().manual_seed(int(seed))
    d = ISOCENTRE_FRACTION * sdd
    canonical = canonical_ap_pose(isocentre, sdd)
    truth = sample_offsets(n, EVAL_ROT_DEG, EVAL_TRANS_MM, d, g) @ canonical
    start = sample_offsets(n, INIT_ROT_DEG, INIT_TRANS_MM, d, g) @ truth
    return truth, start
