"""The pose regressor and its geodesic pose loss."""

from __future__ import annotations

import pytest
import torch

from SphericalRegLib.camera import canonical_ap_pose
from SphericalRegLib.geometry import perturb_left, se3_exp
from SphericalRegLib.regressor import PoseRegressor, pose_loss
from fixtures import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


def test_pose_regressor_outputs_rigid_poses_and_learns():
    torch.manual_seed(0)
    isocentre = torch.tensor([10.0, -20.0, 5.0], dtype=torch.float64)
    reference = canonical_ap_pose(isocentre, 1000.0)
    model = PoseRegressor(reference, isocentre, length=100.0, backbone="resnet10t")
    x = torch.rand(4, 1, 32, 32)
    pred = model(x)
    assert pred.shape == (4, 4, 4) and pred.dtype == torch.float64
    torch.testing.assert_close(pred, reference.expand(4, 4, 4))  # the head starts at T_ref
    truth = perturb_left(torch.randn(4, 6, dtype=torch.float64) * torch.tensor([0.1] * 3 + [20.0] * 3),
                         reference)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        optimiser.zero_grad()
        loss = pose_loss(model(x), truth, model.length)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    pred = model(x).detach()
    R = pred[:, :3, :3]
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3, dtype=R.dtype).expand(4, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(4, dtype=R.dtype))
    torch.testing.assert_close(pred[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=R.dtype).expand(4, 4))
    assert (pred - reference).abs().max() > 1e-3


def test_pose_regressor_offsets_turn_about_the_isocentre():
    """A pure-rotation offset keeps the isocentre where the reference pose put it."""
    isocentre = torch.tensor([10.0, -20.0, 5.0], dtype=torch.float64)
    reference = canonical_ap_pose(isocentre, 1000.0)
    model = PoseRegressor(reference, isocentre, length=100.0, backbone="resnet10t").eval()
    with torch.no_grad():
        model.head.bias[:6] = torch.tensor([1.0, 0.2, 0.0, -0.1, 1.0, 0.3])
    pose = model(torch.rand(1, 1, 32, 32))
    iso = torch.cat([isocentre, torch.ones(1, dtype=torch.float64)])
    torch.testing.assert_close(pose[0] @ iso, reference @ iso)
    assert (pose[0, :3, :3] - reference[:3, :3]).abs().max() > 0.1


def test_pose_loss_is_zero_at_truth_and_in_length_units():
    T = se3_exp(torch.tensor([[0.1, 0.2, -0.1, 5.0, 1.0, 2.0]], dtype=torch.float64))
    assert float(pose_loss(T, T, 50.0)) < 1e-8
    shifted = se3_exp(torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 25.0]], dtype=torch.float64)) @ T
    assert abs(float(pose_loss(shifted, T, 50.0)) - 0.5) < 1e-9
