"""The Registrar: a model and its CT prepared once, then any number of X-rays registered with it."""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from torch import Tensor

from ..alignment import DistortionFit, misaligned, residual_alignment, residual_shift_mm
from ..camera import Camera, project
from ..confidence import confidence_values, depth_bound, for_views, score
from ..distortion import NAMES as DISTORTION_NAMES
from ..geometry import rotation_angle, se3_inverse, transform_points
from ..intensity import standardise
from ..model import ModelBundle
from ..quality import LEARNT_STAGE_SHARE, model_quality
from ..optimize import twist_jacobian
from ..views import IDENTITY, View, view_poses
from ..volume import Volume, hu_to_mu
from ..xray import is_round_field
from .context import RegistrationContext
from .options import RegisterOptions
from .pyramid import XrayPyramid
from .records import RegistrationResult, StageRecord, ViewResult
from .uncertainty import covariance, point_standard_deviations
from .stages import (at_grid_edge, choose_polarity, choose_reading, distortion_refinement, fits_distortion,
                     initial_pose, intensity_refinement, keep_or_discard, learnt_residual, learnt_similarity,
                     relative_pose_refinement, residual_distortion_refinement, translation_search,
                     MAX_DISTORTION_SE, SIGNIFICANT_DISTORTION)

__all__ = ["Registrar", "VIEW_NCC_GAP", "OTHER_START_DEG", "OTHER_START_MM", "SMALL_FIELD_SIDE"]

VIEW_NCC_GAP = 0.25
"""A view whose final NCC is this far below the best view's is named in a warning."""

SMALL_FIELD_SIDE = 0.5
"""A view whose exposed field, seen in the model's training intrinsics, covers less than this share of
the training image's side (its area under the square) is named in a warning when the regressor started
the registration: at 40% the spine crop's regressor started 46-80 mm off, at 51% the chest's 15 mm
(docs/results.md, "Detectors smaller than the training camera's"); a regressor trained for that 40%
detector itself started 110 mm off (twenty-fourth session), so the warning does not send users there."""

UNSEARCHED = "initial, not searched"
"""The source of the other start when it is the initial pose as it was before the search."""

OTHER_START_DEG, OTHER_START_MM = 1.0, 5.0
"""When the learnt stage ran, the searched start the search did not keep is refined too if it lies
this far (rotation, or the CT centre's displacement) from the kept one: closer, both end in one basin."""


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
        self.runs_learnt_stage, self.notes = self._learnt_stage_decision(quality)
        self.attenuation: dict[float, Volume] = {}
        for level in (self.options.search_level, *self.options.refine_levels):
            if level.spacing_mm not in self.attenuation:
                coarse = ct.with_spacing(level.spacing_mm)
                mu = hu_to_mu(coarse.data.to(self.device))[None].float()
                self.attenuation[level.spacing_mm] = Volume(mu, coarse.ijk_to_ras)

    def context(self, image: Tensor, camera: Camera, *, photometric: str = "MONOCHROME2",
                line_integrals: bool = False, other_views: Sequence[View] = (), progress=None,
                cancel=None, encoding: str = "auto") -> RegistrationContext:
        """The shared state of one registration of ``image`` (rows, cols) seen by ``camera``
        (view 0), and of ``other_views`` (view 1, 2, ...) with it."""
        pyramids = [XrayPyramid(image, camera, photometric, line_integrals, self.device, encoding)]
        pyramids += [XrayPyramid(v.xray, v.camera, v.photometric, line_integrals, self.device, encoding)
                     for v in other_views]
        relative = torch.stack([IDENTITY, *(torch.as_tensor(v.camera_from_reference, dtype=torch.float64)
                                            for v in other_views)])
        scale = ((self.calibration or {}).get("uncertainty_scale") or {}).get("inplane", 1.0)
        distortion = None if self.options.distortion is None else torch.tensor(self.options.distortion,
                                                                                  dtype=torch.float64)
        return RegistrationContext(self.model, self.options, self.attenuation, pyramids, relative,
                                   progress or (lambda stage, fraction: None), cancel, noise_scale=scale,
                                   distortion=distortion)

    def register(self, image: Tensor, camera: Camera, init: Tensor | None = None, *,
                 photometric: str = "MONOCHROME2", line_integrals: bool = False, other_views: Sequence[View] = (),
                 check_polarity: bool = False, encoding: str = "auto", progress=None,
                 cancel=None) -> RegistrationResult:
        """Register ``image`` (rows, cols) seen by ``camera``, jointly with ``other_views`` when given.

        ``image`` holds detector intensities (air bright; MONOCHROME1 inverted) unless
        ``line_integrals`` says it already holds -log(I/I0); ``init`` (4, 4), view 0's pose, skips
        the regressor. ``other_views``: further X-rays of the same patient position, each with its
        ``camera_from_reference``; the answer is still view 0's pose, pinned by all of them.
        ``check_polarity``: the views' photometric interpretations were guessed from their pixels (no
        DICOM tag said so), so each is also tried inverted and the CT decides
        (:func:`~.stages.choose_polarity`). ``encoding``: how the values relate to line integrals
        (:data:`~SphericalRegLib.xray.ENCODINGS`); "auto" tells raw counts from a processed export by
        the pixels, and a processed export's LUT (log or linear) by the CT (:func:`~.stages.choose_reading`).
        ``progress(stage, fraction)`` is called as work advances; ``cancel`` is anything with
        ``is_set()`` (raises :class:`~SphericalRegLib.errors.Cancelled`).
        """
        opt, t0 = self.options, time.perf_counter()
        ctx = self.context(image, camera, photometric=photometric, line_integrals=line_integrals,
                           other_views=other_views, progress=progress, cancel=cancel, encoding=encoding)
        polarity_warnings = choose_polarity(ctx, init) if check_polarity and not line_integrals else []
        stages = {"initial": initial_pose(ctx, init)}
        pose, search = stages["initial"].pose, None
        if self.runs_learnt_stage:
            stages["similarity"] = learnt_similarity(ctx, pose)
            pose, search = keep_or_discard(ctx, stages["initial"], stages["similarity"])
        if opt.searches and search is None:
            search = translation_search(ctx, {"initial": pose})
        if search is not None:
            stages["search"] = search
            pose = search.pose
        other = self._other_start(stages, pose)
        reading_notes = choose_reading(ctx, pose) if opt.refine else []
        if reading_notes and opt.searches:  # the search weighed its grid in the reading just replaced
            first = stages["search"]
            stages["search"] = first.then(translation_search(ctx, {"search": pose}))
            stages["search"].source = first.source
            pose = stages["search"].pose
            if other is not None and other[0] != UNSEARCHED:
                other = other[0], translation_search(ctx, {other[0]: other[1]}).pose
        given = ctx.camera_from_reference.clone()
        if opt.refine:
            if other is None:
                stages["intensity"] = intensity_refinement(ctx, pose)
                stages["intensity"].source = stages["search"].source if "search" in stages else None
            else:
                self._refine_from_both(ctx, stages, pose, *other)
            pose = stages["intensity"].pose
            failed = stages["intensity"].diverged
            if fits_distortion(ctx) and not failed:
                fit = distortion_refinement(ctx, pose, opt.fit_distortion_rounds)
                if fit is not None:
                    stages["distortion"] = fit
                    pose = fit.pose
            elif ctx.n_views == 1 and opt.residual_distortion_rounds and opt.distortion is None and not failed:
                fit = residual_distortion_refinement(ctx, pose, opt.residual_distortion_rounds,
                                                     levels=opt.refine_levels[-opt.residual_distortion_levels:])
                if fit is not None:
                    stages["distortion"] = fit
                    pose = fit.pose
            if opt.relative_rotation_sd_deg > 0 and ctx.n_views > 1 and not failed:
                stages["relative"] = relative_pose_refinement(ctx, pose, self.ct.centre)
                pose, failed = stages["relative"].pose, stages["relative"].diverged
        else:  # nothing after the learnt stage could have recovered from its divergence
            failed = "similarity" in stages and stages["similarity"].diverged
        result = self._result(ctx, pose, stages, failed, time.perf_counter() - t0, given)
        result.warnings += polarity_warnings
        result.notes += reading_notes
        return result

    def _other_start(self, stages: dict[str, StageRecord], pose: Tensor) -> tuple[str, Tensor] | None:
        """The searched start the search did not keep (the learnt stage's answer or the initial pose,
        each moved to its best grid point), or with ``options.unsearched_start`` and no learnt stage
        the initial pose as it was before the search, when it lies in another basin than ``pose``:
        at least :data:`OTHER_START_DEG` or :data:`OTHER_START_MM` (at the CT centre) away."""
        search = stages.get("search")
        if not self.options.other_start_levels or search is None:
            return None
        if "similarity" in stages and len(search.candidates) >= 2:
            name = next(n for n in search.candidates if n != search.source)
            other = search.candidates[name]
        elif self.options.unsearched_start and "similarity" not in stages:
            name, other = UNSEARCHED, stages["initial"].pose
        else:
            return None
        angle = math.degrees(float(rotation_angle(other[:3, :3], pose[:3, :3])))
        centre = self.ct.centre[None].to(torch.float64)
        shift = float((transform_points(other, centre) - transform_points(pose, centre)).norm())
        return (name, other) if angle >= OTHER_START_DEG or shift >= OTHER_START_MM else None

    @staticmethod
    def _refine_from_both(ctx: RegistrationContext, stages: dict[str, StageRecord], pose: Tensor, name: str,
                          start: Tensor) -> None:
        """The first ``options.other_start_levels`` intensity levels from the search's pick ``pose``
        and from the other start; the run that ends them at the lower cost (not diverged) goes on
        through the remaining levels as ``stages["intensity"]``, the other is kept as
        ``stages["other start"]``, and the learnt stage counts as kept when the winner started from
        its answer.

        The search's coarse cost cannot tell the two basins apart; the intensity stage's cost can
        (docs/results.md, sixteenth session)."""
        levels = ctx.options.refine_levels
        first = max(1, min(ctx.options.other_start_levels, len(levels)))
        runs = []
        for source, p in ((stages["search"].source, pose), (name, start)):
            runs.append(intensity_refinement(ctx, p, levels=levels[:first]))
            runs[-1].source = source
        runs.sort(key=lambda r: (r.diverged, r.cost[-1]))
        best, other = runs
        if first < len(levels) and not best.diverged:
            best = best.then(intensity_refinement(ctx, best.pose, levels=levels[first:]))
            best.source = runs[0].source
        stages["intensity"], stages["other start"] = best, other
        if "similarity" in stages:
            stages["similarity"].kept = best.source == "similarity"

    def _learnt_stage_decision(self, quality: dict | None) -> tuple[bool, list[str]]:
        """Whether LM on the learnt similarity runs (``options.optimizer``, ``options.learnt_stage``
        and the model's last validation), and a note for the result when ``auto`` skips it."""
        opt = self.options
        if opt.optimizer == "none":
            return False, []
        within = None if quality is None else quality["grad_within30"]
        if opt.learnt_stage == "always" or (within is not None and within >= LEARNT_STAGE_SHARE):
            return True, []
        why = ("the model's similarity was never validated" if within is None else
               f"{quality['grad_within30']:.0%} of the model's held-out similarity gradients lie within 30 deg "
               f"of the truth, the stage runs from {LEARNT_STAGE_SHARE:.0%}")
        return False, [f"the learnt-similarity stage did not run: {why}; the search and the intensity stage "
                       f"started from the initial pose (learnt_stage 'always' runs the stage anyway)"]

    def _result(self, ctx: RegistrationContext, pose: Tensor, stages: dict[str, StageRecord], failed: bool,
                seconds_so_far: float, given_relative: Tensor) -> RegistrationResult:
        """The final images, NCC, checks, confidence and uncertainty of ``pose`` (4, 4), per view and joint."""
        t0 = time.perf_counter()
        level = self.options.refine_levels[-1]
        mu = self.attenuation[level.spacing_mm]
        T = pose.to(self.device, torch.float64)[None]
        poses = view_poses(ctx.camera_from_reference.to(T), T)[:, 0]
        with torch.no_grad():
            similarity = (stages["similarity"].cost[-1] if "similarity" in stages
                          else float(0.5 * learnt_residual(ctx)(T).pow(2).sum()))
        views, warp = [], None
        for k in range(ctx.n_views):
            x, camera, valid = ctx.xray_level(k, level.image_size)
            with torch.no_grad():
                drr = ctx.renderer(camera, mu)(mu.data, poses[k][None])[0, 0]
                ncc = float((standardise(drr[None, None], (1, 2, 3)) * standardise(x, (1, 2, 3))).mean())
                images = drr[None, None].float(), x.float(), valid.to(x.device)[None, None]
                if ctx.n_views == 1 and self.options.distortion is None:  # one view: is its frame warped?
                    shift, warp = residual_alignment(*images, camera.pixel_spacing[0])
                else:
                    shift = residual_shift_mm(*images, camera.pixel_spacing[0])
                shift = float(shift)
            views.append(ViewResult(self._view_name(k), camera, poses[k].cpu(), ncc, drr=drr.cpu(),
                                    xray=x[0, 0].cpu(), residual_shift_mm=shift,
                                    misaligned=misaligned(shift, camera.pixel_spacing[0])))
            if "relative" in stages and k > 0:
                views[-1].relative = self._relative_change(given_relative[k], ctx.camera_from_reference[k], pose)
        diverged = failed or not torch.isfinite(pose).all() or not all(
            self._plausible(v.camera_from_world, v.camera) for v in views)
        covariance, uncertainty = None, None
        if not diverged:  # whatever stages ran: the conditioning is also a signal of the confidence
            covariance, uncertainty = self._uncertainty(ctx, level, pose, views, self._final_linearisation(
                ctx, stages, pose))
        for v in views:
            v.confidence = self._confidence(v, similarity, diverged, ctx.n_views, uncertainty)
        warp_warnings, warp_sd = [], self._warp_depth_sd(ctx, pose, warp) if warp is not None and not diverged else 0.0
        if warp_sd > 0:
            if views[0].confidence is not None:
                views[0].confidence = min(views[0].confidence, depth_bound(warp_sd))
            seen = ("the X-ray's image-intensifier warp was read off it and undone (see the notes), and the depth "
                    "rests on that reading" if ctx.distortion is not None else
                    f"the X-ray shows an image-intensifier warp that no rigid pose explains (pincushion "
                    f"{float(warp.coefficients[0, 0]):.3f}, S {float(warp.coefficients[0, 1]):.3f} rad)")
            warp_warnings.append(f"{seen}: the pose along the central ray is uncertain by about {warp_sd:.1f} mm (1 sd), "
                                 "and the confidence and the uncertainty say so; give the C-arm's dewarp calibration "
                                 "(--distortion K,S) or register a second view")
            for u in (uncertainty, views[0].uncertainty):  # J^T J knows nothing of the warp
                if u is not None:
                    u["warp_depth_sd_mm"] = warp_sd
                    u["depth_sd_mm"] = math.hypot(u["depth_sd_mm"], warp_sd)
        confidences = [v.confidence for v in views]
        distortion, notes = None, list(self.notes)
        if ctx.distortion is not None and ctx.distortion.dim() == 1:
            distortion = dict(zip(DISTORTION_NAMES, map(float, ctx.distortion)))
            if self.options.distortion is None:
                notes.append(f"image-intensifier distortion read off the residual patch shifts and undone: pincushion "
                             f"{distortion['pincushion']:.3f}, S {distortion['s_distortion']:.3f} rad (a rigid pose "
                             "takes pincushion up as depth); the C-arm's dewarp calibration (--distortion) is surer")
        elif ctx.distortion is not None:
            for view, d in zip(views, ctx.distortion):
                view.distortion = dict(zip(DISTORTION_NAMES, map(float, d)))
            notes.append("image-intensifier distortion fitted at the joint pose and undone: " + "; ".join(
                f"{v.name} pincushion {v.distortion['pincushion']:.3f}, S {v.distortion['s_distortion']:.3f} rad"
                for v in views))
        return RegistrationResult(
            camera_from_world=pose, seconds=seconds_so_far + time.perf_counter() - t0, similarity=similarity,
            iterations=sum(s.iterations for s in stages.values()),
            confidence=None if None in confidences else min(confidences), diverged=bool(diverged),
            camera=views[0].camera, drr=views[0].drr, xray=views[0].xray, final_ncc=views[0].final_ncc,
            residual_shift_mm=views[0].residual_shift_mm,
            stages=stages, warnings=list(self.warnings) + self._view_warnings(views) + self._distortion_warnings(ctx)
            + self._distortion_fit_warnings(views) + warp_warnings + self._field_warnings(ctx, stages["initial"]),
            covariance=covariance, notes=notes,
            uncertainty=uncertainty, views=views, distortion=distortion, photometric=ctx.xray.photometric)

    @staticmethod
    def _final_linearisation(ctx: RegistrationContext, stages: dict[str, StageRecord], pose: Tensor):
        """The last intensity level's residual (1, M) and Jacobian (1, M, 6) at ``pose``, when LM
        computed that Jacobian there (not a Broyden update: those moved the sds by up to 5%,
        ``benchmarks/uncertainty_reuse.py``) for a single view; None otherwise."""
        record = stages.get("intensity")
        if (ctx.n_views > 1 or record is None or record.linearisation is None or not record.linearisation[2]
                or not torch.equal(record.pose, pose.cpu())):
            return None
        r, J, _ = record.linearisation
        return r[None], J[None]

    def _uncertainty(self, ctx: RegistrationContext, level, pose: Tensor, views: list[ViewResult],
                     linearisation: tuple[Tensor, Tensor] | None = None):
        """The joint covariance of view 0's twist and its standard deviations at the CT centre (in
        view 0's frame), and each view's own (what that view alone would leave, along its own
        central ray and in its own detector plane), set in ``views``: view 0's alone beside the
        joint figure shows what the further views add.

        Beside the calibrated figures, the raw ones (``raw_*``): the confidence reads those.
        ``linearisation``: view 0's residual (1, M) and Jacobian (1, M, 6) at ``pose`` when the
        last LM left them (one view), saving six derivative passes at the finest level."""
        scale = (self.calibration or {}).get("uncertainty_scale")
        T = pose.to(self.device, torch.float64)[None]

        def at_centre(cov, relative=None):
            raw = point_standard_deviations(pose, cov, self.ct.centre, None, relative)
            return {**point_standard_deviations(pose, cov, self.ct.centre, scale, relative), "point": "CT centre",
                    "calibrated": scale is not None, **{f"raw_{k}": v for k, v in raw.items()}}

        parts = [linearisation] if linearisation is not None else [
            twist_jacobian(ctx.intensity_residual(level, views=[k]), T) for k in range(ctx.n_views)]
        joint = covariance(torch.cat([r[0] for r, _ in parts]), torch.cat([J[0] for _, J in parts])).cpu()
        for k, (v, (r, J)) in enumerate(zip(views, parts)):
            alone = covariance(r[0], J[0]).cpu() if len(parts) > 1 else joint
            v.uncertainty = at_centre(alone, ctx.camera_from_reference[k].cpu())
        return joint, at_centre(joint)

    def _relative_change(self, given: Tensor, refined: Tensor, pose: Tensor) -> dict:
        """How far the refinement moved a view's relative pose: rotation (deg) and the CT centre's
        shift in that view's frame (mm), with the refined matrix."""
        centre = self.ct.centre[None].to(torch.float64)
        shift = (transform_points(refined.cpu() @ pose, centre) - transform_points(given.cpu() @ pose, centre)).norm()
        D = refined.cpu() @ se3_inverse(given.cpu())
        angle = torch.rad2deg(torch.arccos(((D[:3, :3].trace() - 1) / 2).clamp(-1, 1)))
        return {"camera_from_reference": refined.cpu().tolist(), "rotation_deg": float(angle),
                "centre_shift_mm": float(shift)}

    @staticmethod
    def _view_name(k: int) -> str:
        """As the case folder names it (conventions: view 0 at the top, ``view_k/`` beside it)."""
        return "view 0" if k == 0 else f"view_{k}"

    @staticmethod
    def _view_warnings(views: list[ViewResult]) -> list[str]:
        """A view whose matching edges lie far from where the pose puts them, and one that images far
        worse than the best one: other anatomy, or a wrong relative pose."""
        shifted = [f"{v.name}: the X-ray's edges that match the DRR's lie {v.residual_shift_mm:.1f} mm (median) from "
                   "where this pose puts them; the pose is wrong in this view, and its confidence is 0"
                   for v in views if v.misaligned]
        if len(views) < 2:
            return shifted
        best = max(v.final_ncc for v in views)
        return shifted + [f"{v.name}: its final NCC {v.final_ncc:.2f} is far below the best view's {best:.2f}; it may "
                          "show other anatomy, or its camera_from_reference may be wrong" for v in views
                          if best - v.final_ncc > VIEW_NCC_GAP]

    @staticmethod
    def _distortion_fit_warnings(views: list[ViewResult]) -> list[str]:
        """A view whose fitted distortion lies at the edge of the grid tried: no plausible warp explained
        it (too little dose, or a pose far off). Both gross failures of the twentieth session's 28 two-view
        random-physics tuning and report cases did, and one of the 26 that did not (0.78 mm)."""
        return [f"{v.name}: its fitted image-intensifier distortion (pincushion {v.distortion['pincushion']:.3f}, "
                f"S {v.distortion['s_distortion']:.3f} rad) lies at the edge of the range tried: the view may be too "
                "noisy to fit, or the pose wrong; check the overlay of every view before trusting this pose"
                for v in views if v.distortion is not None and at_grid_edge(v.distortion["pincushion"],
                                                                             v.distortion["s_distortion"])]

    def _field_warnings(self, ctx: RegistrationContext, initial: StageRecord) -> list[str]:
        """A regressor's start from a view whose field is far smaller than the model's training camera's:
        the model was trained for another C-arm, and its start may lie outside every later stage's reach."""
        if initial.source == "given":
            return []
        warnings = []
        for k, pyramid in enumerate(ctx.pyramids):
            side = float(pyramid.in_camera(self.model.camera)[2].float().mean().sqrt())
            if side < SMALL_FIELD_SIDE:
                warnings.append(
                    f"{self._view_name(k)}: its exposed field is {side:.0%} of the side of the detector the model was "
                    "trained for, and the regressor reads fields that small poorly, in depth above all (a median 46 mm "
                    "off at 40% on a spine CT): check the overlay before trusting this pose, or give a start (--init)")
        return warnings

    def _distortion_warnings(self, ctx: RegistrationContext) -> list[str]:
        """An image intensifier's round field registered without its dewarp: the frame's pincushion
        reads as depth to a rigid pose (docs/results.md, image-intensifier distortion)."""
        if ctx.distortion is not None or fits_distortion(ctx):
            return []  # undone, or fitted (a fit of none leaves ctx.distortion None)
        size = self.options.refine_levels[-1].image_size
        round_views = [self._view_name(k) for k in range(ctx.n_views) if is_round_field(ctx.xray_level(k, size)[2])]
        if not round_views:
            return []
        return [f"{', '.join(round_views)}: the exposed field is round, as an image intensifier's; if the frame "
                "was not dewarped, its pincushion distortion shifts the pose along the central ray by about a third "
                "of the distortion times the source-to-patient distance (5 mm at 2%): give the C-arm's dewarp "
                "calibration (pincushion and S; --distortion K,S on the command line) or register a second view"]

    def _plausible(self, pose: Tensor, camera: Camera) -> bool:
        """The CT centre must lie in front of the source and project onto the detector."""
        centre = self.ct.centre[None].to(pose)
        c = transform_points(pose, centre)[0]
        if not (0 < float(c[2]) < camera.sdd):
            return False
        u, v = project(centre, pose, camera)[0].tolist()
        return -0.5 * camera.cols <= u <= 1.5 * camera.cols and -0.5 * camera.rows <= v <= 1.5 * camera.rows

    def _warp_depth_sd(self, ctx: RegistrationContext, pose: Tensor, fit: DistortionFit) -> float:
        """How uncertain (mm, 1 sd) one view's depth is for the image-intensifier warp in it: a
        pincushion ``k`` moves a rigid pose along the central ray by about ``k / 3`` of the source's
        distance to the anatomy (docs/results.md, sixth session), and S distortion likewise turns it.
        What counts: in a frame left as it was, the warp at ``pose`` where it is one
        (:data:`~.stages.SIGNIFICANT_DISTORTION`, well determined); in a frame whose warp was undone,
        whatever of it is still measured and the standard error of the reading, for the depth now
        rests on the fitted k (the fits of plain frames scatter by 0.01, about 3 mm). 0 for a frame
        with neither."""
        c, e = fit.coefficients[0].double().cpu(), fit.standard_errors[0].double().cpu()
        if not bool(torch.isfinite(e).all()):
            return 0.0
        measured = e <= MAX_DISTORTION_SE
        if ctx.distortion is None:
            left, undone = torch.where(measured & (c.abs() >= SIGNIFICANT_DISTORTION), c, 0.0), torch.zeros_like(e)
        else:
            left, undone = torch.where(measured, c, 0.0), e
        if not bool((left != 0).any() or (undone != 0).any()):
            return 0.0
        depth = float(transform_points(pose.to(torch.float64), self.ct.centre[None].to(torch.float64))[0, 2])
        return depth / 3 * float(torch.sqrt((left**2 + undone**2).sum()))

    def _confidence(self, view: ViewResult, cost: float, diverged: bool, n_views: int = 1,
                    uncertainty: dict | None = None) -> float | None:
        """0 when diverged, else :func:`~SphericalRegLib.confidence.score` of ``view`` under the
        model's calibration (its joint-registration part when ``n_views`` > 1 and it has one) with the
        registration's ``uncertainty`` (the joint one); None without a calibration of the confidence."""
        if diverged:
            return 0.0
        calibration = for_views(self.calibration, n_views)
        if calibration is not None and "weights" not in calibration:  # the uncertainty's only
            calibration = None
        return score(calibration, confidence_values(view.final_ncc, cost, view.uncertainty, view.residual_shift_mm,
                                                    view.misaligned), uncertainty)
