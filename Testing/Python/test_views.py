"""Several views of one case: the C-arm turn, simulation and reading (SphericalRegLib.views,
simulate.write_cases(views=...), io.read_case)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SphericalRegLib.camera import ISOCENTRE_FRACTION
from SphericalRegLib.errors import InputError
from SphericalRegLib.geometry import transform_points
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.simulate import write_cases
from SphericalRegLib.views import orbit, view_poses
from fixtures import write_ct

f64 = torch.float64


def test_an_orbit_turns_about_the_isocentre_and_a_quarter_turn_sees_depth_in_plane():
    sdd = 1000.0
    C = orbit(90.0, 0.0, ISOCENTRE_FRACTION * sdd)
    iso = torch.tensor([[0.0, 0.0, ISOCENTRE_FRACTION * sdd]], dtype=f64)
    assert torch.allclose(transform_points(C, iso), iso, atol=1e-9)
    # a step along view 0's central ray is a step across view 1's detector
    step = transform_points(C, iso + torch.tensor([[0.0, 0.0, 10.0]], dtype=f64)) - iso
    assert abs(float(step[0, 2])) < 1e-9 and abs(abs(float(step[0, 0])) - 10.0) < 1e-9
    tilted = orbit(75.0, 8.0, 700.0)
    assert torch.allclose(tilted[:3, :3] @ tilted[:3, :3].T, torch.eye(3, dtype=f64), atol=1e-12)
    T = torch.eye(4, dtype=f64).expand(3, 4, 4)
    assert view_poses(torch.stack([torch.eye(4, dtype=f64), C]), T).shape == (2, 3, 4, 4)


@pytest.fixture(scope="module")
def two_view_cases(tmp_path_factory):
    from fixtures import tiny_ct

    folder = tmp_path_factory.mktemp("two_views")
    write_ct(tiny_ct(), folder / "ct.nii.gz")
    write_cases(folder / "ct.nii.gz", folder / "two", 2, seed=5, size=32, views=2, log=lambda m: None)
    write_cases(folder / "ct.nii.gz", folder / "one", 2, seed=5, size=32, log=lambda m: None)
    return folder


def test_simulated_views_follow_the_conventions_and_leave_view_0_as_a_single_view_run(two_view_cases):
    case = read_case(two_view_cases / "two" / "case_001")
    single = read_case(two_view_cases / "one" / "case_001")
    assert len(case.views) == 2 and len(single.views) == 1
    assert torch.equal(case.xray, single.xray) and torch.equal(case.init, single.init)
    assert torch.equal(read_truth(case.folder)[1], read_truth(single.folder)[1])
    view = case.views[1]
    geometry = json.loads((case.folder / "view_1" / "geometry.json").read_text())
    angle = float(torch.rad2deg(torch.arccos((view.camera_from_reference[:3, :3].trace() - 1) / 2)))
    assert 60.0 - 1e-6 <= angle <= 91.0 and geometry["camera_from_reference"] == view.camera_from_reference.tolist()
    assert not torch.equal(view.xray, case.xray)
    assert json.loads((two_view_cases / "two" / "simulation.json").read_text())["views"] == 2
    with pytest.raises(InputError, match="view_1 from an earlier run"):
        write_cases(two_view_cases / "ct.nii.gz", two_view_cases / "two", 1, seed=5, size=32, overwrite=True,
                    log=lambda m: None)


def test_views_may_differ_in_size_and_spacing(two_view_cases, tmp_path):
    import shutil

    import SimpleITK as sitk

    folder = tmp_path / "case"
    shutil.copytree(two_view_cases / "two" / "case_000", folder)
    geometry = json.loads((folder / "view_1" / "geometry.json").read_text())
    geometry.update(image_size=[24, 40], pixel_spacing=[1.5, 1.2], principal_point=[19.5, 11.5])
    (folder / "view_1" / "geometry.json").write_text(json.dumps(geometry))
    pixels = (np.random.default_rng(0).random((24, 40)) * 60000).astype(np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(folder / "view_1" / "xray.png"))
    view = read_case(folder).views[1]
    assert view.xray.shape == (24, 40) and view.camera.pixel_spacing == (1.5, 1.2) and view.name == "view_1"


@pytest.mark.parametrize("damage, message", [
    ("no_geometry", "view_1: has no geometry.json"),
    ("no_relative", "geometry.json: has no camera_from_reference"),
    ("not_rigid", "camera_from_reference is not a rigid transform"),
    ("gap", "has view folders view_1, view_3"),
    ("no_xray", "view_1: has no X-ray"),
])
def test_a_broken_view_is_named_in_the_error(two_view_cases, tmp_path, damage, message):
    import shutil

    folder = tmp_path / "case"
    shutil.copytree(two_view_cases / "two" / "case_000", folder)
    geometry_path = folder / "view_1" / "geometry.json"
    geometry = json.loads(geometry_path.read_text())
    if damage == "no_geometry":
        geometry_path.unlink()
    elif damage == "no_relative":
        del geometry["camera_from_reference"]
        geometry_path.write_text(json.dumps(geometry))
    elif damage == "not_rigid":
        geometry["camera_from_reference"][0][0] = 2.0
        geometry_path.write_text(json.dumps(geometry))
    elif damage == "gap":  # view_1 and view_3, no view_2
        shutil.copytree(folder / "view_1", folder / "view_3")
    elif damage == "no_xray":
        (folder / "view_1" / "xray.png").unlink()
    with pytest.raises(InputError, match=message):
        read_case(folder)


def test_every_view_has_its_own_physics_draw_but_the_same_instruments(tmp_path):
    from fixtures import tiny_ct

    write_ct(tiny_ct(), tmp_path / "ct.nii.gz")
    write_cases(tmp_path / "ct.nii.gz", tmp_path / "cases", 3, seed=11, size=32, views=2, physics="random",
                log=lambda m: None)
    drawn = []
    for i in range(3):
        views = json.loads((tmp_path / "cases" / f"case_{i:03d}.truth.json").read_text())["physics"]
        assert len(views) == 2 and views[0]["physics"] != views[1]["physics"]
        assert views[0].get("instruments") == views[1].get("instruments")
        assert views[0]["physics"]["table"] == views[1]["physics"]["table"]
        drawn.append(views[0]["physics"])
        case = read_case(tmp_path / "cases" / f"case_{i:03d}")
        assert len(case.views) == 2 and all(torch.isfinite(v.xray).all() for v in case.views)
    assert drawn[0] != drawn[1]
    with pytest.raises(InputError, match="physics: is 'xray-tube'.*one of plain"):
        write_cases(tmp_path / "ct.nii.gz", tmp_path / "other", 1, seed=1, size=32, physics="xray-tube")
    assert not (tmp_path / "other").exists()
