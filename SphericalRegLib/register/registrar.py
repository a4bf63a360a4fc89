"""The Registrar: a model and its CT prepared once, then any number of X-rays registered with it."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from ..camera import Camera, project
from ..confidence import predict
from ..geometry import transform_points
from ..intensity import standardise
from ..model import ModelBundle
from ..quality import model_quality
from ..volume import Volume, hu_to_mu
from .context import RegistrationContext
from .options import RegisterOptions
from .pyramid import XrayPyramid
from .records import RegistrationResult, StageRecord
from .uncertainty import point_standard_deviations, twist_covariance
from .stages import initial_pose, intensity_refinement, keep_or_discard, learnt_residual, learnt_similarity, \
    translation_search

__all__ = ["Registrar"]


class Registrar:
    """A model and its CT prepared once; :meth:`register` then handles any number of X-rays.

    model: from :func:`~SphericalRegLib.model.load_model` (its device is where the work runs;
    results come back on the CPU); ct: the CT in HU; calibration: the model's confidence
    calibration (:func:`~SphericalRegLib.confidence.load_calibration`), or None.
    """

    def __init__(self, model: ModelBundle, ct: Volume, options: RegisterOptions | None = None,
                 calibration: dict | None = None):
        self.model = model
        self.ct = ct
        self.options = options or RegisterOptions()
        self.calibration = calibration
        self.device = model.mu.device
        quality = model_quality(model.history)
        self.warnings = list(quality["warnings"]) if quality else []
        self.attenuation: dict[float, Volume] = {}
        for level in (self.options.search_level, *self.options.refine_levels):
            if level.spacing_mm not in self.attenuation:
                coarse = ct.with_spacing(level.spacing_mm)
                mu = hu_to_mu(coarse.data.to(self.device))[None].float()
                self.attenuation[level.spacing_mm] = Volume(mu, coarse.ijk_to_ras)

    def context(self, image: Tensor, camera: Camera, *, photometric: str = "MONOCHROME2",
                line_integrals: bool = False, progress=None, cancel=None) -> RegistrationContext:
        """The shared state of one registration of ``image`` (rows, cols) seen by ``camera``."""
        xray = XrayPyramid(image, camera, photometric, line_integrals, self.device)
        return RegistrationContext(self.model, self.options, self.attenuation, xray,
                                   progress or (lambda stage, fraction: None), cancel)

    def register(self, image: Tensor, camera: Camera, init: Tensor | None = None, *,
                 photometric: str = "MONOCHROME2", line_integrals: bool = False,
                 progress=None, cancel=None) -> RegistrationResult:
        """Register ``image`` (rows, cols) seen by ``camera``.

        ``image`` holds detector intensities (air bright; MONOCHROME1 inverted) unless
        ``line_integrals`` says it already holds -log(I/I0); ``init`` (4, 4) skips the regressor.
        ``progress(stage, fraction)`` is called as work advances; ``cancel`` is anything with
        ``is_set()`` (raises :class:`~SphericalRegLib.errors.Cancelled`).
        """
        opt, t0 = self.options, time.perf_counter()
        ctx = self.context(image, camera, photometric=photometric, line_integrals=line_integrals,
                           progress=progress, cancel=cancel)
        stages = {"initial": initial_pose(ctx, init)}
        pose, search = stages["initial"].pose, None
        if opt.optimizer != "none":
            stages["similarity"] = learnt_similarity(ctx, pose)
            pose, search = keep_or_discard(ctx, stages["initial"], stages["similarity"])
        if opt.searches and search is None:
            search = translation_search(ctx, {"initial": pose})
        if search is not None:
            stages["search"] = search
            pose = search.pose
        if opt.refine:
            stages["intensity"] = intensity_refinement(ctx, pose)
            pose = stages["intensity"].pose
            failed = stages["intensity"].diverged
        else:  # nothing after the learnt stage could have recovered from its divergence
            failed = "similarity" in stages and stages["similarity"].diverged
        return self._result(ctx, pose, stages, failed, time.perf_counter() - t0)

    def _result(self, ctx: RegistrationContext, pose: Tensor, stages: dict[str, StageRecord], failed: bool,
                seconds_so_far: float) -> RegistrationResult:
        """The final images, NCC, checks and confidence of ``pose`` (4, 4)."""
        t0 = time.perf_counter()
        level = self.options.refine_levels[-1]
        x, camera, _ = ctx.xray.level(level.image_size)
        mu = self.attenuation[level.spacing_mm]
        T = pose.to(self.device, torch.float64)[None]
        with torch.no_grad():
            drr = ctx.renderer(camera, mu)(mu.data, T)[0, 0]
            final_ncc = float((standardise(drr[None, None], (1, 2, 3)) * standardise(x, (1, 2, 3))).mean())
            similarity = (stages["similarity"].cost[-1] if "similarity" in stages
                          else float(0.5 * learnt_residual(ctx)(T).pow(2).sum()))
        diverged = failed or not torch.isfinite(pose).all() or not self._plausible(pose, camera)
        covariance, uncertainty = None, None
        if "intensity" in stages and not diverged:
            covariance = twist_covariance(ctx.intensity_residual(level), T[0]).cpu()
            scale = (self.calibration or {}).get("uncertainty_scale")
            uncertainty = {**point_standard_deviations(pose, covariance, self.ct.centre, scale),
                           "point": "CT centre", "calibrated": scale is not None}
        return RegistrationResult(
            camera_from_world=pose, seconds=seconds_so_far + time.perf_counter() - t0, similarity=similarity,
            iterations=sum(s.iterations for s in stages.values()),
            confidence=self._confidence(final_ncc, similarity, diverged), diverged=bool(diverged), camera=camera,
            drr=drr.cpu(), xray=x[0, 0].cpu(), final_ncc=final_ncc, stages=stages, warnings=list(self.warnings),
            covariance=covariance, uncertainty=uncertainty)

    def _plausible(self, pose: Tensor, camera: Camera) -> bool:
        """The CT centre must lie in front of the source and project onto the detector."""
        centre = self.ct.centre[None].to(pose)
        c = transform_points(pose, centre)[0]
        if not (0 < float(c[2]) < camera.sdd):
            return False
        u, v = project(centre, pose, camera)[0].tolist()
        return -0.5 * camera.cols <= u <= 1.5 * camera.cols and -0.5 * camera.rows <= v <= 1.5 * camera.rows

    def _confidence(self, final_ncc: float, cost: float, diverged: bool) -> float | None:
        """Platt-scaled probability of a sub-millimetre result, from the model's calibration."""
        if diverged:
            return 0.0
        if not self.calibration:
            return None
        return predict(self.calibration, final_ncc, cost)
