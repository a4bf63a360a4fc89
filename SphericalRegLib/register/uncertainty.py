"""How well the final pose is pinned down: the Gauss-Newton covariance of the last LM stage,
carried to a point of the anatomy and split along the central ray (depth) and across it.

``Sigma = s^2 (J^T J)^-1`` with ``J`` the Jacobian of the intensity residual with respect to a
left twist at the final pose and ``s^2 = |r|^2 / (M - 6)`` the residual variance. Pixel
residuals are correlated (blur, patches), so the raw figure is too small; the model's calibration
carries a factor fitted on held-out cases (``uncertainty_scale``) that makes the stated standard
deviations cover the errors actually seen. A single view pins depth far more weakly than the
in-plane position, and this is where it shows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..geometry import skew, transform_points
from ..optimize import twist_jacobian

__all__ = ["twist_covariance", "covariance", "point_standard_deviations", "fit_scale", "describe", "CHI2_MEDIAN"]

CHI2_MEDIAN = {"depth": 0.4549, "inplane": 0.6931}
"""Median of (error / sd)^2 for a calibrated sd: chi-square with 1 dof; with 2 dof, halved (the
in-plane sd is the RMS of a 2-D error)."""


def fit_scale(errors, sds, kind: str) -> float:
    """The factor that makes ``sds`` calibrated for ``errors`` (mm, same length): robust, by the median
    of (error / sd)^2 against its value for a calibrated Gaussian."""
    e = torch.as_tensor(errors, dtype=torch.float64)
    sd = torch.as_tensor(sds, dtype=torch.float64).clamp_min(1e-12)
    return float(((e / sd) ** 2).median() / CHI2_MEDIAN[kind]) ** 0.5


def twist_covariance(residual_fn, pose: Tensor, damping: float = 1e-9) -> Tensor:
    """``(6, 6)`` covariance of the left twist at ``pose`` (4, 4), rotation (rad) then translation (mm)."""
    r, J = twist_jacobian(residual_fn, pose.to(torch.float64)[None])
    return covariance(r[0], J[0], damping)


def covariance(r: Tensor, J: Tensor, damping: float = 1e-9) -> Tensor:
    """``(6, 6)`` Gauss-Newton covariance from a residual ``(M,)`` and its twist Jacobian ``(M, 6)``.

    Several views' residuals and Jacobians concatenated give the joint covariance (a common
    scale of the stacked residual cancels between the variance and ``(J^T J)^-1``)."""
    r, J = r.double(), J.double()
    dof = max(1, r.numel() - 6)
    variance = float(r.pow(2).sum()) / dof
    JtJ = J.T @ J
    JtJ = JtJ + damping * JtJ.diagonal().mean() * torch.eye(6, dtype=JtJ.dtype, device=JtJ.device)
    return variance * torch.linalg.inv(JtJ)


def point_standard_deviations(pose: Tensor, covariance: Tensor, point_world: Tensor, scale: dict | None = None,
                              camera_from_reference: Tensor | None = None) -> dict:
    """Standard deviations (mm) of ``point_world`` (3,) in the camera frame: along the central ray
    (camera z, depth) and in the detector plane (camera x and y together, the RMS of the 2-D
    error), each times its ``scale`` (``{"depth": a, "inplane": b}``, from the calibration).
    ``covariance`` is of ``pose``'s left twist; ``camera_from_reference`` (4, 4) gives the figures
    in another view's camera frame instead (that view's ray and detector plane).

    A left twist moves a camera point ``y`` by ``-[y]x omega + v``, so ``Cov(y) = A Sigma A^T``
    with ``A = [-[y]x, I]``.
    """
    y = transform_points(pose.to(torch.float64), point_world.to(torch.float64)[None])[0]
    A = torch.cat([-skew(y), torch.eye(3, dtype=torch.float64, device=y.device)], dim=-1)
    C = A @ covariance.to(torch.float64) @ A.T
    if camera_from_reference is not None:
        R = camera_from_reference[:3, :3].to(C)
        C = R @ C @ R.T
    scale = scale or {}
    return {"depth_sd_mm": float(scale.get("depth", 1.0) * C[2, 2].clamp_min(0).sqrt()),
            "inplane_sd_mm": float(scale.get("inplane", 1.0) * (C[0, 0] + C[1, 1]).clamp_min(0).sqrt())}


def describe(uncertainty: dict) -> str:
    """One line for a person: the result's ``uncertainty`` (as :class:`RegistrationResult` holds it)."""
    return (f"uncertainty at the {uncertainty['point']} (1 sd): {uncertainty['depth_sd_mm']:.2f} mm along the "
            f"central ray, {uncertainty['inplane_sd_mm']:.2f} mm in the detector plane"
            + ("" if uncertainty["calibrated"] else " (raw: not calibrated on held-out cases, too small)"))
