"""The C-arm camera of the conventions: a pinhole at the X-ray source, the detector at z = sdd.

Camera frame: origin at the source, +z towards the detector, +x along image columns (u),
+y along image rows (v). Pixel (u, v) centre is at ``((u - cu) du, (v - cv) dv, sdd)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from .errors import InputError
from .geometry import make_pose, transform_points

__all__ = ["Camera", "project", "canonical_ap_pose"]


@dataclass(frozen=True)
class Camera:
    """Intrinsics of one X-ray view.

    sdd: source-to-detector distance (mm); pixel_spacing: (du, dv) mm along columns and rows;
    principal_point: (cu, cv) in pixels, the foot of the perpendicular from the source;
    image_size: (rows, cols).
    """

    sdd: float
    pixel_spacing: tuple[float, float]
    principal_point: tuple[float, float]
    image_size: tuple[int, int]

    def __post_init__(self):
        object.__setattr__(self, "sdd", float(self.sdd))
        object.__setattr__(self, "pixel_spacing", tuple(float(x) for x in self.pixel_spacing))
        object.__setattr__(self, "principal_point", tuple(float(x) for x in self.principal_point))
        object.__setattr__(self, "image_size", tuple(int(x) for x in self.image_size))

    @property
    def rows(self) -> int:
        return self.image_size[0]

    @property
    def cols(self) -> int:
        return self.image_size[1]

    def validate(self, source=None) -> "Camera":
        """Raise :class:`InputError` for a geometry no C-arm can have; return self."""
        if not (math.isfinite(self.sdd) and self.sdd > 0):
            raise InputError(source, f"source-to-detector distance is {self.sdd}", "a positive number of mm")
        if len(self.pixel_spacing) != 2 or not all(math.isfinite(s) and s > 0 for s in self.pixel_spacing):
            raise InputError(source, f"pixel spacing is {self.pixel_spacing}", "two positive numbers of mm")
        if len(self.image_size) != 2 or min(self.image_size) < 2:
            raise InputError(source, f"image size is {self.image_size}", "[rows, cols], each at least 2")
        cu, cv = self.principal_point
        rows, cols = self.image_size
        if not (math.isfinite(cu) and math.isfinite(cv)) or not (
            -cols <= cu <= 2 * cols and -rows <= cv <= 2 * rows
        ):
            raise InputError(
                source,
                f"principal point ({cu}, {cv}) px lies far outside the {cols} x {rows} image",
                "a point within one image width/height of the detector",
            )
        return self

    @property
    def intrinsics(self) -> Tensor:
        """K = [[sdd/du, 0, cu], [0, sdd/dv, cv], [0, 0, 1]], float64."""
        du, dv = self.pixel_spacing
        cu, cv = self.principal_point
        return torch.tensor(
            [[self.sdd / du, 0.0, cu], [0.0, self.sdd / dv, cv], [0.0, 0.0, 1.0]], dtype=torch.float64
        )

    def resized(self, rows: int, cols: int) -> "Camera":
        """The same detector sampled on a ``rows x cols`` grid (pixel edges kept, centres moved)."""
        sy, sx = self.rows / rows, self.cols / cols
        cu, cv = self.principal_point
        du, dv = self.pixel_spacing
        return replace(
            self,
            pixel_spacing=(du * sx, dv * sy),
            principal_point=((cu + 0.5) / sx - 0.5, (cv + 0.5) / sy - 0.5),
            image_size=(rows, cols),
        )

    def cropped(self, top: int, left: int, rows: int, cols: int) -> "Camera":
        """The camera of the sub-image ``[top:top+rows, left:left+cols]``."""
        cu, cv = self.principal_point
        return replace(self, principal_point=(cu - left, cv - top), image_size=(rows, cols))

    def detector_points(self, dtype=torch.float32, device=None) -> Tensor:
        """Pixel centres in the camera frame, ``(rows, cols, 3)`` mm."""
        du, dv = self.pixel_spacing
        cu, cv = self.principal_point
        u = (torch.arange(self.cols, dtype=torch.float64) - cu) * du
        v = (torch.arange(self.rows, dtype=torch.float64) - cv) * dv
        y, x = torch.meshgrid(v, u, indexing="ij")
        z = torch.full_like(x, self.sdd)
        return torch.stack([x, y, z], dim=-1).to(dtype=dtype, device=device)

    def to_json(self) -> dict:
        d = asdict(self)
        d["pixel_spacing"] = list(self.pixel_spacing)
        d["principal_point"] = list(self.principal_point)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_json(cls, d: dict, source=None) -> "Camera":
        """Build from a ``geometry.json`` dictionary; missing keys are an :class:`InputError`."""
        missing = [k for k in ("sdd", "pixel_spacing", "principal_point", "image_size") if k not in d]
        if missing:
            raise InputError(source, f"missing {', '.join(missing)}",
                             '{"sdd", "pixel_spacing", "principal_point", "image_size"}')
        try:
            cam = cls(d["sdd"], tuple(d["pixel_spacing"]), tuple(d["principal_point"]), tuple(d["image_size"]))
        except (TypeError, ValueError) as e:
            raise InputError(source, f"malformed geometry ({e})", "numbers in mm and pixels") from None
        return cam.validate(source)

    def save(self, path: str | Path) -> None:
        from .io.files import write_json

        write_json(path, self.to_json(), overwrite=True)

    @classmethod
    def load(cls, path: str | Path) -> "Camera":
        from .io.files import read_json

        return cls.from_json(read_json(path, "a geometry.json beside the X-ray"), path)


def project(points_world: Tensor, camera_from_world: Tensor, camera: Camera) -> Tensor:
    """Pixel coordinates (u, v) of world points: ``(..., N, 3), (..., 4, 4) -> (..., N, 2)``."""
    Y = transform_points(camera_from_world, points_world)
    K = camera.intrinsics.to(Y)
    uvw = Y @ K.T
    return uvw[..., :2] / uvw[..., 2:3]


ISOCENTRE_FRACTION = 0.8
"""Source-to-isocentre distance as a share of sdd in the conventions' canonical view."""


def canonical_ap_pose(isocentre: Tensor, sdd: float) -> Tensor:
    """The conventions' canonical AP view of a world point ``(3,) -> (4, 4)`` float64.

    Source anterior of the isocentre at ``ISOCENTRE_FRACTION * sdd``; camera +x to the patient's left (-R),
    +y inferior (-S), +z posterior (-A).
    """
    iso = torch.as_tensor(isocentre, dtype=torch.float64)
    R = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
    source = iso + torch.tensor([0.0, ISOCENTRE_FRACTION * sdd, 0.0], dtype=torch.float64)
    return make_pose(R, -(R @ source))
