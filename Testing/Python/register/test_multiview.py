"""Joint registration of several views (Registrar with other_views, register_case, outputs)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from SphericalRegLib import cli
from SphericalRegLib.errors import InputError
from SphericalRegLib.evaluation.rows import errors
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.model import load_model
from SphericalRegLib.register import RegisterOptions, Registrar, write_outputs
from SphericalRegLib.simulate import simulate_case, write_cases
from SphericalRegLib.views import orbit
from fixtures import tiny_ct, tiny_levels, write_ct

OPTIONS = RegisterOptions(optimizer="none", refine_levels=tiny_levels(iterations=10), search_steps=(1, 1, 1))


@pytest.fixture(scope="module")
def two_view_case(tiny_volume, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two_view_case")
    write_ct(tiny_volume, folder / "ct.nii.gz")
    write_cases(folder / "ct.nii.gz", folder / "cases", 1, seed=5, size=48, views=2, log=lambda m: None)
    return folder / "cases" / "case_000"


@pytest.fixture(scope="module")
def registrar(two_view_case, tiny_model_file):
    ct = read_case(two_view_case).ct
    return Registrar(load_model(tiny_model_file, ct), ct, OPTIONS)


def test_a_second_view_pins_the_depth_that_one_view_cannot_see(two_view_case, registrar):
    case = read_case(two_view_case)
    truth, landmarks = read_truth(two_view_case)
    single = registrar.register(case.xray, case.camera, case.init)
    joint = registrar.register(case.xray, case.camera, case.init, other_views=case.views[1:])
    e1 = errors(single.camera_from_world, truth, landmarks, case.camera)
    e2 = errors(joint.camera_from_world, truth, landmarks, case.camera)
    assert e2["depth"] < 1.0 and e2["depth"] < 0.5 * e1["depth"]
    # J^T J of both views says so too: the joint depth sd is far below view 0's alone
    assert joint.uncertainty["depth_sd_mm"] < 0.5 * joint.views[0].uncertainty["depth_sd_mm"]
    # view 0's own sd in the joint run is a single view's, as the single run reports; the two are taken
    # at poses that differ by the single run's depth error, so they agree in size, not in value
    assert 0.25 < joint.views[0].uncertainty["depth_sd_mm"] / single.uncertainty["depth_sd_mm"] < 4
    for view in joint.views:  # each view alone: blind along its own central ray, sharp across it
        assert view.uncertainty["depth_sd_mm"] > 3 * view.uncertainty["inplane_sd_mm"]
    summary = joint.to_json()
    assert summary["views"] == 2 and [v["name"] for v in summary["per_view"]] == ["view 0", "view_1"]
    assert single.to_json()["views"] == 1 and "per_view" not in single.to_json()
    assert torch.allclose(joint.views[1].camera_from_world, case.views[1].camera_from_reference @ joint.camera_from_world)


def test_a_view_of_other_anatomy_is_named_in_a_warning(two_view_case, registrar):
    case = read_case(two_view_case)
    truth, _ = read_truth(two_view_case)
    elsewhere = tiny_ct(blobs=((-0.3, 0.35, 0.0), (0.3, -0.3, 0.3), (0.05, 0.05, -0.4)), n=24)
    elsewhere.data[:, :, :12] = -1000.0  # half a body
    view = case.views[1]
    image = simulate_case(elsewhere, view.camera_from_reference @ truth, view.camera, torch.Generator().manual_seed(0))
    result = registrar.register(case.xray, case.camera, case.init, other_views=[dataclasses.replace(view, xray=image)])
    assert any(w.startswith("view_1: its final NCC") for w in result.warnings), result.warnings


def test_a_further_view_exported_the_other_way_round_is_inverted_and_named(two_view_case, registrar):
    case = read_case(two_view_case)
    truth, landmarks = read_truth(two_view_case)
    view = case.views[1]
    flipped = dataclasses.replace(view, xray=view.xray.max() + view.xray.min() - view.xray)
    result = registrar.register(case.xray, case.camera, truth, other_views=[flipped], check_polarity=True)
    assert [w for w in result.warnings if "polarity" in w and w.startswith("view_1")], result.warnings
    assert not any(w.startswith("the X-ray:") for w in result.warnings)  # view 0 was read right
    assert errors(result.camera_from_world, truth, landmarks, case.camera)["mTRE"] < 1.0


def test_multi_view_outputs_and_the_register_command(two_view_case, tiny_model_file, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["register", str(two_view_case), "--model", str(tiny_model_file), "--init", "--out", str(out),
            "--optimizer", "none", "--no-refine"]
    assert cli.main(args + ["--views", "3"]) == 2
    assert "--views: is 3 but" in capsys.readouterr().err
    assert cli.main(args) in (0, 3)
    printed = capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert result["views"] == 2 and len(result["per_view"]) == 2
    assert "2 views registered jointly" in printed and "the confidence is the lowest view's" in printed
    for view in result["per_view"]:  # each view's residual shift, which its confidence reads
        assert f"{view['name']} NCC {view['final_ncc']:.2f}, residual shift {view['residual_shift_mm']:.2f} mm" in printed
    assert {p.name for p in out.iterdir()} >= {"overlay.png", "overlay_view_1.png", "world_from_camera_view_1.tfm"}
    assert "view_1" in json.loads((out / "transform.json").read_text())["views"]
    assert cli.main(args + ["--views", "1", "--overwrite"]) in (0, 3)
    assert json.loads((out / "result.json").read_text())["views"] == 1


def test_a_relative_pose_known_only_roughly_is_refined_within_its_prior_and_reported(two_view_case, tiny_model_file):
    case = read_case(two_view_case)
    truth, _ = read_truth(two_view_case)
    view = case.views[1]
    off = dataclasses.replace(view, camera_from_reference=orbit(3.0, 0.0, 800.0) @ view.camera_from_reference)
    options = dataclasses.replace(OPTIONS, relative_rotation_sd_deg=2.0)
    result = Registrar(load_model(tiny_model_file, case.ct), case.ct, options).register(
        case.xray, case.camera, truth, other_views=[off])
    assert list(result.stages)[-1] == "relative" and result.views[0].relative is None
    moved = result.views[1].relative
    assert 0 < moved["rotation_deg"] <= 4 * 2.0 + 1e-6
    refined = torch.tensor(moved["camera_from_reference"], dtype=torch.float64)
    assert torch.allclose(result.views[1].camera_from_world, refined @ result.camera_from_world)
    assert "relative_pose_refined" in result.to_json()["per_view"][1]
    with pytest.raises(InputError, match="relative_rotation_sd_deg: is -1"):
        RegisterOptions(relative_rotation_sd_deg=-1.0)
