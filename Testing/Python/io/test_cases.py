"""Case folders and ground truth (SphericalRegLib.io.cases)."""


import numpy as np
import pytest
import SimpleITK as sitk
import torch
from fixtures import oblique_ct

from SphericalRegLib.camera import Camera
from SphericalRegLib.errors import InputError
from SphericalRegLib.geometry import make_pose, so3_exp
from SphericalRegLib.io import (
    read_case,
    read_truth,
    write_json,
)

CAMERA = Camera(1000.0, (0.5, 0.4), (14.5, 9.5), (20, 30))


def write_case(folder, with_init=True):
    folder.mkdir()
    image, _ = oblique_ct()
    sitk.WriteImage(image, str(folder / "ct.nii.gz"))
    pixels = (np.random.default_rng(3).random((20, 30)) * 60000).astype(np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(folder / "xray.png"))
    CAMERA.save(folder / "geometry.json")
    T = make_pose(so3_exp(torch.tensor([0.2, 0.1, -0.3], dtype=torch.float64)), torch.tensor([1.0, 2, 900]))
    if with_init:
        write_json(folder / "init.json", {"camera_from_world": T})
    return T


def test_read_case_and_truth(tmp_path):
    T = write_case(tmp_path / "case_000")
    landmarks = torch.randn(12, 3, dtype=torch.float64) * 50
    write_json(tmp_path / "case_000.truth.json", {"camera_from_world": T, "landmarks_world": landmarks})
    case = read_case(tmp_path / "case_000")
    assert case.ct.shape == (5, 6, 7) and case.xray.shape == (20, 30) and case.camera == CAMERA
    assert torch.allclose(case.init, T) and case.paths["ct"].name == "ct.nii.gz"
    T2, X = read_truth(tmp_path / "case_000")
    assert torch.allclose(T2, T) and torch.allclose(X, landmarks)
    write_case(tmp_path / "case_001", with_init=False)
    assert read_case(tmp_path / "case_001").init is None


def test_read_case_errors(tmp_path):
    T = write_case(tmp_path / "c")
    np.save(tmp_path / "c" / "xray.npy", np.eye(20, 30))
    with pytest.raises(InputError, match="several X-rays"):
        read_case(tmp_path / "c")
    (tmp_path / "c" / "xray.npy").unlink()
    (tmp_path / "c" / "ct.nii.gz").rename(tmp_path / "c" / "volume.nii.gz")
    with pytest.raises(InputError, match="has no CT"):
        read_case(tmp_path / "c")
    (tmp_path / "c" / "volume.nii.gz").rename(tmp_path / "c" / "ct.nii.gz")
    bad = T.clone()
    bad[:3, :3] *= 2
    write_json(tmp_path / "c" / "init.json", {"camera_from_world": bad}, overwrite=True)
    with pytest.raises(InputError, match="init.json: camera_from_world is not a rigid"):
        read_case(tmp_path / "c")
    with pytest.raises(InputError, match="c.truth.json: file not found"):
        read_truth(tmp_path / "c")
    write_json(tmp_path / "c.truth.json", {"camera_from_world": T})
    with pytest.raises(InputError, match="missing landmarks_world"):
        read_truth(tmp_path / "c")
