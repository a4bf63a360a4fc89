"""What every stage of one registration shares: the prepared CT, the X-rays, the options and the
caller's progress and cancel hooks.

With several views, every residual is the views' residuals stacked, each at its own pose
``camera_from_reference @ T``, and scaled by ``1 / sqrt(V)`` so that ``0.5 |r|^2`` stays the
mean of the views' costs: one LM step then moves the single pose ``T`` to suit every view."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..camera import Camera
from ..distortion import undistort
from ..errors import Cancelled
from ..model import ModelBundle
from ..render import Renderer, default_n_samples
from ..volume import Volume
from .options import IntensityLevel, RegisterOptions
from .pyramid import XrayPyramid

__all__ = ["RegistrationContext"]


@dataclass
class RegistrationContext:
    """model: the trained networks and the CT's feature volume; options: how to register;
    attenuation: the CT's attenuation per voxel size (mm) of the intensity levels, ``(1, I, J, K)``
    each; pyramids: each view's X-ray pyramid, view 0 first; camera_from_reference: ``(V, 4, 4)``
    from view 0's camera to each view's (identity first); progress(stage, fraction); cancel:
    anything with ``is_set()``."""

    model: ModelBundle
    options: RegisterOptions
    attenuation: dict[float, Volume]
    pyramids: list[XrayPyramid]
    camera_from_reference: Tensor
    progress: Callable[[str, float], None]
    cancel: object | None = None
    noise_scale: float = 1.0
    """How much larger the pose errors are than the raw J^T J says (the calibration's in-plane factor)."""
    distortion: Tensor | None = None
    """The X-rays' image-intensifier distortion, ``(2,)`` for every view or ``(V, 2)`` one per view
    (:mod:`~SphericalRegLib.distortion`), undone before every intensity level; None: the frames are
    taken as undistorted."""

    @property
    def device(self) -> torch.device:
        return self.model.mu.device

    @property
    def xray(self) -> XrayPyramid:
        """View 0's X-ray: the reference view."""
        return self.pyramids[0]

    @property
    def n_views(self) -> int:
        return len(self.pyramids)

    @property
    def bounds(self) -> dict:
        """The trust region every optimiser keeps to (radians and mm from its start)."""
        return dict(max_rotation=math.radians(self.options.max_rotation_deg),
                    max_translation=self.options.max_translation_mm)

    def renderer(self, camera: Camera, volume: Volume, n_samples: int | None = None) -> Renderer:
        return Renderer(camera, volume.ijk_to_ras, volume.shape[-3:], n_samples).to(self.device)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("registration cancelled")

    def iteration_callback(self, stage: str, total: int):
        """An optimiser callback that reports progress and stops when the caller cancels."""
        def callback(k, entry):
            self.progress(stage, min(1.0, k / max(1, total)))
            return self.cancel is not None and self.cancel.is_set()
        return callback

    def xray_level(self, view: int, size: int) -> tuple[Tensor, Camera, Tensor]:
        """View ``view``'s ``pyramid.level(size)``, undistorted by :attr:`distortion` when there is one."""
        x, camera, valid = self.pyramids[view].level(size)
        if self.distortion is None:
            return x, camera, valid
        d = self.distortion.to(x.device)
        d = (d[view] if d.dim() == 2 else d)[None]
        return undistort(x, d), camera, undistort(valid[None, None].to(x.dtype), d)[0, 0] > 0.999

    def intensity_residual(self, level: IntensityLevel, form: str | None = None, views=None):
        """``pose (B, 4, 4) -> residual (B, M)`` of line-integral DRRs against the X-rays at
        ``level``, stacked over ``views`` (indices; default all).

        Only the X-ray's valid pixels count (the pyramid's mask: inside the exposed field, not
        clipped or dead), less metal that is not in the CT: pixels far brighter than anything the
        DRR at that pose shows (:func:`~.residuals.bright_outliers`) and, with the level's
        ``metal_width_mm``, pixels that stand out locally more than the DRR's anatomy does
        (:func:`~.residuals.local_outliers`; both in :func:`~.residuals.metal_outliers`). Masked entries are 0, so the length stays fixed. With
        nothing masked the residual is the unmasked one to the bit."""
        from .residuals import metal_outliers, xray_excess

        mu = self.attenuation[level.spacing_mm]
        residual = level.residual(form)

        def one(view: int):
            x, camera, valid = self.xray_level(view, level.image_size)
            render = self.renderer(camera, mu, max(2, round(default_n_samples(mu.shape[-3:]) * level.ray_samples)))
            valid = valid.to(x.device)[None, None]
            metal_px = round(level.metal_width_mm / min(camera.pixel_spacing))
            excess = xray_excess(x, valid, metal_px) if metal_px >= 2 else None

            def r(T):
                drr = render(mu.data, T)
                xs = x.expand(len(T), -1, -1, -1)
                keep = valid & ~metal_outliers(x, drr, valid, metal_px, excess)  # one X-ray for the batch of poses
                return residual(xs, drr, keep)
            return r

        return self.over_views(one, views)

    def over_views(self, one, views=None):
        """View 0's residual ``pose (B, 4, 4) -> (B, M)`` from ``one(view index)``, the residual of
        one view at that view's own pose, for each of ``views`` (indices; default all), stacked."""
        views = list(range(self.n_views) if views is None else views)
        residuals = [one(k) for k in views]
        C = self.camera_from_reference[views].to(self.device, torch.float64)
        scale = 1.0 / math.sqrt(len(views))
        return lambda T: scale * torch.cat([r(C[k] @ T) for k, r in enumerate(residuals)], dim=-1)

    @torch.no_grad()
    def coarse_cost(self, poses: Tensor, chunk: int = 64, views=None) -> Tensor:
        """Mean ``1 - NCC`` (patches and whole, intensities and edges) of tiny DRRs at ``poses``
        ``(B, 4, 4) -> (B,)`` over ``views`` (default all): the independent check that decides
        between candidate poses."""
        residual = self.intensity_residual(self.options.search_level, "ncc", views)
        return torch.cat([0.5 * residual(part).pow(2).sum(-1) for part in poses.split(chunk)])
