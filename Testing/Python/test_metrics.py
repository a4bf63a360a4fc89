import math

import torch

from SphericalRegLib.camera import Camera, canonical_ap_pose
from SphericalRegLib.geometry import make_pose
from SphericalRegLib.metrics import centroid_errors, default_landmarks, mpe, mtre, summarise
from SphericalRegLib.volume import Volume


def test_mtre_of_a_pure_translation_is_its_length():
    T = canonical_ap_pose(torch.zeros(3), 1000.0)
    shift = make_pose(torch.eye(3, dtype=torch.float64), torch.tensor([0.3, 0.4, 0.0], dtype=torch.float64))
    X = torch.randn(20, 3, dtype=torch.float64) * 50
    assert torch.allclose(mtre(shift @ T, T, X), torch.tensor(0.5, dtype=torch.float64))


def test_depth_error_is_weak_in_projection_but_full_in_3d():
    cam = Camera(1000.0, (0.5, 0.5), (63.5, 63.5), (128, 128))
    T = canonical_ap_pose(torch.zeros(3), cam.sdd)
    along_ray = make_pose(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64))
    X = torch.randn(20, 3, dtype=torch.float64) * 20
    assert mtre(along_ray @ T, T, X) > 4.9
    assert mpe(along_ray @ T, T, X, cam) < 0.5
    depth, inplane = centroid_errors(along_ray @ T, T, X)
    assert math.isclose(float(depth), 5.0, rel_tol=1e-9) and float(inplane) < 1e-9


def test_default_landmarks_lie_in_dense_voxels_on_a_grid():
    hu = torch.full((40, 40, 20), -1000.0)
    hu[10:30, 10:30, 5:15] = 400.0
    A = torch.diag(torch.tensor([1.0, 1.0, 2.0, 1.0], dtype=torch.float64))
    A[:3, 3] = torch.tensor([-20.0, -20.0, -20.0])
    pts = default_landmarks(Volume(hu, A), grid_mm=10)
    assert len(pts) > 0
    ijk = (pts - A[:3, 3]) / torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)
    idx = ijk.round().long()
    assert (hu[idx[:, 0], idx[:, 1], idx[:, 2]] > -200).all()
    mm = ijk * torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)
    assert torch.allclose(mm % 10, torch.zeros_like(mm))


def test_summary_row_counts_sub_millimetre_cases():
    row = summarise("x", [0.5, 0.9, 1.5, 3.0], [0.1, 2.0, 0.2, 5.0], [1, 2, 3, 4], [0, 0, 0, 0], [1.0, 2.0, 3.0, 4.0])
    assert row["SMSR"] == 0.5 and row["SMSR_2D"] == 0.5 and row["median_seconds"] == 2.5
    assert row["cases"] == 4
