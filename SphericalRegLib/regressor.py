"""Pose initialisation: a CNN that reads the X-ray and predicts ``camera_from_world``.

The network predicts an offset ``D`` relative to a reference pose ``T_ref`` (typically the
canonical AP view), ``camera_from_world = D @ T_ref``. ``D`` is a rigid motion in the camera frame
about the isocentre's camera position ``p``, ``Y -> R (Y - p) + p + length * t``, exactly the
offsets of :func:`poses.camera_frame_offset`; ``R`` comes from Zhou et al.'s continuous 6D
representation (Gram-Schmidt on two predicted columns) and ``t`` is in units of ``length`` so
every output is O(1). The head starts at zero, i.e. at ``T_ref``.
"""

from __future__ import annotations

import roma
import timm
import torch
from torch import Tensor, nn

from .errors import InputError
from .geometry import geodesic_se3, make_pose, transform_points

__all__ = ["PoseRegressor", "pose_loss"]


class PoseRegressor(nn.Module):
    """X-ray line integrals ``(B, 1, H, W)`` -> ``camera_from_world (B, 4, 4)`` float64.

    ``reference_pose`` (4, 4) camera_from_world; ``isocentre`` (3,) world mm, the point the
    offsets turn about; ``length`` mm, the translation unit (e.g. the CT's radius).
    """

    def __init__(self, reference_pose: Tensor, isocentre: Tensor, length: float, backbone: str = "resnet18"):
        super().__init__()
        reference_pose = torch.as_tensor(reference_pose, dtype=torch.float64)
        isocentre = torch.as_tensor(isocentre, dtype=torch.float64)
        if reference_pose.shape != (4, 4):
            raise InputError("reference_pose", f"has shape {tuple(reference_pose.shape)}", "a (4, 4) camera_from_world")
        if isocentre.shape != (3,):
            raise InputError("isocentre", f"has shape {tuple(isocentre.shape)}", "a (3,) world point in mm")
        if not length > 0:
            raise InputError("length", f"is {length}", "a positive length in mm")
        self.register_buffer("reference_pose", reference_pose)
        self.register_buffer("pivot", transform_points(reference_pose, isocentre[None])[0])
        self.length = float(length)
        self.backbone = timm.create_model(backbone, pretrained=False, in_chans=1, num_classes=0)
        self.head = nn.Linear(self.backbone.num_features, 9)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("identity_6d", torch.tensor([1.0, 0, 0, 0, 1, 0]))

    def offset(self, x: Tensor) -> Tensor:
        """The predicted camera-frame offset ``D (B, 4, 4)`` float64."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise InputError("xray", f"has shape {tuple(x.shape)}", "(B, 1, H, W) line integrals")
        x = x.to(self.head.weight.dtype)
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True)
        out = self.head(self.backbone((x - mean) / (std + 1e-6))).double()
        six = out[:, :6] + self.identity_6d.double()
        R = roma.special_gramschmidt(six.reshape(-1, 2, 3).transpose(-1, -2), epsilon=1e-8)
        t = self.pivot - (R @ self.pivot[:, None])[..., 0] + self.length * out[:, 6:]
        return make_pose(R, t)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 1, H, W) -> (B, 4, 4)`` camera_from_world = ``D @ T_ref``."""
        return self.offset(x) @ self.reference_pose


def pose_loss(pred: Tensor, truth: Tensor, length: float) -> Tensor:
    """Mean left-invariant SE(3) geodesic (:func:`geometry.geodesic_se3`) in units of ``length``.

    ``(B, 4, 4), (B, 4, 4) -> ()``; dividing by ``length`` keeps the loss O(1) for any CT size.
    """
    return (geodesic_se3(pred, truth.to(pred.dtype), length) / length).mean()
