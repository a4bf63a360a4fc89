"""The registration pipeline: LM on the real residuals, the intensity stage, and the register and
evaluate commands end to end on a tiny CT with a tiny (barely trained) model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from SphericalRegLib import cli
from SphericalRegLib.camera import canonical_ap_pose
from SphericalRegLib.geometry import perturb_left, se3_inverse
from SphericalRegLib.io import read_itk_transform, read_truth
from SphericalRegLib.metrics import mtre
from SphericalRegLib.model import load_model
from SphericalRegLib.optimize import twist_jacobian
from SphericalRegLib.poses import camera_frame_offset
from SphericalRegLib.register import IntensityLevel, RegisterOptions, Registrar, ncc_residual
from SphericalRegLib.render import Renderer
from SphericalRegLib.simulate import write_cases
from tiny import TINY, tiny_ct, write_ct

f64 = torch.float64
# The tiny CT has 6 mm voxels: one intensity level at its own resolution.
TINY_LEVELS = (IntensityLevel(spacing_mm=6.0, image_size=48, patch=8, form="ncc", iterations=25),
               IntensityLevel(spacing_mm=6.0, image_size=48, patch=8, form="difference", iterations=25))


@pytest.fixture(scope="module")
def ct():
    return tiny_ct()


@pytest.fixture(scope="module")
def model_file(ct, tmp_path_factory):
    """A tiny model trained for two steps through the real train command."""
    folder = tmp_path_factory.mktemp("model")
    write_ct(ct, folder / "ct.nii.gz")
    config = folder / "tiny.json"
    config.write_text(json.dumps({"base": "small", **TINY, "similarity_kwargs": dict(embed_dim=8, tokens=9)}))
    out = folder / "model.pt"
    assert cli.main(["train", "--ct", str(folder / "ct.nii.gz"), "--out", str(out), "--config", str(config),
                     "--steps", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def cases(ct, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases")
    write_ct(ct, folder / "ct.nii.gz")
    write_cases(folder / "ct.nii.gz", folder / "cases", 2, seed=5, size=48, log=lambda m: None)
    return folder / "cases"


def test_ncc_residual_forms_give_the_mean_ncc_cost_and_vanish_at_a_match():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 40, 40, generator=g), torch.rand(2, 1, 40, 40, generator=g)
    costs = [0.5 * ncc_residual(8, form)(a, b).pow(2).sum(-1) for form in ("difference", "ncc")]
    assert torch.allclose(costs[0], costs[1], rtol=1e-5)
    assert 0.5 < float(costs[0].mean()) < 1.5  # unrelated images: NCC near 0
    match = ncc_residual(8)(a, 3 * a + 1)
    assert float(match.abs().max()) < 1e-3
    with pytest.raises(ValueError):
        ncc_residual(8, "ssd")


SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "chest_example.pt"


@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_learnt_similarity_residual_has_a_full_rank_jacobian(which, ct, model_file):
    """Per-token distances give J^T J of rank 6 (a scalar similarity would give rank 1): for a tiny
    network and for the shipped model on its CT, the residual LM actually minimises."""
    if which == "shipped":
        from SphericalRegLib.demo import example_ct_path
        from SphericalRegLib.io import read_ct

        ct, model_file = read_ct(example_ct_path()), SHIPPED_MODEL
    model = load_model(model_file, ct)
    camera = model.camera
    T = canonical_ap_pose(ct.centre, camera.sdd)[None]
    truth = camera_frame_offset(torch.tensor([[0.05, -0.04, 0.03]], dtype=f64),
                                torch.tensor([[4.0, -3.0, 6.0]], dtype=f64), 0.8 * camera.sdd) @ T
    renderer = Renderer(camera, model.feature_volume.ijk_to_ras, model.feature_volume.shape)
    mu = model.mu.float()
    with torch.no_grad():
        zx = model.similarity.embed_xray(renderer(mu, truth))
    features = model.feature_volume.data.float()
    residual = lambda pose: model.similarity.residual(zx, model.similarity.embed_drr(renderer(features, pose)))  # noqa: E731
    r, J = twist_jacobian(residual, T)
    assert r.shape[-1] >= 6 and torch.isfinite(J).all()
    JtJ = J[0].T @ J[0]
    scale = JtJ.diagonal().sqrt()  # radians and millimetres differ by the anatomy's size
    tol = 1e-10  # relative; float64 round-off is 1e-16, depth along the ray is weak but real
    assert torch.linalg.matrix_rank(JtJ / scale[:, None] / scale[None, :], rtol=tol) == 6
    Js = (r[..., None] * J).sum(1, keepdim=True)  # d(0.5 |r|^2)/d xi: a scalar similarity's Jacobian
    assert torch.linalg.matrix_rank((Js[0].T @ Js[0]) / scale[:, None] / scale[None, :], rtol=tol) == 1


def test_intensity_stage_registers_a_simulated_xray(ct, model_file, cases):
    """From the case's start pose (5 deg / 15 mm spreads), the intensity stage alone lands within a
    fraction of a voxel on an X-ray simulated with DiffDRR's Siddon and detector physics."""
    from SphericalRegLib.io import read_case

    case = read_case(cases / "case_000")
    truth, landmarks = read_truth(cases / "case_000")
    options = RegisterOptions(optimizer="none", refine_levels=TINY_LEVELS, search_step_mm=0)
    result = Registrar(load_model(model_file, case.ct), case.ct, options).register(case.xray, case.camera, case.init)
    before, after = float(mtre(case.init, truth, landmarks)), float(mtre(result.camera_from_world, truth, landmarks))
    assert after < 0.25 * before and after < 3.0, (before, after, result.stages["intensity"]["cost"], result.diverged)  # voxels are 6 mm
    assert not result.diverged and result.stages["intensity"]["iterations"] > 0


def test_translation_search_keeps_the_start_that_images_the_xray_best(model_file, cases):
    """Of two starting poses, one far off and one a grid step from the truth, the search moves the
    second onto the truth's grid point and says so, whichever order they come in."""
    from SphericalRegLib.io import read_case
    from SphericalRegLib.register import _prepare

    case = read_case(cases / "case_000")
    truth, landmarks = read_truth(cases / "case_000")
    level = IntensityLevel(spacing_mm=6.0, image_size=32, patch=8, form="ncc", iterations=0)
    options = RegisterOptions(refine_levels=TINY_LEVELS, search_level=level, search_step_mm=15.0, search_steps=(1, 1, 1))
    registrar = Registrar(load_model(model_file, case.ct), case.ct, options)
    x, cam, _ = _prepare(case.xray, case.camera, 32, "MONOCHROME2", False)
    step = torch.tensor([[0, 0, 0, 15.0, 0, 0]], dtype=f64)
    near = perturb_left(step, truth[None])
    far = perturb_left(torch.tensor([[0.3, 0, 0, 0, 60.0, 0]], dtype=f64), truth[None])
    for starts, expected in ((torch.cat([far, near]), 1), (torch.cat([near, far]), 0)):
        pose, origin = registrar._search_translation(starts, x.float()[None, None], cam)
        assert origin == expected
        assert float(mtre(pose[0], truth, landmarks)) < 1e-6


def test_register_command_writes_every_output_and_refuses_to_overwrite(model_file, cases, tmp_path):
    out = tmp_path / "out"
    argv = ["register", str(cases / "case_001"), "--model", str(model_file), "--out", str(out)]
    assert cli.main(argv + ["--init"]) in (0, 3)
    result = json.loads((out / "result.json").read_text())
    for key in ("camera_from_world", "seconds", "similarity", "confidence", "iterations"):
        assert key in result
    pose = torch.tensor(result["camera_from_world"], dtype=f64)
    assert torch.allclose(pose[:3, :3] @ pose[:3, :3].T, torch.eye(3, dtype=f64), atol=1e-9)
    assert torch.allclose(read_itk_transform(out / "world_from_camera.tfm"), se3_inverse(pose), atol=1e-6)
    transform = json.loads((out / "transform.json").read_text())
    assert torch.allclose(torch.tensor(transform["world_from_camera"], dtype=f64), se3_inverse(pose))
    assert (out / "overlay.png").stat().st_size > 1000
    before = (out / "result.json").read_text()
    assert cli.main(argv) == 2  # existing outputs are not replaced unasked
    assert (out / "result.json").read_text() == before


def test_a_model_for_another_ct_is_refused_with_a_clear_message(model_file, tmp_path, capsys):
    other = tiny_ct(blobs=((0.1, 0.1, 0.1), (-0.2, 0.2, 0.0), (0.3, -0.3, 0.2)))
    write_ct(other, tmp_path / "ct.nii.gz")
    write_cases(tmp_path / "ct.nii.gz", tmp_path / "cases", 1, seed=1, size=32, log=lambda m: None)
    assert cli.main(["register", str(tmp_path / "cases" / "case_000"), "--model", str(model_file),
                     "--out", str(tmp_path / "out")]) == 2
    assert "another CT" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_pose_off_the_field_of_view_is_flagged_not_returned_as_good(ct, model_file, cases):
    from SphericalRegLib.io import read_case

    case = read_case(cases / "case_000")
    away = perturb_left(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, -900.0], dtype=f64), case.init)  # behind the source
    options = RegisterOptions(optimizer="none", refine_levels=TINY_LEVELS)
    result = Registrar(load_model(model_file, case.ct), case.ct, options).register(case.xray, case.camera, away)
    assert result.diverged and result.confidence == 0.0


def test_evaluate_command_tabulates_methods_and_plots(model_file, cases, tmp_path):
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(cases), "--model", str(model_file), "--out", str(out),
                     "--methods", "ours,ours-gd,regressor,ours-no-intensity,diffpose-ncc,euclidean",
                     "--baseline-iterations", "3"]) == 0
    table = (out / "results.md").read_text()
    for method in ("| ours |", "| ours-gd |", "| regressor |", "| ours-no-intensity |", "| diffpose-ncc |"):
        assert method in table
    assert "Not run: euclidean" in table  # no model given for the ablation: said, not hidden
    for name in ("results.csv", "cases.csv", "cdf.png", "convergence.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "ours" / "case_000" / "result.json").exists()
    rows = (out / "cases.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 5
    # two cases cannot calibrate a confidence: a clear refusal, not a meaningless fit
    assert cli.main(["evaluate", str(cases), "--model", str(model_file), "--out", str(tmp_path / "e2"),
                     "--methods", "ours", "--calibrate"]) == 2


def test_evaluate_shards_merge_into_one_table(cases, tmp_path):
    common = ["evaluate", str(cases), "--methods", "diffpose-ncc", "--baseline-iterations", "2"]
    for k in (0, 1):
        assert cli.main(common + ["--shard", f"{k}/2", "--out", str(tmp_path / f"s{k}")]) == 0
    assert cli.main(["evaluate", "--merge", str(tmp_path / "s0"), str(tmp_path / "s1"),
                     "--out", str(tmp_path / "all")]) == 0
    rows = (tmp_path / "all" / "cases.csv").read_text().splitlines()
    assert len(rows) == 3 and {r.split(",")[1] for r in rows[1:]} == {"case_000", "case_001"}
    assert "| diffpose-ncc | 2 |" in (tmp_path / "all" / "results.md").read_text()
    assert cli.main(common + ["--shard", "2/2", "--out", str(tmp_path / "bad")]) == 2
