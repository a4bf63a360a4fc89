"""The stages of a registration, in the order :class:`~SphericalRegLib.register.Registrar` runs them.

Each takes the shared :class:`RegistrationContext` and a pose and returns a :class:`StageRecord`.
Reference: Chen & Kong, WACV 2026 (regressor start, LM on the learnt spherical similarity); the
translation search and the intensity levels are this project's safeguards around it.
"""

from __future__ import annotations

import math
import time
import warnings

import torch
from torch import Tensor

from ..alignment import residual_distortion
from ..distortion import LIMITS, distort
from ..geometry import perturb_left, se3_inverse, transform_points
from ..optimize import adam, gradient_descent, least_squares_cost, levenberg_marquardt
from ..xray import describe
from .context import RegistrationContext
from .pyramid import XrayPyramid
from .records import StageRecord

__all__ = ["choose_polarity", "choose_reading", "initial_pose", "learnt_similarity", "keep_or_discard",
           "translation_search", "intensity_refinement",
           "learnt_residual", "relative_pose_refinement", "distortion_refinement", "fits_distortion", "at_grid_edge"]


INVERSE = {"MONOCHROME1": "MONOCHROME2", "MONOCHROME2": "MONOCHROME1"}
POLARITY_MARGIN = 0.25
""":func:`choose_polarity` inverts only when that lowers the coarse cost (1 - NCC: 0 alike, 1 unrelated,
2 inverted) by this much: from a start far off both readings are near 1 and the guess stands.
Chosen on tuning cases (seeds 7100, 6300, 6500): every wrong guess there was 0.32 or more worse."""


@torch.no_grad()
def choose_polarity(ctx: RegistrationContext, given: Tensor | None = None) -> list[str]:
    """Each view as read and inverted: whichever images the CT better at the start pose (the
    regressor's for that reading, or ``given``) by :data:`POLARITY_MARGIN` is kept in
    ``ctx.pyramids``, view by view from view 0. Returns a warning for each view inverted.

    Without a DICOM tag the polarity is a guess from the pixels, and a processed export (a LUT, a
    window, an S-curve) can fool any rule; read the wrong way round, every later stage fits bone to
    air. At the true pose the two readings' NCC with the DRR differ in sign, so even a start some
    centimetres off tells them apart on the coarse cost."""
    notes = []
    for k, read in enumerate(list(ctx.pyramids)):
        if read.photometric.upper() not in INVERSE:
            continue
        other = XrayPyramid(read.image, read.camera, INVERSE[read.photometric.upper()], read.line_integrals,
                            read.device, read.encoding)

        def cost_at_own_start(pyramid):
            with warnings.catch_warnings():  # the trial reading's own "looks inverted" is no news to the user
                if pyramid is other:
                    warnings.simplefilter("ignore", UserWarning)
                start = initial_pose(ctx, given).pose
                return float(ctx.coarse_cost(start[None].to(ctx.device, torch.float64), views=[k])[0])

        costs = _keep_the_better_reading(ctx, k, read, other, cost_at_own_start, POLARITY_MARGIN)
        if costs is not None:
            name = "the X-ray" if k == 0 else f"view_{k}'s X-ray"
            notes.append(f"{name}: its polarity guessed from the pixels ({read.photometric}) images the CT worse "
                            f"than its inverse (coarse cost {costs[0]:.2f} against {costs[1]:.2f}): registered as "
                            f"{other.photometric}; check the export's photometric interpretation")
    return notes


def _keep_the_better_reading(ctx: RegistrationContext, k: int, read: XrayPyramid, other: XrayPyramid, cost,
                             margin: float) -> list[float] | None:
    """View ``k`` read as ``read`` and as ``other``: ``other`` stays in ``ctx.pyramids`` when its
    ``cost(pyramid)`` (with that pyramid in place) is lower by ``margin``; returns both costs then, else
    None with ``read`` back in place."""
    costs = []
    for pyramid in (read, other):
        ctx.pyramids[k] = pyramid
        costs.append(cost(pyramid))
    if costs[1] < costs[0] - margin:
        return costs
    ctx.pyramids[k] = read
    return None


READING_MARGIN = 0.01
""":func:`choose_reading` reads a processed export as a linear LUT's only when that lowers the coarse
cost by this much. On 32 processed tuning X-rays the reading with the lower coarse cost at the searched
pose was the one with the lower cost at the truth in 31; the other differed by 0.002
(``benchmarks/reading_choice.py``, docs/results.md)."""


@torch.no_grad()
def choose_reading(ctx: RegistrationContext, pose: Tensor) -> list[str]:
    """Each view that is a processed export, read as a log LUT's (affine in the line integrals) and as
    a linear LUT's (affine in the intensities, :data:`~SphericalRegLib.xray.LINEAR_FLOOR`): whichever
    images the CT better at ``pose`` (4, 4) by :data:`READING_MARGIN` is kept in ``ctx.pyramids``.
    Returns a note for each view read as linear.

    The pixels of a windowed 8-bit export do not say which LUT made them, and a linear one read as
    a log one crushes everything thick into a few grey levels, the body's outline included: that
    pulled the pose along the central ray by millimetres (docs/results.md). At one pose both readings
    meet the same DRR, so the comparison needs no good pose, only the anatomy in view."""
    notes = []
    for k, read in enumerate(list(ctx.pyramids)):
        if read.line_integrals or read.encoding != "auto":
            continue
        if describe(read.image, read.photometric)["encoding"] != "processed":
            continue
        linear = XrayPyramid(read.image, read.camera, read.photometric, False, read.device, "processed-linear")
        costs = _keep_the_better_reading(
            ctx, k, read, linear,
            lambda _: float(ctx.coarse_cost(pose[None].to(ctx.device, torch.float64), views=[k])[0]), READING_MARGIN)
        if costs is not None:
            name = "the X-ray" if k == 0 else f"view_{k}'s X-ray"
            notes.append(f"{name}: read as a linear-LUT export (values proportional to transmitted intensity), "
                         f"which images the CT better than a log LUT's reading (coarse cost {costs[1]:.2f} "
                         f"against {costs[0]:.2f})")
    return notes


@torch.no_grad()
def initial_pose(ctx: RegistrationContext, given: Tensor | None = None) -> StageRecord:
    """The regressor's pose for the X-ray (seen in the model's training intrinsics, so that any
    C-arm's image reaches it as trained), or ``given`` (4, 4) when the caller has one.

    With several views the regressor reads each, each answer is carried back to view 0's pose,
    and the one that images every view best (coarse NCC) is the start: a regressor trained on AP
    views may suit the AP view of a pair far better than the lateral one.
    """
    t0 = time.perf_counter()
    if given is None:
        C = ctx.camera_from_reference.to(ctx.device, torch.float64)
        guesses = torch.stack([
            se3_inverse(C[k]) @ ctx.model.regressor(pyramid.in_camera(ctx.model.camera)[0])[0].double()
            for k, pyramid in enumerate(ctx.pyramids)])
        best = int(ctx.coarse_cost(guesses).argmin()) if len(guesses) > 1 else 0
        pose, source = guesses[best], "regressor" if best == 0 else f"regressor on view {best}"
    else:
        pose, source = torch.as_tensor(given, dtype=torch.float64, device=ctx.device), "given"
    ctx.progress("initial", 1.0)
    ctx.check_cancel()
    return StageRecord(pose=pose.cpu(), seconds=time.perf_counter() - t0, source=source)


def learnt_residual(ctx: RegistrationContext):
    """``pose (B, 4, 4) -> (B, N)``: per-token spherical distances between the X-ray's embedding
    and the embedding of the CT feature volume's DRR at the pose (the learnt similarity), both in
    the intrinsics the model was trained for; stacked over the views."""
    model = ctx.model
    features = model.feature_volume.data.float()

    def one(view: int):
        x, camera, valid = ctx.pyramids[view].in_camera(model.camera)
        with torch.no_grad():
            zx = model.similarity.embed_xray(x)
        render = ctx.renderer(camera, model.feature_volume, model.config.n_samples)
        seen = valid.to(x)  # zero in the X-ray where its detector or field ends: the DRR alike
        return lambda T: model.similarity.residual(zx, model.similarity.embed_drr(render(features, T) * seen))

    return ctx.over_views(one)


def learnt_similarity(ctx: RegistrationContext, pose: Tensor) -> StageRecord:
    """LM (or, for the ablation, gradient descent or Adam) on the learnt similarity from ``pose``."""
    opt = ctx.options
    t0 = time.perf_counter()  # the X-ray's embedding and the renderer belong to the stage's time
    residual = learnt_residual(ctx)
    start = pose.to(ctx.device, torch.float64)[None]
    if opt.optimizer == "lm":
        free = None if opt.learnt_moves_depth else torch.tensor([True] * 5 + [False], device=ctx.device)
        res = levenberg_marquardt(residual, start, max_iters=opt.iterations, free=free, broyden=opt.learnt_broyden,
                                  callback=ctx.iteration_callback("similarity", opt.iterations), **ctx.bounds)
    else:
        method = gradient_descent if opt.optimizer == "gd" else adam
        res = method(least_squares_cost(residual), start, iters=opt.gd_iterations, lr_rot=opt.lr_rot,
                     lr_trans=opt.lr_trans, callback=ctx.iteration_callback("similarity", opt.gd_iterations),
                     **ctx.bounds)
    ctx.check_cancel()
    return StageRecord.from_optimizer(res, time.perf_counter() - t0)


def keep_or_discard(ctx: RegistrationContext, start: StageRecord,
                    learnt: StageRecord) -> tuple[Tensor, StageRecord | None]:
    """Whether the learnt stage's answer is kept (sets ``learnt.kept``): the one place that decides.

    An independent check before trusting the learnt similarity. With the translation search on,
    the search looks around both the start and the learnt pose and keeps whichever images the
    X-ray best; without it, the learnt pose must lower the coarse NCC cost of the start; without
    any refinement nothing independent can judge it, and it is kept unless it diverged.
    Returns the pose the next stage starts from and the search's record when the search decided.
    """
    if learnt.diverged:
        learnt.kept = False
        return start.pose, None
    if ctx.options.searches:
        search = translation_search(ctx, {"initial": start.pose, "similarity": learnt.pose})
        learnt.kept = search.source == "similarity"
        return search.pose, search
    if ctx.options.refine:
        before, after = ctx.coarse_cost(torch.stack([start.pose, learnt.pose]).to(ctx.device))
        learnt.kept = bool(after < before)
    else:
        learnt.kept = True
    return (learnt.pose if learnt.kept else start.pose), None


@torch.no_grad()
def translation_search(ctx: RegistrationContext, starts: dict[str, Tensor]) -> StageRecord:
    """The best of a grid of camera-frame translations about each of ``starts`` (name -> (4, 4)
    pose) by coarse NCC; the record's ``source`` names the start it moved.

    A regressor's largest errors are translations, and a Gauss-Newton stage cannot recover
    shifts of many pixels; a brute-force look at a few hundred tiny DRRs can, in well under a second.
    """
    opt = ctx.options
    t0 = time.perf_counter()
    poses = torch.stack(list(starts.values())).to(ctx.device, torch.float64)
    axes = [torch.arange(-n, n + 1, dtype=poses.dtype, device=poses.device) * opt.search_step_mm
            for n in opt.search_steps]
    shifts = torch.cartesian_prod(*axes)
    xi = torch.cat([torch.zeros_like(shifts), shifts], dim=-1)
    candidates = torch.cat([perturb_left(xi, p.expand(len(xi), 4, 4)) for p in poses])
    cost = ctx.coarse_cost(candidates)
    best = int(cost.argmin())
    each = cost.view(len(starts), len(xi)).argmin(-1)
    ctx.progress("search", 1.0)
    return StageRecord(pose=candidates[best].cpu(), seconds=time.perf_counter() - t0,
                       source=list(starts)[best // len(xi)],
                       candidates={name: candidates[k * len(xi) + int(i)].cpu()
                                   for k, (name, i) in enumerate(zip(starts, each))})


def intensity_refinement(ctx: RegistrationContext, pose: Tensor, levels=None) -> StageRecord:
    """LM on NCC of line-integral DRRs, coarse to fine (``levels``, default ``options.refine_levels``);
    stops at the first level that diverges. Several views run the same caps: a cap of 6 at the
    finest level saved 1.2x (plain) to 1.8x (random physics) in time and lost sub-millimetre cases
    under random physics (docs/results.md, twentieth session)."""
    record = None
    levels = ctx.options.refine_levels if levels is None else levels
    for k, level in enumerate(levels):
        t0 = time.perf_counter()
        res = levenberg_marquardt(ctx.intensity_residual(level), pose.to(ctx.device, torch.float64)[None],
                                  max_iters=level.iterations, cost_tol=level.cost_tol, broyden=level.broyden,
                                  max_extensions=level.extensions, damping_rule=level.damping_rule,
                                  callback=ctx.iteration_callback(f"intensity {k + 1}", level.iterations),
                                  **ctx.bounds)
        ctx.check_cancel()
        step = StageRecord.from_optimizer(res, time.perf_counter() - t0)
        record = step if record is None else record.then(step)
        pose = step.pose
        if step.diverged:
            break
    return record


def relative_pose_refinement(ctx: RegistrationContext, pose: Tensor, centre: Tensor) -> StageRecord:
    """Each further view's ``camera_from_reference`` refined for positioner angles, then the pose
    again against all views (``ctx.camera_from_reference`` is updated in place).

    A free relative pose would carry no depth to view 0: a view can shift along its own central
    ray unseen. Positioner errors are rotations of the C-arm about its isocentre, so view k's
    pose moves under a prior: its rotation (sd ``relative_rotation_sd_deg``) and the displacement of
    the isocentre, taken on view k's central ray at the depth of ``centre`` (world, the CT
    centre; sd ``relative_isocentre_sd_mm``), weighted like the image residual's own noise
    (its Gauss-Newton variance times the calibration's in-plane factor when there is one).
    """
    opt = ctx.options
    level = opt.refine_levels[-1]
    t0 = time.perf_counter()
    T = pose.to(ctx.device, torch.float64)
    C = ctx.camera_from_reference.to(ctx.device, torch.float64).clone()
    sd_rot, sd_iso = math.radians(opt.relative_rotation_sd_deg), opt.relative_isocentre_sd_mm
    for k in range(1, ctx.n_views):
        own, inverse = ctx.intensity_residual(level, views=[k]), se3_inverse(C[k])

        def image(P, own=own, inverse=inverse):  # view k's residual at its own pose
            return own(inverse @ P)

        P0 = (C[k] @ T)[None]
        with torch.no_grad():
            r0 = image(P0)
        noise = float(r0.pow(2).sum() / max(1, r0.shape[-1] - 6)) ** 0.5 * ctx.noise_scale
        depth = float(transform_points(P0[0], centre.to(P0)[None])[0, 2])
        iso = torch.tensor([0.0, 0.0, depth], dtype=torch.float64, device=ctx.device)

        def residual(P, image=image, P0=P0, iso=iso, noise=noise):
            D = P @ se3_inverse(P0)
            R = D[..., :3, :3]
            W = 0.5 * (R - R.transpose(-1, -2))
            rotation = torch.stack([W[..., 2, 1], W[..., 0, 2], W[..., 1, 0]], dim=-1)  # sin(angle) axis
            moved = (R @ iso[:, None])[..., 0] + D[..., :3, 3] - iso
            prior = noise * torch.cat([rotation / sd_rot, moved / sd_iso], dim=-1)
            r = image(P)
            return torch.cat([r, prior.to(r.dtype)], dim=-1)

        res = levenberg_marquardt(residual, P0, max_iters=level.iterations, cost_tol=level.cost_tol,
                                  broyden=level.broyden, max_extensions=level.extensions,
                                  damping_rule=level.damping_rule, max_rotation=4 * sd_rot,
                                  max_translation=opt.max_translation_mm,
                                  callback=ctx.iteration_callback(f"relative pose {k}", level.iterations))
        ctx.check_cancel()
        if not bool(res.diverged[0]):
            C[k] = res.pose[0] @ se3_inverse(T)
    ctx.camera_from_reference = C.to(ctx.camera_from_reference)
    step = intensity_refinement(ctx, pose, levels=opt.refine_levels[-1:])
    step.seconds = time.perf_counter() - t0
    return step


PINCUSHION_GRID = torch.arange(-4, 15, dtype=torch.float64) * 0.01
S_DISTORTION_GRID = torch.arange(-4, 5, dtype=torch.float64) * 0.015
"""The coarse grids :func:`distortion_refinement` tries for each view (then half steps around the best)."""


def fits_distortion(ctx: RegistrationContext) -> bool:
    """Whether registration fits each view's distortion (:func:`distortion_refinement`): several
    views, rounds asked for, and no distortion given."""
    return ctx.n_views > 1 and ctx.options.fit_distortion_rounds > 0 and ctx.options.distortion is None


def at_grid_edge(pincushion: float, s_distortion: float) -> bool:
    """A fitted distortion on the edge of the grids: no plausible warp explained the view."""
    return (not float(PINCUSHION_GRID[0]) < pincushion < float(PINCUSHION_GRID[-1])
            or abs(s_distortion) >= float(S_DISTORTION_GRID[-1]))


def distortion_refinement(ctx: RegistrationContext, pose: Tensor, rounds: int) -> StageRecord | None:
    """Each view's image-intensifier distortion (pincushion, S) fitted at the joint ``pose`` (4, 4),
    then the finest intensity level again with every view undistorted; up to ``rounds`` times, until
    the fit stays as it was. Sets ``ctx.distortion`` to ``(V, 2)``; None when no round moved the pose.
    A round whose refinement diverges is dropped: the pose and distortion before it stand.

    One view cannot tell pincushion from depth: both magnify (docs/results.md, sixth session). With
    several views the other views pin each view's depth, so at the joint pose what is left of the
    magnification is the warp. At a fixed pose each view's DRR is rendered once and the fit only warps
    it."""
    level = ctx.options.refine_levels[-1]
    mu = ctx.attenuation[level.spacing_mm]
    residual = level.residual()
    fitted = torch.zeros(ctx.n_views, 2, dtype=torch.float64)

    def refit(pose: Tensor) -> Tensor | None:
        T = pose.to(ctx.device, torch.float64)[None]
        C = ctx.camera_from_reference.to(T)
        before = fitted.clone()
        with torch.no_grad():
            for k, pyramid in enumerate(ctx.pyramids):
                x, camera, valid = pyramid.level(level.image_size)
                drr = ctx.renderer(camera, mu)(mu.data, C[k] @ T)
                fitted[k] = _best_distortion(x, drr, valid.to(x.device), residual)
        return None if torch.equal(fitted, before) else fitted.clone()

    return _distortion_rounds(ctx, pose, rounds, (level,), refit)


SIGNIFICANT_DISTORTION = 0.02
"""A residual pincushion or S distortion at least this large is a warp: the fits of undistorted
X-rays registered within 2 mm stayed within 0.014 (docs/results.md, twenty-ninth session)."""
MAX_DISTORTION_SE = 0.02
"""...read only where this well determined: where fewer or poorer patches match, the fit is noise."""
DISTORTION_Z = 3.0
"""...and undone only where it is this many standard errors from none: a pincushion fitted 0.024 off
sent a depth 8 mm astray (0.003 is about a millimetre)."""


def significant_distortion(fit, z: float = DISTORTION_Z):
    """Which of ``fit``'s coefficients (:class:`~SphericalRegLib.alignment.DistortionFit`) are an
    image intensifier's warp, ``(B, 2)`` bool: large enough, well determined, ``z`` standard errors
    from none, and a pincushion, not a barrel (an intensifier's curved input screen only stretches
    the periphery; the negative ones fitted were X-rays with S distortion alone, and undoing them
    sent the depth 5-8 mm astray)."""
    c, e = fit.coefficients, fit.standard_errors
    physical = torch.stack([c[..., 0] > 0, torch.ones_like(c[..., 1], dtype=torch.bool)], -1)
    return (c.abs() >= SIGNIFICANT_DISTORTION) & (e <= MAX_DISTORTION_SE) & (c.abs() >= z * e) & physical


def residual_distortion_refinement(ctx: RegistrationContext, pose: Tensor, rounds: int,
                                   levels=None) -> StageRecord | None:
    """One view's image-intensifier distortion read off the residual patch shifts at ``pose`` (4, 4)
    (:func:`~SphericalRegLib.alignment.residual_distortion`), undone, and the intensity ``levels``
    (default the finest) again; up to ``rounds`` times, while a significant warp is left. Sets
    ``ctx.distortion`` to ``(2,)``; None when none was significant. A round whose refinement
    diverges is dropped.

    Pincushion magnifies, so a rigid pose takes up the part of it that looks like depth, and what
    it leaves (``k r^2`` against ``r``, the turn growing with ``r``) is visible in the shifts."""
    level = ctx.options.refine_levels[-1]
    mu = ctx.attenuation[level.spacing_mm]
    limits = torch.tensor(LIMITS, dtype=torch.float64)

    def refit(pose: Tensor) -> Tensor | None:
        x, camera, valid = ctx.xray_level(0, level.image_size)
        with torch.no_grad():
            drr = ctx.renderer(camera, mu)(mu.data, pose.to(ctx.device, torch.float64)[None])
            fit = residual_distortion(drr.float(), x.float(), valid.to(x.device)[None, None])
        warp = significant_distortion(fit)[0].cpu()
        if not bool(warp.any()):
            return None
        total = torch.where(warp, fit.coefficients[0].double().cpu(), torch.zeros(2, dtype=torch.float64))
        total = total if ctx.distortion is None else ctx.distortion + total
        return torch.maximum(torch.minimum(total, limits), -limits)

    return _distortion_rounds(ctx, pose, rounds, (level,) if levels is None else levels, refit)


def _distortion_rounds(ctx: RegistrationContext, pose: Tensor, rounds: int, levels, refit) -> StageRecord | None:
    """Up to ``rounds`` of: ``refit(pose)``, the distortion to undo (None: nothing new, stop), then
    the intensity ``levels`` again with it undone. The record of the rounds that ran; None if none."""
    record, t0 = None, time.perf_counter()
    for round_ in range(rounds):
        ctx.progress("distortion fit", round_ / rounds)
        distortion = refit(pose)
        ctx.check_cancel()
        if distortion is None:
            break
        step = _refine_undistorted(ctx, pose, distortion, levels)
        if step is None:
            break
        step.seconds, t0 = time.perf_counter() - t0, time.perf_counter()
        record = step if record is None else record.then(step)
        pose = step.pose
    ctx.progress("distortion fit", 1.0)
    return record


def _refine_undistorted(ctx: RegistrationContext, pose: Tensor, distortion: Tensor, levels) -> StageRecord | None:
    """The intensity ``levels`` again from ``pose`` (4, 4) with ``distortion`` undone (set in
    ``ctx``); None when they diverge, and then the pose and distortion before them stand."""
    kept, ctx.distortion = ctx.distortion, distortion
    step = intensity_refinement(ctx, pose, levels=levels)
    if step.diverged:
        ctx.distortion = kept
        return None
    return step


def _best_distortion(x: Tensor, drr: Tensor, valid: Tensor, residual, chunk: int = 64) -> Tensor:
    """The (pincushion, S) ``(2,)`` under which ``drr`` (1, 1, H, W), distorted, best matches ``x``
    (1, 1, H, W) over ``valid`` (H, W) under ``residual``: a grid, then half steps around its best.
    The DRR is warped, not the X-ray: its pixels and mask stay as they are for every candidate, so
    neither interpolation's smoothing of the noise nor a mask pushed out of the image can win."""
    drr = drr.to(x.dtype)

    def cost(coefficients):
        out = []
        for c in coefficients.split(chunk):
            drrs = distort(drr.expand(len(c), -1, -1, -1), c.to(x.device, x.dtype))
            out.append(0.5 * residual(x.expand(len(c), -1, -1, -1), drrs, valid[None, None]).pow(2).sum(-1))
        return torch.cat(out)

    grid = torch.cartesian_prod(PINCUSHION_GRID, S_DISTORTION_GRID)
    best = grid[int(cost(grid).argmin())]
    steps = torch.tensor([PINCUSHION_GRID[1] - PINCUSHION_GRID[0], S_DISTORTION_GRID[1] - S_DISTORTION_GRID[0]],
                         dtype=torch.float64)
    offsets = torch.cartesian_prod(*(torch.tensor([-0.5, -0.25, 0.0, 0.25, 0.5], dtype=torch.float64),) * 2)
    local = best + offsets * steps
    return local[int(cost(local).argmin())].cpu()
