"""A CT (or feature) volume with its voxel-to-world map, and the HU-to-attenuation model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Volume", "hu_to_mu", "MU_WATER"]

MU_WATER = 0.02
"""Linear attenuation of water in 1/mm near 60-70 keV, a typical effective C-arm energy."""


@dataclass
class Volume:
    """Voxel data indexed ``[i, j, k]`` (or ``[c, i, j, k]``) and ``ijk_to_ras`` (4, 4) float64 mm.

    The world frame is RAS millimetres, as 3D Slicer shows it; no recentring ever happens here.
    """

    data: Tensor
    ijk_to_ras: Tensor

    def __post_init__(self):
        self.ijk_to_ras = torch.as_tensor(self.ijk_to_ras, dtype=torch.float64)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[-3:])

    @property
    def spacing(self) -> Tensor:
        """Voxel size along i, j, k in mm, ``(3,)``."""
        return self.ijk_to_ras[:3, :3].norm(dim=0)

    @property
    def centre(self) -> Tensor:
        """World position of the centre of the voxel grid, ``(3,)`` mm: the default isocentre."""
        mid = (torch.tensor(self.shape, dtype=torch.float64) - 1) / 2
        return self.ijk_to_ras[:3, :3] @ mid + self.ijk_to_ras[:3, 3]

    @property
    def radius(self) -> float:
        """Half the diagonal of the volume's extent in mm: the characteristic length of the anatomy."""
        extent = self.spacing * torch.tensor(self.shape, dtype=torch.float64)
        return float(extent.norm() / 2)

    def corners(self) -> Tensor:
        """World positions of the 8 corner voxel centres, ``(8, 3)``."""
        n = torch.tensor(self.shape, dtype=torch.float64) - 1
        ijk = torch.cartesian_prod(*[torch.tensor([0.0, float(s)], dtype=torch.float64) for s in n])
        return ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def resampled(self, shape: tuple[int, int, int]) -> "Volume":
        """Trilinear resampling onto a ``shape`` grid covering the same extent (voxel edges kept)."""
        data = self.data if self.data.dim() == 4 else self.data[None]
        out = F.interpolate(data[None].float(), size=tuple(shape), mode="trilinear", align_corners=False)[0]
        scale = torch.tensor(self.shape, dtype=torch.float64) / torch.tensor(shape, dtype=torch.float64)
        A = self.ijk_to_ras.clone()
        # new voxel n sits at old index (n + 0.5) * s - 0.5
        A[:3, 3] = A[:3, :3] @ (0.5 * scale - 0.5) + A[:3, 3]
        A[:3, :3] = A[:3, :3] * scale
        return Volume(out if self.data.dim() == 4 else out[0], A)

    def with_spacing(self, spacing_mm: float, max_size: int = 256) -> "Volume":
        """Resampled to roughly isotropic ``spacing_mm`` voxels (never finer than the input)."""
        extent = self.spacing * torch.tensor(self.shape, dtype=torch.float64)
        shape = [int(min(max_size, max(2, round(float(e) / spacing_mm)))) for e in extent]
        shape = [min(s, n) for s, n in zip(shape, self.shape)]
        return self.resampled(tuple(shape))


def hu_to_mu(hu: Tensor, bone_scale: float | Tensor = 1.0, bone_threshold: float = 150.0) -> Tensor:
    """Hounsfield units to linear attenuation (1/mm): ``mu_w (1 + HU/1000)``, air and below at 0.

    ``bone_scale`` multiplies the attenuation above ``bone_threshold`` HU beyond that of water-like
    tissue; training varies it so the learnt similarity does not hinge on one bone contrast.
    """
    mu = MU_WATER * (1 + hu / 1000).clamp_min(0)
    if isinstance(bone_scale, Tensor) or bone_scale != 1.0:
        excess = (hu - bone_threshold).clamp_min(0) / 1000 * MU_WATER
        mu = mu + (torch.as_tensor(bone_scale, dtype=mu.dtype) - 1) * excess
    return mu
