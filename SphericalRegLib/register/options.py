"""How to register: the stages' switches, iteration caps, bounds and resolution levels."""

from __future__ import annotations

import math

from dataclasses import dataclass

from ..distortion import validate_distortion
from ..errors import InputError
from ..optimize import DAMPING_RULES
from .residuals import TERMS, check_drr_model, check_robust, check_terms, ncc_residual

__all__ = ["IntensityLevel", "RegisterOptions", "OPTIMIZERS", "LEARNT_STAGE"]

OPTIMIZERS = ("lm", "gd", "adam", "none")
LEARNT_STAGE = ("auto", "always")


@dataclass(frozen=True)
class IntensityLevel:
    """One level of the intensity stage: CT voxels (mm), image size (px), NCC patch (px), the
    residual form of :func:`~SphericalRegLib.register.residuals.ncc_residual`, LM's iteration cap
    and its convergence test: LM stops once two accepted steps in a row each lower the cost by
    less than ``cost_tol`` of itself, or a rejected step's own model promised less than that.
    ``ray_samples``: samples per ray as a fraction of the renderer's default (a step of at most 1.41
    voxels, :func:`~SphericalRegLib.render.default_n_samples`).
    ``broyden``: between exact Jacobians, LM updates the last one from each step's residual;
    ``extensions``: how many times LM may double a step that gained more than its model promised;
    ``damping_rule``: how LM's damping follows its accepted and rejected steps (all three
    :func:`~SphericalRegLib.optimize.levenberg_marquardt`). ``terms``: the NCC of intensities, of
    edges, or both (the default); ``robust``: Cauchy's scale for each patch's cost, None for least
    squares (:func:`~SphericalRegLib.register.residuals.robust_patches`); ``drr_model``: the DRR
    compared as it is ("linear") or through its best quadratic fit to the X-ray ("quadratic").
    ``metal_width_mm``: X-ray pixels that stand out from their surroundings, within this width at
    the detector, by more than the DRR's anatomy anywhere does are left out (metal the CT does not
    hold, :func:`~SphericalRegLib.register.residuals.local_outliers`); 0 looks only for pixels
    brighter than the DRR's brightest."""

    spacing_mm: float
    image_size: int
    patch: int
    form: str
    iterations: int
    cost_tol: float = 1e-4
    ray_samples: float = 1.0
    broyden: bool = False
    extensions: int = 0
    # Nielsen's rule: the coarse level's first Gauss-Newton steps overshoot, and at the simple rule's
    # doubling it spent 9-10 of its 12 iterations raising the damping from 1e-3 before a step was
    # accepted. On 40 random-physics tuning X-rays 1.19x faster (median of paired ratios), the same
    # 5 sub-millimetre and 14 under 2 mm; 12 plain ones 1.08x, 11/12 either way (docs/results.md)
    damping_rule: str = "nielsen"
    terms: tuple = TERMS
    robust: float | None = None
    drr_model: str = "linear"
    metal_width_mm: float = 0.0

    def __post_init__(self):
        if self.damping_rule not in DAMPING_RULES:
            raise InputError("damping_rule", f"is {self.damping_rule!r}", " or ".join(DAMPING_RULES))
        check_terms(self.terms)
        check_robust(self.robust)
        check_drr_model(self.drr_model)
        if not (isinstance(self.metal_width_mm, (int, float)) and 0 <= self.metal_width_mm < math.inf):
            raise InputError("metal_width_mm", f"is {self.metal_width_mm!r}", "0 (off) or a width in mm")

    def residual(self, form: str | None = None):
        """This level's :func:`~SphericalRegLib.register.residuals.ncc_residual` (``form``: its own by default)."""
        return ncc_residual(self.patch, form or self.form, terms=self.terms, robust=self.robust,
                            drr_model=self.drr_model)


@dataclass
class RegisterOptions:
    """How to register. ``optimizer`` picks the learnt-similarity stage's method (the ablation of
    LM against first-order methods; ``none`` skips the stage) and ``learnt_stage`` whether a model
    that did not validate runs it; ``refine`` switches the translation search and the intensity stage."""

    optimizer: str = "lm"
    # "auto": the learnt-similarity stage runs only with a model whose validation says its similarity
    # learnt (quality.LEARNT_STAGE_SHARE); a similarity that has not costs 4-5 s a registration for no
    # measured gain (docs/results.md, fourteenth session). "always": run it whatever the validation says
    learnt_stage: str = "auto"
    iterations: int = 20
    # LM on the learnt similarity updates its Jacobian (forward-mode through the encoder, 9x a
    # residual's cost) by Broyden's rule between exact ones (optimize.levenberg_marquardt): 1-3 s
    # faster a registration, the same poses on 11 of 12 tuning cases (docs/results.md)
    learnt_broyden: bool = True
    # whether LM on the learnt similarity may move the pose along the central ray (camera z): the
    # direction one view shows least and the one the learnt cost captured worst. Free, it ran away
    # in depth (eighth session; fifteenth: 2 of 20 spine registrations from init.json diverged, 0 held)
    learnt_moves_depth: bool = False
    gd_iterations: int = 100
    # gradient-descent rates for the learnt cost (rad and mm per unit gradient), the best of a
    # sweep on held-out cases (docs/results.md); 1e-2 / 5.0 left the trust region at once
    lr_rot: float = 3e-6
    lr_trans: float = 1.5
    refine: bool = True
    # under heavy scatter the finest level still descends after 12 (docs/results.md, eleventh session);
    # step doubling and Broyden updates, with the learnt stage's Broyden updates and the search's half
    # sampling, made registrations 1.4x (plain) to 1.8x (random physics) faster (thirteenth session)
    # metal the CT does not hold (pedicle screws, retractors) left out of both levels: pedicle screw
    # heads are 12-13 mm wide, 15-20 mm on the detector. On the `instruments` preset's tuning X-rays
    # the median mTRE went 0.79 -> 0.69 mm, on random physics 3 -> 5 of 24 sub-millimetre; held out,
    # r6400 9 -> 11 of 40, plain unchanged (docs/results.md, thirty-fourth session)
    refine_levels: tuple = (
        IntensityLevel(spacing_mm=3.0, image_size=64, patch=8, form="ncc", iterations=12, broyden=True, extensions=3,
                       metal_width_mm=24.0),
        IntensityLevel(spacing_mm=2.0, image_size=128, patch=16, form="difference", iterations=30, broyden=True,
                       extensions=3, metal_width_mm=24.0),
    )
    # when the learnt stage ran and its answer and the initial pose, each searched, lie in different
    # basins (registrar.OTHER_START_DEG / _MM): how many intensity levels both run before the lower
    # cost goes on alone (0: the search's pick alone, as before the sixteenth session)
    other_start_levels: int = 1
    # without a learnt stage, the initial pose as it was before the search as that other start: on
    # tuning X-rays 5 -> 7 of 24 sub-millimetre (one view) and 6 -> 4 gross of 24 (two views), on the
    # report sets no gain (mv6600 unchanged; r6400 11 -> 11, two cases > 1 mm worse, two better), for
    # 1.04-1.07x the time (docs/results.md, thirty-fifth session)
    unsearched_start: bool = False
    # how well each further view's camera_from_reference is known (1 sd): 0 takes it as exact; above
    # 0 it is refined after the intensity stage, as positioner angles about the isocentre
    relative_rotation_sd_deg: float = 0.0
    relative_isocentre_sd_mm: float = 1.0
    max_rotation_deg: float = 45.0
    max_translation_mm: float = 200.0
    # coarse search over camera-frame translations before the intensity levels (0 switches it off)
    search_step_mm: float = 15.0
    search_steps: tuple = (4, 4, 2)  # grid half-widths along camera x, y, z, in steps
    # half the renderer's samples per ray (steps of 2.8 voxels, 17 mm): 32 px images resolve nothing
    # finer, and the search is twice as fast (same choice on 24 of 28 tuning cases, docs/results.md)
    search_level: IntensityLevel = IntensityLevel(spacing_mm=6.0, image_size=32, patch=8, form="ncc", iterations=0,
                                                  ray_samples=0.5)
    # an image-intensifier C-arm's distortion (pincushion, S rotation at the corners; docs/physics.md),
    # from its dewarp calibration, undone before the intensity stage; None: frames without (a flat panel)
    distortion: tuple | None = None
    # with several views and no distortion given: rounds of each view's distortion fitted at the joint
    # pose and the finest level again (0: frames taken as undistorted). A distorted view pulled joint
    # registrations centimetres off (docs/results.md, twentieth session)
    fit_distortion_rounds: int = 2
    # one view and no distortion given: rounds of the image-intensifier warp its residual patch shifts
    # show, undone, then the last ``residual_distortion_levels`` intensity levels again (0: the frame
    # taken as undistorted, though a warp it shows still caps the confidence and is warned about;
    # docs/results.md, twenty-ninth session)
    residual_distortion_rounds: int = 2
    residual_distortion_levels: int = 2

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise InputError("optimizer", f"is {self.optimizer!r}", ", ".join(OPTIMIZERS[:-1]) + " or none")
        if self.learnt_stage not in LEARNT_STAGE:
            raise InputError("learnt_stage", f"is {self.learnt_stage!r}", " or ".join(LEARNT_STAGE))
        if self.distortion is not None:
            self.distortion = validate_distortion(self.distortion)
        if not (isinstance(self.residual_distortion_rounds, int) and self.residual_distortion_rounds >= 0):
            raise InputError("residual_distortion_rounds", f"is {self.residual_distortion_rounds!r}",
                             "0 (the frame taken as undistorted) or a number of rounds")
        if not (isinstance(self.residual_distortion_levels, int) and self.residual_distortion_levels >= 1):
            raise InputError("residual_distortion_levels", f"is {self.residual_distortion_levels!r}",
                             "at least 1 (the finest intensity levels run again; all of them when more)")
        if not (isinstance(self.fit_distortion_rounds, int) and self.fit_distortion_rounds >= 0):
            raise InputError("fit_distortion_rounds", f"is {self.fit_distortion_rounds!r}",
                             "0 (frames taken as undistorted) or a number of rounds")
        if self.iterations < 1:
            raise InputError("iterations", f"is {self.iterations}", "at least 1")
        if not (self.relative_rotation_sd_deg >= 0 and self.relative_isocentre_sd_mm > 0):
            raise InputError("relative_rotation_sd_deg", f"is {self.relative_rotation_sd_deg} "
                             f"(isocentre sd {self.relative_isocentre_sd_mm} mm)",
                             "0 (relative poses exact) or a positive sd in degrees, with a positive isocentre sd")
        if self.other_start_levels < 0:
            raise InputError("other_start_levels", f"is {self.other_start_levels}",
                             "0 (the search's pick alone) or the number of intensity levels both starts run")
        if not self.refine_levels:
            raise InputError("refine_levels", "is empty", "at least one intensity level (it also renders the result)")

    @property
    def searches(self) -> bool:
        """Whether the translation search runs (it belongs to the refinement)."""
        return self.refine and self.search_step_mm > 0
