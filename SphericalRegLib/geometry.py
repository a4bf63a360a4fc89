"""Batched, differentiable SE(3) and the SO(4) embedding of SE(3).

Conventions (see ``docs/conventions.md`` / the shared spec):

* A pose is a ``(..., 4, 4)`` rigid matrix ``camera_from_world`` in millimetres.
* A twist ``xi`` is ``(..., 6)``: rotation vector first (radians), then the
  translational part (mm), i.e. ``xi = (omega, v)`` and ``exp(xi^) = [[exp(omega^), V v], [0, 1]]``.
* Increments are left-multiplied, ``T <- exp(xi^) T``: ``xi`` lives in the camera frame,
  so a rotation twist turns the C-arm about its own source, and a translational twist moves
  the world in camera millimetres.

Every function is twice differentiable away from the documented singularities, because the
similarity training differentiates through the gradient of a DRR with respect to ``xi``.
"""

from __future__ import annotations

import math

import roma
import torch
from torch import Tensor

__all__ = [
    "skew",
    "so3_exp",
    "so3_log",
    "se3_exp",
    "se3_log",
    "se3_inverse",
    "make_pose",
    "perturb_left",
    "rotation_angle",
    "geodesic_se3",
    "double_geodesic",
    "so4_embed",
    "so4_geodesic",
    "geodesic_so4",
    "transform_points",
]

_SMALL = 1e-4


def skew(w: Tensor) -> Tensor:
    """``(..., 3) -> (..., 3, 3)`` cross-product matrix, ``skew(w) @ x == w x x``."""
    zero = torch.zeros_like(w[..., 0])
    wx, wy, wz = w.unbind(-1)
    return torch.stack(
        [zero, -wz, wy, wz, zero, -wx, -wy, wx, zero], dim=-1
    ).reshape(*w.shape[:-1], 3, 3)


def _theta(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Angle, its square, and a mask of small angles; the square avoids sqrt'(0) = inf."""
    theta2 = (w * w).sum(-1)
    small = theta2 < _SMALL**2
    theta = torch.where(small, torch.ones_like(theta2), theta2).sqrt()
    return theta, theta2, small


def _so3_coefficients(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rodrigues coefficients sin(t)/t, (1-cos t)/t^2, (t-sin t)/t^3 with Taylor series near 0."""
    theta, theta2, small = _theta(w)
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta**2)
    c = torch.where(small, 1 / 6 - theta2 / 120, (theta - torch.sin(theta)) / theta**3)
    return a, b, c


def so3_exp(w: Tensor) -> Tensor:
    """Rotation vector ``(..., 3)`` to rotation matrix ``(..., 3, 3)``."""
    a, b, _ = _so3_coefficients(w)
    W = skew(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(W)
    return eye + a[..., None, None] * W + b[..., None, None] * (W @ W)


def so3_log(R: Tensor) -> Tensor:
    """Rotation matrix ``(..., 3, 3)`` to rotation vector ``(..., 3)``; via quaternions, so exact at pi."""
    return roma.rotmat_to_rotvec(R)


def _left_jacobian(w: Tensor) -> Tensor:
    """V(w) with ``exp([w, v]) = [[R, V v], [0, 1]]``, ``(..., 3) -> (..., 3, 3)``."""
    _, b, c = _so3_coefficients(w)
    W = skew(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(W)
    return eye + b[..., None, None] * W + c[..., None, None] * (W @ W)


def _left_jacobian_inverse(w: Tensor) -> Tensor:
    theta, theta2, small = _theta(w)
    half = theta / 2
    # (1 - (t/2) cot(t/2)) / t^2, finite up to and including t = pi.
    d = torch.where(
        small,
        1 / 12 + theta2 / 720,
        (1 - half * torch.cos(half) / torch.sin(half).clamp_min(1e-12)) / theta**2,
    )
    W = skew(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(W)
    return eye - 0.5 * W + d[..., None, None] * (W @ W)


def make_pose(R: Tensor, t: Tensor) -> Tensor:
    """``(..., 3, 3), (..., 3) -> (..., 4, 4)`` rigid matrix."""
    top = torch.cat([R, t[..., None]], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], dim=-2)


def se3_exp(xi: Tensor) -> Tensor:
    """Twist ``(..., 6)`` = (rotation vector, translation part) to ``(..., 4, 4)``."""
    w, v = xi[..., :3], xi[..., 3:]
    return make_pose(so3_exp(w), (_left_jacobian(w) @ v[..., None])[..., 0])


def se3_log(T: Tensor) -> Tensor:
    """``(..., 4, 4) -> (..., 6)``, the inverse of :func:`se3_exp` for rotation angles below pi."""
    w = so3_log(T[..., :3, :3])
    v = (_left_jacobian_inverse(w) @ T[..., :3, 3:4])[..., 0]
    return torch.cat([w, v], dim=-1)


def se3_inverse(T: Tensor) -> Tensor:
    """Rigid inverse without a general matrix inversion."""
    Rt = T[..., :3, :3].transpose(-1, -2)
    return make_pose(Rt, -(Rt @ T[..., :3, 3:4])[..., 0])


def perturb_left(xi: Tensor, T: Tensor) -> Tensor:
    """``exp(xi^) T``: the increment every optimiser and every pose gradient in SphericalReg uses."""
    return se3_exp(xi) @ T


def transform_points(T: Tensor, points: Tensor) -> Tensor:
    """Apply ``(..., 4, 4)`` to points ``(..., N, 3)``."""
    return points @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


def rotation_angle(R1: Tensor, R2: Tensor) -> Tensor:
    """Geodesic angle (radians) between rotations ``(..., 3, 3)``."""
    return so3_log(R1.transpose(-1, -2) @ R2).norm(dim=-1)


def geodesic_se3(T1: Tensor, T2: Tensor, length: float) -> Tensor:
    """Left-invariant geodesic distance in mm: ``|| diag(L, L, L, 1, 1, 1) log(T1^-1 T2) ||``.

    ``length`` (mm) converts radians into millimetres; the characteristic length of the
    anatomy (for example the CT's bounding radius) weighs rotation and translation alike.
    """
    xi = se3_log(se3_inverse(T1) @ T2)
    theta2 = (xi[..., :3] ** 2).sum(-1)
    return (length**2 * theta2 + (xi[..., 3:] ** 2).sum(-1)).clamp_min(1e-18).sqrt()


def double_geodesic(T1: Tensor, T2: Tensor, length: float) -> Tensor:
    """DiffPose's double geodesic in mm: ``sqrt((L * angle)^2 + |c1 - c2|^2)``.

    As in DiffPose it measures the camera-to-world poses: ``c`` is the X-ray source position in
    the world, ``angle`` the rotation between the two C-arm orientations.
    """
    angle = rotation_angle(T1[..., :3, :3], T2[..., :3, :3])
    c1 = se3_inverse(T1)[..., :3, 3]
    c2 = se3_inverse(T2)[..., :3, 3]
    return ((length * angle) ** 2 + ((c1 - c2) ** 2).sum(-1)).clamp_min(1e-18).sqrt()


def so4_embed(T: Tensor, length: float) -> Tensor:
    """Etzel and McCarthy's embedding of SE(3) in SO(4): the polar factor of ``[[R, t/L], [0, 1]]``.

    ``(..., 4, 4) -> (..., 4, 4)``. The SO(4) metric is bi-invariant, which SE(3) has none of;
    for ``|t| << L`` a translation becomes a rotation by about ``|t| / (2 L)``.
    """
    top = torch.cat([T[..., :3, :3], T[..., :3, 3:] / length], dim=-1)
    M = torch.cat([top, T[..., 3:, :]], dim=-2)
    return roma.special_procrustes(M)


def _isoclinic_basis(dtype, device) -> Tensor:
    """Sixteen 4x4 matrices ``B_ij = L(e_i) R(e_j)^T`` (left and right quaternion products).

    They are orthogonal with squared norm 4, so the coefficients of Q in this basis form the
    associate matrix ``p q^T`` of its factorisation into left and right isoclinic rotations.
    """
    def left(q):
        a, b, c, d = q
        return torch.tensor([[a, -b, -c, -d], [b, a, -d, c], [c, d, a, -b], [d, -c, b, a]])

    def right(q):
        a, b, c, d = q
        return torch.tensor([[a, -b, -c, -d], [b, a, d, -c], [c, -d, a, b], [d, c, -b, a]])

    e = torch.eye(4)
    B = torch.stack([torch.stack([left(e[i]) @ right(e[j]).T for j in range(4)]) for i in range(4)])
    return B.to(dtype=dtype, device=device)


def so4_geodesic(A: Tensor, B: Tensor) -> Tensor:
    """Bi-invariant geodesic distance on SO(4), ``||log(A^T B)||_F / sqrt(2) = sqrt(phi1^2 + phi2^2)``.

    ``(..., 4, 4), (..., 4, 4) -> (...)`` in radians. The two plane angles come in closed form
    from the isoclinic factorisation ``Q = L(p) R(q)^T`` (angles ``a +- b`` where
    ``cos a = p0``, ``cos b = q0``), which avoids an eigendecomposition and its unstable gradient.
    """
    Q = A.transpose(-1, -2) @ B
    M = torch.einsum("ijab,...ab->...ij", _isoclinic_basis(Q.dtype, Q.device), Q) / 4
    eps = 1e-30
    # sin and cos of both half-angles from row/column blocks of p q^T; atan2 keeps small angles exact.
    cos_a = ((M[..., 0, :] ** 2).sum(-1) + eps).sqrt()
    sin_a = ((M[..., 1:, :] ** 2).sum((-1, -2)) + eps).sqrt()
    cos_b = ((M[..., :, 0] ** 2).sum(-1) + eps).sqrt()
    sin_b = ((M[..., :, 1:] ** 2).sum((-1, -2)) + eps).sqrt()
    cos_b = torch.where(M[..., 0, 0] < 0, -cos_b, cos_b)
    a = torch.atan2(sin_a, cos_a)
    b = torch.atan2(sin_b, cos_b)
    phi1 = a + b
    phi1 = torch.where(phi1 > math.pi, 2 * math.pi - phi1, phi1)
    phi2 = (a - b).abs()
    return (phi1**2 + phi2**2).clamp_min(1e-18).sqrt()


def geodesic_so4(T1: Tensor, T2: Tensor, length: float) -> Tensor:
    """SO(4) distance between two poses through :func:`so4_embed`, scaled by ``length`` into mm."""
    return length * so4_geodesic(so4_embed(T1, length), so4_embed(T2, length))
