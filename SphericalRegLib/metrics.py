"""Accuracy metrics of the conventions: TRE/mTRE in 3D, mPE on the detector, SMSR, and the
summary row every results table gives."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .camera import Camera, project
from .geometry import transform_points
from .volume import Volume

__all__ = ["tre", "mtre", "mpe", "centroid_errors", "default_landmarks", "summarise", "SUMMARY_COLUMNS"]


def tre(T_est: Tensor, T_gt: Tensor, landmarks: Tensor) -> Tensor:
    """Per-landmark 3D error in the camera frame, ``(..., 4, 4), (..., 4, 4), (N, 3) -> (..., N)`` mm."""
    return (transform_points(T_est, landmarks) - transform_points(T_gt, landmarks)).norm(dim=-1)


def mtre(T_est: Tensor, T_gt: Tensor, landmarks: Tensor) -> Tensor:
    """Mean TRE of one case, ``(...)`` mm: the headline error."""
    return tre(T_est, T_gt, landmarks).mean(-1)


def mpe(T_est: Tensor, T_gt: Tensor, landmarks: Tensor, camera: Camera) -> Tensor:
    """Mean projection error on the detector in mm (pixels times pixel spacing), ``(...)``.

    Never scale it into a 3D error: one view pins depth far more weakly than the in-plane pose.
    """
    spacing = torch.tensor(camera.pixel_spacing, dtype=landmarks.dtype)
    d = (project(landmarks, T_est, camera) - project(landmarks, T_gt, camera)) * spacing
    return d.norm(dim=-1).mean(-1)


def centroid_errors(T_est: Tensor, T_gt: Tensor, landmarks: Tensor) -> tuple[Tensor, Tensor]:
    """Depth (along the central ray) and in-plane error of the landmarks' centroid, mm each."""
    c = landmarks.mean(0, keepdim=True)
    d = transform_points(T_est, c)[..., 0, :] - transform_points(T_gt, c)[..., 0, :]
    return d[..., 2].abs(), d[..., :2].norm(dim=-1)


def default_landmarks(ct: Volume, threshold_hu: float = -200.0, grid_mm: float = 10.0) -> Tensor:
    """Centres of CT voxels above ``threshold_hu`` on a regular ``grid_mm`` grid, ``(N, 3)`` world mm.

    The conventions' stand-in for a case without annotated landmarks.
    """
    steps = [max(1, int(round(grid_mm / float(s)))) for s in ct.spacing]
    sub = ct.data[:: steps[0], :: steps[1], :: steps[2]]
    ijk = torch.nonzero(sub > threshold_hu).to(torch.float64) * torch.tensor(steps, dtype=torch.float64)
    return ijk @ ct.ijk_to_ras[:3, :3].T + ct.ijk_to_ras[:3, 3]


def _percentile(x: Tensor, q: float) -> float:
    return float(torch.quantile(x, q / 100)) if x.numel() else math.nan


SUMMARY_COLUMNS = [
    "method", "cases", "SMSR", "median_mTRE", "p75_mTRE", "p95_mTRE", "mean_mTRE", "std_mTRE",
    "SMSR_2D", "median_mPE", "median_depth_err", "median_inplane_err", "median_seconds", "failures",
]


def summarise(method: str, mtre_mm, mpe_mm, depth_mm, inplane_mm, seconds, failures: int = 0) -> dict:
    """One results-table row of the conventions (SMSR: mTRE < 1 mm; SMSR-2D: mPE < 1 mm)."""
    m = torch.as_tensor(mtre_mm, dtype=torch.float64)
    p = torch.as_tensor(mpe_mm, dtype=torch.float64)
    return {
        "method": method,
        "cases": int(m.numel()),
        "SMSR": float((m < 1).double().mean()) if m.numel() else math.nan,
        "median_mTRE": _percentile(m, 50),
        "p75_mTRE": _percentile(m, 75),
        "p95_mTRE": _percentile(m, 95),
        "mean_mTRE": float(m.mean()) if m.numel() else math.nan,
        "std_mTRE": float(m.std()) if m.numel() > 1 else math.nan,
        "SMSR_2D": float((p < 1).double().mean()) if p.numel() else math.nan,
        "median_mPE": _percentile(p, 50),
        "median_depth_err": _percentile(torch.as_tensor(depth_mm, dtype=torch.float64), 50),
        "median_inplane_err": _percentile(torch.as_tensor(inplane_mm, dtype=torch.float64), 50),
        "median_seconds": _percentile(torch.as_tensor(seconds, dtype=torch.float64), 50),
        "failures": int(failures),
    }
