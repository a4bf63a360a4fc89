"""Image-intensifier distortion undone before registration (SphericalRegLib.distortion, RegisterOptions.distortion),
fitted per view when several views pin the pose (RegisterOptions.fit_distortion_rounds), and read off one view's
residual patch shifts (RegisterOptions.residual_distortion_rounds, the depth uncertainty it leaves)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from SphericalRegLib.alignment import DistortionFit
from SphericalRegLib.distortion import distort, undistort, validate_distortion
from SphericalRegLib.errors import InputError
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.model import load_model
from SphericalRegLib.physics import PLAIN, _distortion
from SphericalRegLib.register import RegisterOptions, Registrar
from SphericalRegLib.register.records import ViewResult
from SphericalRegLib.register.residuals import ncc_residual
from SphericalRegLib.register.stages import _best_distortion, significant_distortion
from SphericalRegLib.simulate import write_cases
from fixtures import tiny_ct, tiny_levels, write_ct

f64 = torch.float64


def smooth_image(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(1, 1, 12, 12, generator=g, dtype=f64), n, mode="bicubic", align_corners=True)[0, 0]


def test_undistort_inverts_the_simulated_image_intensifier_warp():
    image = smooth_image()
    warped = _distortion(image, replace(PLAIN, pincushion=0.08, s_distortion=0.04))
    restored = undistort(warped[None, None], torch.tensor([[0.08, 0.04]], dtype=f64))[0, 0]
    inner = slice(16, 112)  # the corners leave the warped field
    before = (warped - image)[inner, inner].abs().mean()
    after = (restored - image)[inner, inner].abs().mean()
    assert after < 0.1 * before


def test_no_distortion_is_the_identity():
    image = smooth_image(40)
    same = undistort(image[None, None], torch.zeros(1, 2, dtype=f64))[0, 0]
    assert torch.allclose(same, image, atol=1e-12)


@pytest.mark.parametrize("bad", ["abc", (0.1,), (0.5, 0.0), (float("nan"), 0.0), (0.1, 0.0, 0.0)])
def test_a_distortion_that_is_not_two_plausible_numbers_is_refused(bad):
    with pytest.raises(InputError, match="distortion"):
        RegisterOptions(distortion=bad)


def test_the_options_read_the_coefficients_as_given_on_the_command_line():
    assert RegisterOptions(distortion=["0.08", "-0.02"]).distortion == (0.08, -0.02)
    assert validate_distortion((0, 0)) == (0.0, 0.0)


def test_a_known_distortion_makes_the_true_pose_image_the_distorted_xray_better(tiny_model_file, tiny_cases):
    case_dir = tiny_cases / "case_000"
    case = read_case(case_dir)
    truth, _ = read_truth(case_dir)
    distorted = _distortion(case.xray.to(f64), replace(PLAIN, pincushion=0.15))
    model = load_model(tiny_model_file, case.ct)
    costs = {}
    for known in (None, (0.15, 0.0)):
        options = RegisterOptions(refine_levels=tiny_levels(iterations=1), distortion=known)
        ctx = Registrar(model, case.ct, options).context(distorted, case.camera)
        level = options.refine_levels[-1]
        with torch.no_grad():
            costs[known] = float(0.5 * ctx.intensity_residual(level)(truth[None].to(f64)).pow(2).sum())
    assert costs[(0.15, 0.0)] < 0.8 * costs[None]


def test_the_result_says_which_distortion_was_undone(tiny_model_file, tiny_cases):
    case = read_case(tiny_cases / "case_000")
    options = RegisterOptions(optimizer="none", refine_levels=tiny_levels(iterations=2), search_step_mm=0,
                              distortion=(0.05, 0.01))
    result = Registrar(load_model(tiny_model_file, case.ct), case.ct, options).register(
        case.xray, case.camera, case.init)
    assert result.to_json()["distortion"] == {"pincushion": 0.05, "s_distortion": 0.01}
    plain = RegisterOptions(optimizer="none", refine_levels=tiny_levels(iterations=2), search_step_mm=0)
    assert "distortion" not in Registrar(load_model(tiny_model_file, case.ct), case.ct, plain).register(
        case.xray, case.camera, case.init).to_json()


def test_a_round_field_registered_without_a_dewarp_is_warned_about(tiny_model_file, tiny_cases):
    case = read_case(tiny_cases / "case_000")
    H, W = case.xray.shape
    v, u = torch.meshgrid(torch.arange(H, dtype=f64), torch.arange(W, dtype=f64), indexing="ij")
    outside = ((u - (W - 1) / 2) ** 2 + (v - (H - 1) / 2) ** 2).sqrt() > 0.47 * min(H, W)
    intensifier = torch.where(outside, case.xray.min() * 0.01, case.xray.double())  # behind the iris: dark
    model = load_model(tiny_model_file, case.ct)

    def warnings(image, distortion=None):
        options = RegisterOptions(optimizer="none", refine_levels=tiny_levels(iterations=1), search_step_mm=0,
                                  distortion=distortion)
        result = Registrar(model, case.ct, options).register(image, case.camera, case.init)
        return [w for w in result.warnings if "round" in w]

    assert len(warnings(intensifier)) == 1 and "--distortion" in warnings(intensifier)[0]
    assert warnings(intensifier, (0.05, 0.0)) == []  # dewarped: nothing to warn about
    assert warnings(case.xray) == []  # a flat panel's square field


def test_distort_is_the_simulators_warp_and_undistort_its_inverse():
    image = smooth_image()
    coefficients = torch.tensor([[0.08, 0.04]], dtype=f64)
    warped = distort(image[None, None], coefficients)
    assert torch.equal(warped[0, 0], _distortion(image, replace(PLAIN, pincushion=0.08, s_distortion=0.04)))
    inner = slice(16, 112)
    assert (undistort(warped, coefficients)[0, 0] - image)[inner, inner].abs().max() < 0.02


@pytest.mark.parametrize("known", [(0.08, 0.03), (0.0, 0.0), (0.05, -0.045)])
def test_the_fit_finds_the_warp_between_a_drr_and_its_distorted_xray(known):
    drr = smooth_image(128, seed=3)[None, None]
    noise = 0.01 * torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(1), dtype=f64)
    xray = distort(drr, torch.tensor([known], dtype=f64)) + noise
    fitted = _best_distortion(xray, drr, torch.ones(128, 128, dtype=torch.bool), ncc_residual(16))
    assert abs(float(fitted[0]) - known[0]) <= 0.005 and abs(float(fitted[1]) - known[1]) <= 0.0075


@pytest.fixture(scope="module")
def two_view_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two_views")
    write_ct(tiny_ct(), folder / "ct.nii.gz")
    write_cases(folder / "ct.nii.gz", folder / "cases", 1, seed=5, size=48, views=2, log=lambda m: None)
    return folder / "cases" / "case_000"


def test_several_views_fit_each_views_distortion_and_one_view_never_does(tiny_model_file, two_view_case):
    case = read_case(two_view_case)
    truth, _ = read_truth(two_view_case)
    warped = distort(case.views[1].xray.to(f64)[None, None], torch.tensor([[0.1, 0.0]], dtype=f64))[0, 0]
    views = [case.views[0], replace(case.views[1], xray=warped)]
    options = RegisterOptions(optimizer="none", refine_levels=tiny_levels(iterations=3), search_step_mm=0,
                              fit_distortion_rounds=2)
    registrar = Registrar(load_model(tiny_model_file, case.ct), case.ct, options)
    result = registrar.register(case.xray, case.camera, truth, other_views=views[1:])
    saved = result.to_json()
    fitted = [view["distortion"] for view in saved["per_view"]]
    assert "distortion" not in saved  # nothing was given for every view
    assert fitted[1]["pincushion"] > 0.05 and abs(fitted[0]["pincushion"]) < 0.05
    assert "distortion" in result.stages and any("distortion fitted" in note for note in result.notes)
    alone = registrar.register(case.xray, case.camera, truth)
    assert "distortion" not in alone.stages and "distortion" not in alone.to_json()


def test_a_fit_at_the_edge_of_the_range_tried_is_warned_about(tiny_cases):
    camera = read_case(tiny_cases / "case_000").camera

    def view(name, k, s):
        return ViewResult(name, camera, torch.eye(4, dtype=f64), distortion={"pincushion": k, "s_distortion": s})

    plausible = [view("view 0", 0.0, 0.0), view("view_1", 0.085, -0.02)]
    assert Registrar._distortion_fit_warnings(plausible) == []
    assert Registrar._distortion_fit_warnings([ViewResult("view 0", camera, torch.eye(4, dtype=f64))]) == []
    edges = [view("view 0", 0.145, 0.0), view("view_1", 0.0, -0.0675), view("view_2", -0.045, 0.0)]
    warned = Registrar._distortion_fit_warnings(edges)
    assert [w.split(":")[0] for w in warned] == ["view 0", "view_1", "view_2"]
    assert all("edge of the range" in w for w in warned)


def fit_of(k, s, se=0.004):
    return DistortionFit(torch.tensor([[k, s]]), torch.tensor([[se, se]]), torch.tensor([60]))


def test_only_a_large_well_determined_warp_counts_as_one():
    assert significant_distortion(fit_of(0.05, 0.03)).tolist() == [[True, True]]
    assert significant_distortion(fit_of(0.011, -0.03)).tolist() == [[False, True]]  # the noise of plain X-rays
    assert significant_distortion(fit_of(0.05, 0.05, se=0.03)).tolist() == [[False, False]]  # too few patches
    assert significant_distortion(fit_of(0.024, 0.0, se=0.011)).tolist() == [[False, False]]  # 2.2 sd: not undone
    assert significant_distortion(fit_of(-0.05, -0.03)).tolist() == [[False, True]]  # a barrel is no intensifier's
    nan = DistortionFit(torch.full((1, 2), float("nan")), torch.full((1, 2), float("nan")), torch.tensor([0]))
    assert significant_distortion(nan).tolist() == [[False, False]]


def test_a_warp_one_view_shows_makes_its_depth_uncertain_by_a_third_of_it_times_the_distance(tiny_model_file,
                                                                                              tiny_cases):
    case = read_case(tiny_cases / "case_000")
    truth, _ = read_truth(tiny_cases / "case_000")
    registrar = Registrar(load_model(tiny_model_file, case.ct), case.ct)
    depth = float((truth.to(f64) @ torch.cat([case.ct.centre.to(f64), torch.ones(1, dtype=f64)]))[2])
    plain, undone = SimpleNamespace(distortion=None), SimpleNamespace(distortion=torch.tensor([0.05, 0.0], dtype=f64))
    assert registrar._warp_depth_sd(plain, truth, fit_of(0.011, 0.0)) == 0.0  # nothing there
    assert registrar._warp_depth_sd(plain, truth, fit_of(0.06, 0.0, se=0.03)) == 0.0  # nothing measurable
    assert registrar._warp_depth_sd(plain, truth, fit_of(0.06, 0.0)) == pytest.approx(depth / 3 * 0.06)
    # undone: the depth rests on the fit, uncertain by its standard errors and whatever warp is still measured
    assert registrar._warp_depth_sd(undone, truth, fit_of(0.0, 0.0, se=0.005)) == pytest.approx(
        depth / 3 * 0.005 * 2**0.5)
    assert registrar._warp_depth_sd(undone, truth, fit_of(0.012, 0.0, se=0.005)) == pytest.approx(
        depth / 3 * (0.012**2 + 2 * 0.005**2) ** 0.5)


@pytest.fixture(scope="module")
def example_case(tmp_path_factory):
    """A plain simulated X-ray of the example chest CT (256 px) and its truth."""
    from SphericalRegLib.example import example_ct_path

    folder = tmp_path_factory.mktemp("example_case")
    write_cases(example_ct_path(), folder, 1, seed=1000, log=lambda m: None)
    return folder / "case_000"


def test_one_views_pincushion_is_read_off_its_patches_undone_and_its_depth_called_uncertain(example_case):
    """An undewarped intensifier frame registered from its true pose: left as it is, the pose slides
    centimetres along the central ray and looks aligned; read off the patches and undone, the depth
    comes back, the result says what was undone, and the confidence is capped with a warning."""
    from SphericalRegLib.confidence import load_calibration
    from SphericalRegLib.evaluation.rows import errors

    case = read_case(example_case)
    truth, landmarks = read_truth(example_case)
    warped = _distortion(case.xray.to(f64), replace(PLAIN, pincushion=0.07)).float()
    shipped = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "chest_example.pt"
    model = load_model(shipped, case.ct)
    outcome = {}
    for rounds in (0, 2):
        options = RegisterOptions(optimizer="none", search_step_mm=0, residual_distortion_rounds=rounds)
        result = Registrar(model, case.ct, options, load_calibration(shipped)).register(warped, case.camera, truth)
        outcome[rounds] = result, errors(result.camera_from_world.to(f64), truth, landmarks, case.camera)
    (left, left_error), (undone, undone_error) = outcome[0], outcome[2]
    assert left_error["depth"] > 8 and "distortion" not in left.to_json()
    assert undone_error["depth"] < 0.5 * left_error["depth"]
    assert 0.05 < undone.to_json()["distortion"]["pincushion"] < 0.09
    assert any("read off the residual patch shifts" in note for note in undone.notes)
    for result in (left, undone):  # either way the depth rests on a warp: never a confident answer
        assert result.confidence < 0.8 and any("uncertain by about" in w for w in result.warnings)
        u = result.uncertainty  # and the uncertainty shown carries the warp's share
        assert u["depth_sd_mm"] >= u["warp_depth_sd_mm"] > 1 and u["raw_depth_sd_mm"] < u["warp_depth_sd_mm"]
