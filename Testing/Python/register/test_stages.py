"""Each stage of the pipeline on the real residuals (SphericalRegLib.register.stages)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from SphericalRegLib.camera import ISOCENTRE_FRACTION, canonical_ap_pose
from SphericalRegLib.errors import InputError
from SphericalRegLib.evaluation.rows import errors
from SphericalRegLib.geometry import perturb_left
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.metrics import mtre
from SphericalRegLib.model import load_model
from SphericalRegLib.optimize import twist_jacobian
from SphericalRegLib.poses import camera_frame_offset
from SphericalRegLib.register import IntensityLevel, RegisterOptions, Registrar, StageRecord
from SphericalRegLib.register.registrar import UNSEARCHED
from SphericalRegLib.register.stages import (
    intensity_refinement, keep_or_discard, learnt_residual, translation_search,
)
from SphericalRegLib.render import Renderer
from fixtures import tiny_levels

f64 = torch.float64
TINY_LEVELS = tiny_levels(iterations=25)
SHIPPED_MODEL = Path(__file__).resolve().parents[3] / "Resources" / "Models" / "chest_example.pt"


@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_learnt_similarity_residual_has_a_full_rank_jacobian(which, tiny_volume, tiny_model_file):
    """Per-token distances give J^T J of rank 6 (a scalar similarity would give rank 1): for a tiny
    network and for the shipped model on its CT, the residual LM actually minimises."""
    ct, model_file = tiny_volume, tiny_model_file
    if which == "shipped":
        from SphericalRegLib.example import example_ct_path
        from SphericalRegLib.io import read_ct

        ct, model_file = read_ct(example_ct_path()), SHIPPED_MODEL
    model = load_model(model_file, ct)
    camera = model.camera
    T = canonical_ap_pose(ct.centre, camera.sdd)[None]
    truth = camera_frame_offset(torch.tensor([[0.05, -0.04, 0.03]], dtype=f64),
                                torch.tensor([[4.0, -3.0, 6.0]], dtype=f64), ISOCENTRE_FRACTION * camera.sdd) @ T
    renderer = Renderer(camera, model.feature_volume.ijk_to_ras, model.feature_volume.shape)
    with torch.no_grad():
        xray = renderer(model.mu.float(), truth)[0, 0]
    ctx = Registrar(model, ct).context(xray, camera, line_integrals=True)
    r, J = twist_jacobian(learnt_residual(ctx), T)
    assert r.shape[-1] >= 6 and torch.isfinite(J).all()
    JtJ = J[0].T @ J[0]
    scale = JtJ.diagonal().sqrt()  # radians and millimetres differ by the anatomy's size
    tol = 1e-10  # relative; float64 round-off is 1e-16, depth along the ray is weak but real
    assert torch.linalg.matrix_rank(JtJ / scale[:, None] / scale[None, :], rtol=tol) == 6
    Js = (r[..., None] * J).sum(1, keepdim=True)  # d(0.5 |r|^2)/d xi: a scalar similarity's Jacobian
    assert torch.linalg.matrix_rank((Js[0].T @ Js[0]) / scale[:, None] / scale[None, :], rtol=tol) == 1


def test_the_learnt_residual_compares_only_what_the_xray_saw(tiny_volume, tiny_model_file):
    """A detector smaller than the model's training camera leaves the warped X-ray zero at its edges;
    the DRR must be cut alike, or the fixed edge pulls the learnt minimum off the truth (on the chest:
    2-4 deg and 40 mm in depth, docs/results.md)."""
    from SphericalRegLib.camera import Camera

    model = load_model(tiny_model_file, tiny_volume)
    camera = model.camera
    T = canonical_ap_pose(tiny_volume.centre, camera.sdd)[None]
    renderer = Renderer(camera, model.feature_volume.ijk_to_ras, model.feature_volume.shape)
    with torch.no_grad():
        xray = renderer(model.mu.float(), T)[0, 0]
    c = 3  # pixels cut from each side: a smaller detector, same source, same pixels
    small = Camera(camera.sdd, camera.pixel_spacing, (camera.principal_point[0] - c, camera.principal_point[1] - c),
                   (camera.rows - 2 * c, camera.cols - 2 * c))
    ctx = Registrar(model, tiny_volume).context(xray[c:-c, c:-c], small, line_integrals=True)
    x, _, valid = ctx.pyramids[0].in_camera(camera)
    assert not valid.all() and valid.any()
    sim, features = model.similarity, model.feature_volume.data.float()
    render = ctx.renderer(camera, model.feature_volume, model.config.n_samples)
    with torch.no_grad():
        drr = render(features, T)
        masked = sim.residual(sim.embed_xray(x), sim.embed_drr(drr * valid.to(drr)))
        unmasked = sim.residual(sim.embed_xray(x), sim.embed_drr(drr))
        r = learnt_residual(ctx)(T)
    assert torch.allclose(r, masked) and not torch.allclose(r, unmasked)


def _context(model_file, cases, **options):
    case = read_case(cases / "case_000")
    registrar = Registrar(load_model(model_file, case.ct), case.ct, RegisterOptions(refine_levels=TINY_LEVELS,
                                                                                    **options))
    return case, registrar.context(case.xray, case.camera)


def test_intensity_stage_registers_a_simulated_xray(tiny_model_file, tiny_cases):
    """From the case's start pose (5 deg / 15 mm spreads), the intensity stage alone lands within a
    fraction of a voxel across the central ray on an X-ray simulated with DiffDRR's Siddon and
    detector physics. Along the ray one 48 px view pins the pose only through magnification (10 mm
    of depth moves the field's edge by about 0.3 px), so there the noise draw decides within a
    voxel or two: that is asserted loosely, the detector-plane error tightly."""
    case, ctx = _context(tiny_model_file, tiny_cases)
    truth, landmarks = read_truth(tiny_cases / "case_000")
    record = intensity_refinement(ctx, case.init)
    before = errors(case.init, truth, landmarks, case.camera)
    after = errors(record.pose, truth, landmarks, case.camera)
    assert after["inplane"] < 1.0 and after["mPE"] < 1.0, (before, after, record.cost)  # voxels are 6 mm
    assert after["mTRE"] < 0.5 * before["mTRE"] and after["depth"] < 15.0, (before, after)
    assert not record.diverged and record.iterations > 0
    assert len(record.cost) == len(record.poses) == record.iterations + 1  # one history over both levels


def test_an_intensity_level_stops_by_its_own_convergence_test(tiny_model_file, tiny_cases):
    """A level's ``cost_tol`` reaches its LM: at 1 (every step counts as settled) the level stops
    within a few steps, at 1e-8 it works on (the tiny case's GN steps overshoot for many
    iterations: that is what the iteration cap is for); the loose test's pose is still better
    than the start."""
    from dataclasses import replace

    case, ctx = _context(tiny_model_file, tiny_cases)
    level = IntensityLevel(6.0, 48, 8, "difference", iterations=25)
    loose = intensity_refinement(ctx, case.init, levels=(replace(level, cost_tol=1.0),))
    strict = intensity_refinement(ctx, case.init, levels=(replace(level, cost_tol=1e-8),))
    assert loose.converged and not loose.diverged and loose.iterations <= 4, loose.cost
    assert strict.iterations > loose.iterations + 5, (strict.iterations, loose.iterations)
    assert loose.cost[-1] < loose.cost[0]


def test_translation_search_keeps_the_start_that_images_the_xray_best(tiny_model_file, tiny_cases):
    """Of two starting poses, one far off and one a grid step from the truth, the search moves the
    second onto the truth's grid point and names it, whichever order they come in."""
    level = IntensityLevel(spacing_mm=6.0, image_size=32, patch=8, form="ncc", iterations=0)
    _, ctx = _context(tiny_model_file, tiny_cases, search_level=level, search_step_mm=15.0, search_steps=(1, 1, 1))
    truth, landmarks = read_truth(tiny_cases / "case_000")
    near = perturb_left(torch.tensor([0, 0, 0, 15.0, 0, 0], dtype=f64), truth)
    far = perturb_left(torch.tensor([0.3, 0, 0, 0, 60.0, 0], dtype=f64), truth)
    for starts in ({"far": far, "near": near}, {"near": near, "far": far}):
        record = translation_search(ctx, starts)
        assert record.source == "near"
        assert float(mtre(record.pose, truth, landmarks)) < 1e-6


def test_keep_or_discard_is_the_one_decision_on_the_learnt_pose(tiny_model_file, tiny_cases):
    """A diverged learnt stage is discarded; with the search on, the search decides; with no
    refinement at all, a learnt pose that did not diverge is kept."""
    truth, _ = read_truth(tiny_cases / "case_000")
    near = perturb_left(torch.tensor([0, 0, 0, 15.0, 0, 0], dtype=f64), truth)
    far = perturb_left(torch.tensor([0.3, 0, 0, 0, 60.0, 0], dtype=f64), truth)
    start = StageRecord(pose=far, seconds=0.0, source="given")

    _, ctx = _context(tiny_model_file, tiny_cases, search_steps=(1, 1, 1))
    learnt = StageRecord(pose=near, seconds=0.0, diverged=True)
    pose, search = keep_or_discard(ctx, start, learnt)
    assert learnt.kept is False and search is None and torch.equal(pose, far)
    learnt = StageRecord(pose=near, seconds=0.0)
    pose, search = keep_or_discard(ctx, start, learnt)
    assert learnt.kept is True and search is not None and search.source == "similarity"

    _, ctx = _context(tiny_model_file, tiny_cases, refine=False)
    learnt = StageRecord(pose=far, seconds=0.0)
    pose, search = keep_or_discard(ctx, StageRecord(pose=near, seconds=0.0), learnt)
    assert learnt.kept is True and search is None and torch.equal(pose, far)


def _export(counts: torch.Tensor, lut: str) -> torch.Tensor:
    """A fluoroscopy system's 8-bit export of raw ``counts`` (air bright) through a ``lut``, "log" or
    "linear", windowed on the 1st-99th percentiles."""
    y = counts.double().log() if lut == "log" else counts.double()
    lo, hi = torch.quantile(y.flatten(), torch.tensor([0.01, 0.99], dtype=f64))
    return ((y - lo) / (hi - lo)).clamp(0, 1).mul(255).round()


def test_a_processed_export_is_read_with_the_lut_that_images_the_ct(tiny_model_file, tiny_cases):
    """An 8-bit export of intensities (a linear LUT) is read as one, and a log LUT's export as before:
    at the true pose, the CT decides."""
    from SphericalRegLib.register.stages import choose_reading

    case = read_case(tiny_cases / "case_000")
    truth, _ = read_truth(tiny_cases / "case_000")
    registrar = Registrar(load_model(tiny_model_file, case.ct), case.ct)
    for lut, encoding in (("linear", "processed-linear"), ("log", "auto")):
        ctx = registrar.context(_export(case.xray, lut), case.camera)
        notes = choose_reading(ctx, truth)
        assert ctx.xray.encoding == encoding and len(notes) == (lut == "linear")
    ctx = registrar.context(case.xray, case.camera)  # raw counts: nothing to choose
    assert choose_reading(ctx, truth) == [] and ctx.xray.encoding == "auto"


def test_the_start_the_search_did_not_keep_is_refined_too_and_the_lower_cost_goes_on(tiny_model_file, tiny_cases):
    """The search kept a start 60 mm off; the learnt stage's answer, 3 mm off, lies in another basin:
    both run the first intensity level, and the one that ends it lower (the near one) goes on and
    counts as the learnt stage's answer kept. A start a fraction of a degree and a millimetre away is
    the same basin and is not run twice."""
    case = read_case(tiny_cases / "case_000")
    truth, landmarks = read_truth(tiny_cases / "case_000")
    near = perturb_left(torch.tensor([0, 0, 0, 3.0, 0, 0], dtype=f64), truth)
    far = perturb_left(torch.tensor([0.3, 0, 0, 0, 60.0, 0], dtype=f64), truth)
    options = RegisterOptions(refine_levels=TINY_LEVELS, other_start_levels=1)
    registrar = Registrar(load_model(tiny_model_file, case.ct), case.ct, options)
    stages = {"similarity": StageRecord(pose=near, seconds=0.0),
              "search": StageRecord(pose=far, seconds=0.0, source="initial",
                                    candidates={"initial": far, "similarity": near})}
    assert registrar._other_start(stages, far) == ("similarity", near)
    registrar._refine_from_both(registrar.context(case.xray, case.camera), stages, far, "similarity", near)
    won, lost = stages["intensity"], stages["other start"]
    assert won.source == "similarity" and lost.source == "initial" and stages["similarity"].kept is True
    assert won.iterations > lost.iterations  # the winner went on through the second level
    assert float(mtre(won.pose, truth, landmarks)) < float(mtre(lost.pose, truth, landmarks))
    close = perturb_left(torch.tensor([0.005, 0, 0, 0.5, 0, 0], dtype=f64), near)
    stages["search"].candidates = {"initial": near, "similarity": close}
    assert registrar._other_start(stages, near) is None
    off = Registrar(load_model(tiny_model_file, case.ct), case.ct, RegisterOptions(other_start_levels=0))
    stages["search"].candidates = {"initial": far, "similarity": near}
    assert off._other_start(stages, far) is None
    with pytest.raises(InputError, match="other_start_levels"):
        RegisterOptions(other_start_levels=-1)


def test_without_a_learnt_stage_the_start_before_the_search_can_be_the_other_start(tiny_model_file, tiny_cases):
    """With ``unsearched_start`` the initial pose as it was before the search (3 mm off) is refined
    beside the search's pick (60 mm off) and wins on cost; without it, or when the search did not
    move the start, only the pick is refined."""
    case = read_case(tiny_cases / "case_000")
    truth, landmarks = read_truth(tiny_cases / "case_000")
    near = perturb_left(torch.tensor([0, 0, 0, 3.0, 0, 0], dtype=f64), truth)
    far = perturb_left(torch.tensor([0, 0, 0, 0, 60.0, 0], dtype=f64), truth)
    stages = {"initial": StageRecord(pose=near, seconds=0.0, source="regressor"),
              "search": StageRecord(pose=far, seconds=0.0, source="initial", candidates={"initial": far})}
    model = load_model(tiny_model_file, case.ct)
    both = Registrar(model, case.ct, RegisterOptions(refine_levels=TINY_LEVELS, unsearched_start=True))
    assert both._other_start(stages, far) == (UNSEARCHED, near)
    both._refine_from_both(both.context(case.xray, case.camera), stages, far, UNSEARCHED, near)
    won, lost = stages["intensity"], stages["other start"]
    assert won.source == UNSEARCHED and lost.source == "initial" and "similarity" not in stages
    assert float(mtre(won.pose, truth, landmarks)) < float(mtre(lost.pose, truth, landmarks))
    assert both._other_start({**stages, "search": StageRecord(pose=near, seconds=0.0, source="initial",
                                                             candidates={"initial": near})}, near) is None
    pick_only = Registrar(model, case.ct, RegisterOptions(refine_levels=TINY_LEVELS, unsearched_start=False))
    assert pick_only._other_start(stages, far) is None
