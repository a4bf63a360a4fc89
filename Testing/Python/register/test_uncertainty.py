"""The final pose's covariance and the standard deviations it gives (SphericalRegLib.register.uncertainty)."""

import torch

from SphericalRegLib.geometry import make_pose, perturb_left, se3_log
from SphericalRegLib.register.uncertainty import fit_scale, point_standard_deviations, twist_covariance

f64 = torch.float64


def test_covariance_of_a_linear_residual_is_the_gauss_newton_one():
    """r(exp(xi) T0) = J log(...) + noise: the covariance is s^2 (J^T J)^-1 with s^2 the noise variance."""
    g = torch.Generator().manual_seed(0)
    J = torch.randn(4000, 6, dtype=f64, generator=g) * torch.tensor([50.0, 50, 50, 1, 1, 1], dtype=f64)
    noise = 0.1 * torch.randn(4000, dtype=f64, generator=g)
    T0 = make_pose(torch.eye(3, dtype=f64), torch.tensor([0.0, 0, 800.0], dtype=f64))

    def residual(T):
        xi = se3_log(T @ torch.linalg.inv(T0))
        return xi @ J.T + noise

    C = twist_covariance(residual, T0)
    expected = 0.01 * torch.linalg.inv(J.T @ J)
    assert torch.allclose(C, expected, rtol=0.1)


def test_point_sds_follow_the_twist_and_the_scale():
    T = make_pose(torch.eye(3, dtype=f64), torch.tensor([0.0, 0, 800.0], dtype=f64))
    C = torch.diag(torch.tensor([0, 0, 0, 1.0, 4.0, 9.0], dtype=f64))  # translations only: 1, 2, 3 mm sd
    sd = point_standard_deviations(T, C, torch.zeros(3, dtype=f64))
    assert abs(sd["depth_sd_mm"] - 3.0) < 1e-9 and abs(sd["inplane_sd_mm"] - 5 ** 0.5) < 1e-9
    assert abs(point_standard_deviations(T, C, torch.zeros(3, dtype=f64), {"depth": 2.0})["depth_sd_mm"] - 6) < 1e-9
    rot = torch.diag(torch.tensor([1e-6, 0, 0, 0, 0, 0], dtype=f64))  # 1 mrad about camera x moves a point at
    assert abs(point_standard_deviations(T, rot, torch.zeros(3, dtype=f64))["inplane_sd_mm"] - 0.8) < 1e-9  # 800 mm
    assert perturb_left(torch.zeros(6, dtype=f64), T).equal(T)


def test_fit_scale_recovers_how_much_too_small_the_sds_are():
    g = torch.Generator().manual_seed(1)
    sd = 0.5 + torch.rand(4000, dtype=f64, generator=g)
    errors = 3.0 * sd * torch.randn(4000, dtype=f64, generator=g)
    assert abs(fit_scale(errors.abs(), sd, "depth") - 3.0) < 0.15
    planar = 3.0 * sd[:, None] / 2 ** 0.5 * torch.randn(4000, 2, dtype=f64, generator=g)
    assert abs(fit_scale(planar.norm(dim=-1), sd, "inplane") - 3.0) < 0.15
