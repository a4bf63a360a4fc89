"""The objective of patient-specific training: pose distances, the gradient target and the losses on it.

Every step simulates X-rays of the CT at ground-truth poses around the canonical AP view and
trains two things on them (:class:`SphericalRegLib.training.trainer.Trainer`):

* the similarity: at a moving pose ``T`` the network distance ``S`` between the X-ray and the
  DRR of the CT's feature volume is differentiated along a left twist, ``g = dS/dxi`` at
  ``exp(xi) T``, with ``create_graph=True``; the loss asks ``g`` to point where the gradient
  ``g*`` of the squared geodesic distance to the truth points, rotation and translation parts
  separately (Gao et al.; ``method-notes.md``). Its parameters (encoder and feature CNN) learn
  through this double backward.
* the regressor: X-ray -> pose, with its own geodesic pose loss.

The geodesic distances of the target are measured about the isocentre: both poses are written
as maps from the isocentre-centred world to the isocentre-centred camera frame (see
:func:`centred`), so that neither the scanner's RAS origin nor the source distance enters the
metric; ``length`` is the CT's bounding radius (:func:`SphericalRegLib.preparation.pose_length`).

This module is the maths alone, pure functions of pose tensors; the sampling and the networks
are the trainer's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ..geometry import geodesic_se3, geodesic_so4, make_pose, perturb_left, se3_inverse, se3_log

__all__ = ["METRICS", "centred", "depth_weight", "view_distance", "pose_distance", "target_gradient", "direction_loss", "twist_angles"]


def _translation(t: Tensor) -> Tensor:
    eye = torch.eye(3, dtype=t.dtype, device=t.device).expand(*t.shape[:-1], 3, 3)
    return make_pose(eye, t)


def centred(T: Tensor, isocentre: Tensor, depth: float) -> Tensor:
    """``(..., 4, 4)`` camera_from_world -> the same pose between the isocentre-centred world and
    the camera frame moved to the nominal isocentre ``(0, 0, depth)``: its rotation turns about
    the anatomy and its translation is the isocentre's displacement (zero at the canonical view)."""
    iso = torch.as_tensor(isocentre, dtype=T.dtype, device=T.device)
    p = torch.zeros(3, dtype=T.dtype, device=T.device)
    p[2] = depth
    return _translation(-p) @ T @ _translation(iso)


METRICS = ("se3", "so4", "view")


def depth_weight(length: float, depth: float) -> float:
    """How much one view shows of a shift along its central ray, relative to one across it.

    A shift ``dz`` towards the source magnifies the image by ``dz / depth``, which moves a point
    at in-plane radius ``r`` by ``r dz / depth``; averaged over a ball of radius ``length``
    (``E[r^2] = 2/5 length^2``) that is ``sqrt(2/5) length / depth`` of an in-plane shift.
    """
    return (0.4**0.5) * length / depth


def view_distance(A: Tensor, B: Tensor, length: float, depth: float) -> Tensor:
    """Distance (mm) between centred poses ``(..., 4, 4)`` as one view sees it: the twist
    ``log(B A^-1)`` in the camera frame at the isocentre, rotation scaled by ``length`` and the
    displacement along the central ray by :func:`depth_weight`."""
    xi = se3_log(B @ se3_inverse(A))
    w = torch.tensor([length] * 3 + [1.0, 1.0, depth_weight(length, depth)], dtype=xi.dtype, device=xi.device)
    return ((xi * w) ** 2).sum(-1).clamp_min(1e-18).sqrt()


def pose_distance(T1: Tensor, T2: Tensor, metric: str, length: float, isocentre: Tensor, depth: float) -> Tensor:
    """Distance (mm) between poses ``(..., 4, 4)`` about the isocentre: the SE(3) or SO(4) geodesic,
    or ``view``, SE(3) with depth weighted by what a single projection shows (:func:`view_distance`)."""
    A, B = centred(T1, isocentre, depth), centred(T2, isocentre, depth)
    if metric == "se3":
        return geodesic_se3(A, B, length)
    if metric == "so4":
        return geodesic_so4(A, B, length)
    if metric == "view":
        return view_distance(A, B, length, depth)
    raise InputError("metric", f"is {metric!r}", " or ".join(METRICS))


def target_gradient(moving: Tensor, truth: Tensor, metric: str, length: float, isocentre: Tensor,
                    depth: float) -> Tensor:
    """``g* = d/dxi dist(exp(xi) moving, truth)^2`` at ``xi = 0``: ``(B, 4, 4) x 2 -> (B, 6)`` float64."""
    with torch.enable_grad():
        xi = torch.zeros(moving.shape[0], 6, dtype=torch.float64, device=moving.device, requires_grad=True)
        d = pose_distance(perturb_left(xi, moving.double()), truth.double(), metric, length, isocentre, depth)
        (g,) = torch.autograd.grad((d**2).sum(), xi)
    return g.detach()


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def direction_loss(g: Tensor, target: Tensor, weighted: bool = False) -> Tensor:
    """``|g_rot/|g_rot| - g*_rot/|g*_rot||^2 + |g_tr/|g_tr| - g*_tr/|g*_tr||^2`` per sample, ``(B, 6) x 2 -> (B,)``.

    ``weighted``: each sample's two terms times its own ``|g_rot|``, ``|g_tr|`` (detached, over the
    batch mean). The derivative of a unit vector scales like ``1 / |g|``, so unweighted, the samples
    whose gradient is nearly zero (saturated, far offsets) dominate every update
    (docs/learnability.md: 1-DOF gradients within 30 deg 44% -> 70%).
    """
    target = target.to(g)
    rot = (_unit(g[:, :3]) - _unit(target[:, :3])).pow(2).sum(-1)
    tr = (_unit(g[:, 3:]) - _unit(target[:, 3:])).pow(2).sum(-1)
    if weighted:
        w_rot, w_tr = g[:, :3].norm(dim=-1).detach(), g[:, 3:].norm(dim=-1).detach()
        rot = rot * w_rot / w_rot.mean().clamp_min(1e-12)
        tr = tr * w_tr / w_tr.mean().clamp_min(1e-12)
    return rot + tr


def twist_angles(g: Tensor, target: Tensor, length: float) -> dict[str, Tensor]:
    """Angles (degrees) between gradients ``(B, 6)``: the whole twist with rotation scaled into mm
    (``g_rot / length``, the gradient in coordinates ``(length * omega, v)``), and each part alone."""
    def angle(a, b):
        cos = (_unit(a) * _unit(b)).sum(-1).clamp(-1, 1)
        return torch.rad2deg(torch.acos(cos))

    g, target = g.double(), target.double()
    scale = torch.tensor([1 / length] * 3 + [1.0] * 3, dtype=torch.float64, device=g.device)
    return dict(twist=angle(g * scale, target * scale), rot=angle(g[:, :3], target[:, :3]),
                tr=angle(g[:, 3:], target[:, 3:]))
