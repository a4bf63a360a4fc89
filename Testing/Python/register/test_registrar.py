"""The Registrar's whole pipeline and its result (SphericalRegLib.register.registrar, records)."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

from SphericalRegLib.errors import Cancelled
from SphericalRegLib.geometry import perturb_left
from SphericalRegLib.io import read_case
from SphericalRegLib.model import load_model
from SphericalRegLib.register import RegisterOptions, Registrar
from fixtures import tiny_levels

f64 = torch.float64
TINY_LEVELS = tiny_levels(iterations=4)


def test_a_pose_off_the_field_of_view_is_flagged_not_returned_as_good(tiny_model_file, tiny_cases):
    case = read_case(tiny_cases / "case_000")
    away = perturb_left(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, -900.0], dtype=f64), case.init)  # behind the source
    options = RegisterOptions(optimizer="none", refine_levels=TINY_LEVELS)
    result = Registrar(load_model(tiny_model_file, case.ct), case.ct, options).register(case.xray, case.camera, away)
    assert result.diverged and result.confidence == 0.0


def test_every_stage_leaves_a_record_and_result_json_summarises_them(tiny_model_file, tiny_cases):
    case = read_case(tiny_cases / "case_000")
    options = RegisterOptions(iterations=3, refine_levels=TINY_LEVELS, search_steps=(1, 1, 1), learnt_stage="always")
    seen = []
    result = Registrar(load_model(tiny_model_file, case.ct), case.ct, options).register(
        case.xray, case.camera, progress=lambda stage, fraction: seen.append(stage))
    assert list(result.stages) == ["initial", "similarity", "search", "intensity"]
    assert result.stages["initial"].source == "regressor"
    assert result.stages["similarity"].kept in (True, False)  # decided, not left open
    assert torch.equal(result.camera_from_world, result.stages["intensity"].pose)
    assert result.iterations == sum(s.iterations for s in result.stages.values())
    assert result.similarity == result.stages["similarity"].cost[-1]
    summary = result.to_json()
    assert summary["stages"]["similarity"]["kept"] == result.stages["similarity"].kept
    assert summary["final_ncc"] == result.final_ncc and -1 <= result.final_ncc <= 1
    assert summary["residual_shift_mm"] == result.residual_shift_mm >= 0  # mm on the detector
    assert {"initial", "similarity", "search", "intensity 1"} <= set(seen)


def test_the_learnt_stage_runs_by_default_only_for_a_model_whose_similarity_validated(tiny_model_file, tiny_cases):
    case = read_case(tiny_cases / "case_000")
    model = load_model(tiny_model_file, case.ct)
    options = RegisterOptions(iterations=2, refine_levels=tiny_levels(iterations=1), search_steps=(1, 1, 1))
    result = Registrar(model, case.ct, options).register(case.xray, case.camera)
    assert list(result.stages) == ["initial", "search", "intensity"]  # the tiny model's similarity did not learn
    assert len(result.notes) == 1 and "did not run" in result.notes[0] and result.to_json()["notes"] == result.notes
    model.history = {"val_step": [10], "val_grad_within30": [0.7], "val_grad_angle_median_deg": [20.0]}
    result = Registrar(model, case.ct, options).register(case.xray, case.camera)
    assert list(result.stages) == ["initial", "similarity", "search", "intensity"] and not result.notes
    model.history = {"val_step": [10], "val_grad_within30": [0.45], "val_grad_angle_median_deg": [34.0]}
    assert not Registrar(model, case.ct, options).runs_learnt_stage  # most gradients must point the right way
    model.history = {}  # never validated: untested learnt parts stay out unless asked for
    assert not Registrar(model, case.ct, options).runs_learnt_stage
    assert Registrar(model, case.ct, RegisterOptions(learnt_stage="always")).runs_learnt_stage
    assert not Registrar(model, case.ct, RegisterOptions(optimizer="none", learnt_stage="always")).runs_learnt_stage


def test_a_registration_that_worked_states_its_uncertainty_depth_the_weakest(tiny_model_file, tiny_cases):
    case = read_case(tiny_cases / "case_000")
    options = RegisterOptions(optimizer="none", refine_levels=tiny_levels(iterations=25), search_step_mm=0)
    result = Registrar(load_model(tiny_model_file, case.ct), case.ct, options).register(
        case.xray, case.camera, case.init)
    assert not result.diverged and result.covariance.shape == (6, 6)
    u = result.to_json()["uncertainty"]
    assert u["calibrated"] is False  # the tiny model has no calibration: said so
    assert 0 < u["inplane_sd_mm"] < u["depth_sd_mm"]  # one view pins depth least
    r, J, exact = result.stages["intensity"].linearisation
    registrar = Registrar(load_model(tiny_model_file, case.ct), case.ct, options)
    ctx = registrar.context(case.xray, case.camera)
    fresh, _ = registrar._uncertainty(ctx, options.refine_levels[-1], result.camera_from_world, result.views)
    assert exact  # LM stopped on an exact Jacobian, which stood in for a fresh one: the same covariance
    assert torch.allclose(result.covariance, fresh, rtol=1e-6, atol=0)


def test_a_set_cancel_flag_stops_the_registration(tiny_model_file, tiny_cases):
    case = read_case(tiny_cases / "case_000")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        Registrar(load_model(tiny_model_file, case.ct), case.ct, RegisterOptions(refine_levels=TINY_LEVELS)).register(
            case.xray, case.camera, cancel=cancel)


def test_a_guessed_polarity_the_ct_contradicts_is_inverted_and_said(tiny_model_file, tiny_cases):
    from SphericalRegLib.io import read_truth

    case = read_case(tiny_cases / "case_000")
    truth, _ = read_truth(tiny_cases / "case_000")
    inverted = case.xray.max() + case.xray.min() - case.xray  # the frame exported the other way round
    options = RegisterOptions(optimizer="none", refine_levels=TINY_LEVELS, search_step_mm=0)
    registrar = Registrar(load_model(tiny_model_file, case.ct), case.ct, options)
    result = registrar.register(inverted, case.camera, truth, photometric="MONOCHROME2", check_polarity=True)
    assert result.to_json()["photometric"] == "MONOCHROME1"
    assert any("polarity" in w and "MONOCHROME1" in w for w in result.warnings)
    with warnings.catch_warnings():  # trying the inverse must not warn that the X-ray looks inverted
        warnings.simplefilter("error", UserWarning)
        kept = registrar.register(case.xray, case.camera, truth, photometric="MONOCHROME2", check_polarity=True)
    assert kept.photometric == "MONOCHROME2" and not any("polarity" in w for w in kept.warnings)
    unchecked = registrar.register(inverted, case.camera, truth, photometric="MONOCHROME2")
    assert unchecked.photometric == "MONOCHROME2"  # a DICOM tag's word is not second-guessed


def test_a_regressor_start_from_a_field_far_smaller_than_the_training_cameras_is_warned_about(tiny_model_file,
                                                                                             tiny_cases):
    from SphericalRegLib.camera import Camera

    case = read_case(tiny_cases / "case_000")
    model = load_model(tiny_model_file, case.ct)
    options = RegisterOptions(optimizer="none", refine_levels=TINY_LEVELS, search_step_mm=0)
    registrar = Registrar(model, case.ct, options)
    def side(camera):  # of the training camera's detector, both at the same sdd
        return camera.cols * camera.pixel_spacing[0] / (model.camera.cols * model.camera.pixel_spacing[0])

    assert case.camera.sdd == model.camera.sdd and side(case.camera) > 0.8
    full = registrar.register(case.xray, case.camera)
    assert not any("exposed field" in w for w in full.warnings)
    n, rows = case.camera.cols * 2 // 5, case.camera.rows  # the central 40% of the detector, as a smaller C-arm's
    start = (rows - n) // 2
    cu, cv = case.camera.principal_point
    small = Camera(case.camera.sdd, case.camera.pixel_spacing, (cu - start, cv - start), (n, n))
    crop = case.xray[start:start + n, start:start + n]
    warned = [w for w in registrar.register(crop, small).warnings if "exposed field" in w]
    assert len(warned) == 1 and "view 0" in warned[0] and "--init" in warned[0]
    said = float(warned[0].split("exposed field is ")[1].split("%")[0]) / 100
    assert abs(said - side(small)) < 0.05
    assert not any("exposed field" in w for w in registrar.register(crop, small, case.init).warnings)  # a given start


def test_a_view_whose_edges_lie_far_from_where_the_pose_puts_them_gets_no_confidence_and_a_warning(
        tiny_model_file, tiny_cases):
    """Left 12 mm off across the central ray (no search, no refinement), the residual shift measures
    the miss on patches that match: the view is misaligned, scored 0 and named in a warning."""
    from SphericalRegLib.io import read_truth

    case = read_case(tiny_cases / "case_000")
    truth, _ = read_truth(tiny_cases / "case_000")
    off = perturb_left(torch.tensor([0.0, 0.0, 0.0, 12.0, 0.0, 0.0], dtype=f64), torch.as_tensor(truth, dtype=f64))
    options = RegisterOptions(optimizer="none", refine=False, refine_levels=TINY_LEVELS)
    registrar = Registrar(load_model(tiny_model_file, case.ct), case.ct, options)
    result = registrar.register(case.xray, case.camera, off)
    assert result.views[0].misaligned and result.confidence == 0.0
    assert any("lie" in w and "from where this pose puts them" in w for w in result.warnings)
    assert result.views[0].to_json()["misaligned"] is True  # result.json's per_view, with several views
    near = registrar.register(case.xray, case.camera, torch.as_tensor(truth, dtype=f64))
    assert not near.views[0].misaligned
