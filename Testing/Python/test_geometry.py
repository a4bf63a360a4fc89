"""The SE(3)/SO(4) contract every other module relies on."""

import math

import pytest
import torch

from SphericalRegLib import geometry as g
from SphericalRegLib.camera import Camera, canonical_ap_pose, project
from SphericalRegLib.poses import camera_frame_offset, evaluation_poses

torch.manual_seed(0)
f64 = torch.float64


def random_twists(n, rot=0.8, trans=50.0, seed=0):
    """Seeded twists whose rotation angles stay below 3 rad, inside log's principal range."""
    xi = torch.randn(n, 6, dtype=f64, generator=torch.Generator().manual_seed(seed))
    xi[:, :3] *= rot
    xi[:, 3:] *= trans
    angle = xi[:, :3].norm(dim=-1, keepdim=True)
    xi[:, :3] *= (3.0 / angle).clamp(max=1.0)
    return xi


def test_exp_log_round_trip():
    xi = random_twists(200)
    assert torch.allclose(g.se3_log(g.se3_exp(xi)), xi, atol=1e-10)


@pytest.mark.parametrize("angle", [1e-10, 1e-6, 1e-3, math.pi - 1e-3, math.pi - 1e-7])
def test_exp_log_stable_near_zero_and_pi(angle):
    axis = torch.nn.functional.normalize(torch.randn(8, 3, dtype=f64), dim=-1)
    xi = torch.cat([axis * angle, torch.randn(8, 3, dtype=f64) * 10], -1)
    T = g.se3_exp(xi)
    assert torch.allclose(T[:, :3, :3].transpose(1, 2) @ T[:, :3, :3], torch.eye(3, dtype=f64), atol=1e-12)
    assert torch.allclose(g.se3_log(T), xi, atol=1e-6)


def test_exp_matches_matrix_exponential():
    xi = random_twists(10)
    hat = torch.zeros(10, 4, 4, dtype=f64)
    hat[:, :3, :3] = g.skew(xi[:, :3])
    hat[:, :3, 3] = xi[:, 3:]
    assert torch.allclose(g.se3_exp(xi), torch.linalg.matrix_exp(hat), atol=1e-9)


def test_left_increment_moves_in_the_camera_frame():
    T = canonical_ap_pose(torch.tensor([5.0, -3.0, 7.0]), 1000.0)
    xi = torch.tensor([0, 0, 0, 1.0, 2.0, 3.0], dtype=f64)
    X = torch.randn(5, 3, dtype=f64)
    moved = g.transform_points(g.perturb_left(xi, T), X) - g.transform_points(T, X)
    assert torch.allclose(moved, xi[3:].expand(5, 3))


def test_inverse():
    T = g.se3_exp(random_twists(5))
    assert torch.allclose(g.se3_inverse(T) @ T, torch.eye(4, dtype=f64).expand(5, 4, 4), atol=1e-12)


def test_geodesics_are_left_invariant_metrics():
    A, B, G = (g.se3_exp(random_twists(6)) for _ in range(3))
    L = 150.0
    d = g.geodesic_se3(A, B, L)
    assert torch.allclose(g.geodesic_se3(G @ A, G @ B, L), d, atol=1e-8)
    assert torch.allclose(g.geodesic_se3(B, A, L), d, atol=1e-8)
    assert torch.allclose(g.geodesic_se3(A, A, L), torch.zeros(6, dtype=f64), atol=1e-6)
    rot = g.make_pose(g.so3_exp(torch.tensor([0.0, 0.2, 0.0], dtype=f64)), torch.zeros(3, dtype=f64))
    assert math.isclose(float(g.double_geodesic(torch.eye(4, dtype=f64), rot, L)), 0.2 * L, rel_tol=1e-9)


def test_so4_distance_is_bi_invariant_and_matches_eigen_angles():
    L = 300.0
    A, B, G = (g.so4_embed(g.se3_exp(random_twists(6, trans=100.0)), L) for _ in range(3))
    assert torch.allclose(A.transpose(1, 2) @ A, torch.eye(4, dtype=f64).expand(6, 4, 4), atol=1e-10)
    assert torch.allclose(torch.linalg.det(A), torch.ones(6, dtype=f64))
    d = g.so4_geodesic(A, B)
    assert torch.allclose(g.so4_geodesic(G @ A, G @ B), d, atol=1e-9)
    assert torch.allclose(g.so4_geodesic(A @ G, B @ G), d, atol=1e-9)
    angles = torch.linalg.eigvals(A.transpose(1, 2) @ B).angle()
    assert torch.allclose(d, (angles**2).sum(-1).div(2).sqrt(), atol=1e-9)


def test_so4_embedding_keeps_rotation_angles_and_maps_small_translations_to_t_over_2L():
    R = g.so3_exp(torch.tensor([0.0, 0.0, 0.3], dtype=f64))
    I = torch.eye(4, dtype=f64)
    assert math.isclose(float(g.geodesic_so4(I, g.make_pose(R, torch.zeros(3, dtype=f64)), 1.0)), 0.3, rel_tol=1e-9)
    t = g.make_pose(torch.eye(3, dtype=f64), torch.tensor([0.0, 1.0, 0.0], dtype=f64))
    for L in (10.0, 1000.0, 1e5):
        assert math.isclose(float(g.geodesic_so4(I, t, L)), 0.5, rel_tol=1e-2)


@pytest.mark.parametrize("dist", [g.geodesic_se3, g.double_geodesic, g.geodesic_so4])
def test_squared_distances_have_finite_second_derivatives(dist):
    xi = torch.zeros(6, dtype=f64, requires_grad=True)
    T0, Tg = g.se3_exp(random_twists(2))
    d2 = dist(g.perturb_left(xi, T0), Tg, 100.0) ** 2
    (grad,) = torch.autograd.grad(d2, xi, create_graph=True)
    (hess_row,) = torch.autograd.grad(grad[0], xi)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0 and torch.isfinite(hess_row).all()


def test_canonical_ap_view_reads_as_a_radiograph():
    """Patient's right on the viewer's left, head at the top, source anterior."""
    iso = torch.tensor([10.0, 20.0, 30.0], dtype=f64)
    cam = Camera(1000.0, (1.0, 1.0), (63.5, 63.5), (128, 128))
    T = canonical_ap_pose(iso, cam.sdd)
    right, left = iso + torch.tensor([50.0, 0, 0], dtype=f64), iso - torch.tensor([50.0, 0, 0], dtype=f64)
    head = iso + torch.tensor([0, 0, 50.0], dtype=f64)
    uv = project(torch.stack([iso, right, left, head]), T, cam)
    assert torch.allclose(uv[0], torch.tensor([63.5, 63.5], dtype=f64))
    assert uv[1, 0] < uv[0, 0] < uv[2, 0]
    assert uv[3, 1] < uv[0, 1]
    source = g.se3_inverse(T)[:3, 3]
    assert torch.allclose(source, iso + torch.tensor([0, 800.0, 0], dtype=f64))


def test_evaluation_offsets_turn_about_the_isocentre_and_are_seeded():
    d = 800.0
    D = camera_frame_offset(torch.tensor([0.1, -0.2, 0.3], dtype=f64), torch.zeros(3, dtype=f64), d)
    p = torch.tensor([[0.0, 0.0, d]], dtype=f64)
    assert torch.allclose(g.transform_points(D, p), p)
    iso = torch.zeros(3, dtype=f64)
    a, b = evaluation_poses(iso, 1000.0, 500, seed=3)
    assert torch.equal(a, evaluation_poses(iso, 1000.0, 500, seed=3)[0])
    offsets = g.transform_points(a, iso[None])[:, 0] - torch.tensor([0, 0, d], dtype=f64)
    assert 40 < float(offsets[:, 2].std()) < 80 and 20 < float(offsets[:, 0].std()) < 40
