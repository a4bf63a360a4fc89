"""Levenberg-Marquardt, gradient descent and Adam on SE(3) (SphericalRegLib.optimize)."""

import math

import pytest
import torch

from SphericalRegLib.geometry import perturb_left, rotation_angle, se3_exp, transform_points
from SphericalRegLib.optimize import (
    adam,
    gradient_descent,
    least_squares_cost,
    levenberg_marquardt,
    twist_jacobian,
)

DT = torch.float64


def point_problem(B=1, noise=0.0, seed=0):
    """Points about an isocentre 800 mm in front of the camera; Y = T_true X (+ noise)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, 30, 3, generator=g, dtype=DT) * 50
    xi_true = torch.randn(B, 6, generator=g, dtype=DT) * torch.tensor([0.2, 0.2, 0.2, 20, 20, 20], dtype=DT)
    xi_true[:, 5] += 800
    T_true = se3_exp(xi_true)
    Y = transform_points(T_true, X) + noise * torch.randn(B, 30, 3, generator=g, dtype=DT)
    # start 20 degrees (about a random axis) and 50 mm away
    axis = torch.nn.functional.normalize(torch.randn(B, 3, generator=g, dtype=DT), dim=-1)
    direction = torch.nn.functional.normalize(torch.randn(B, 3, generator=g, dtype=DT), dim=-1)
    T0 = perturb_left(torch.cat([axis * math.radians(20), direction * 50], -1), T_true)
    residual = lambda T: (transform_points(T, X) - Y).flatten(1)  # noqa: E731
    return residual, T0, T_true


def relative_error(T, T_true):
    return ((T - T_true).flatten(1).norm(dim=-1) / T_true.flatten(1).norm(dim=-1))


def test_lm_reaches_the_known_minimum_faster_than_gradient_descent():
    residual, T0, T_true = point_problem()
    out = levenberg_marquardt(residual, T0, step_tol=(1e-12, 1e-10))
    assert out.converged.all() and not out.diverged.any()
    assert out.iterations.item() < 10
    assert relative_error(out.pose, T_true).item() < 1e-6
    cost = out.stacked("cost")[:, 0]
    assert (cost[1:] <= cost[:-1]).all()  # rejected steps keep the cost, accepted ones lower it
    assert out.stacked("accepted")[1:].any()

    # Gradient descent with the largest stable uniform rate, 1 / lambda_max(J^T J) at the minimum.
    _, J = twist_jacobian(residual, T_true)
    lr = 1 / torch.linalg.eigvalsh(J.transpose(-1, -2) @ J).max().item()
    gd = gradient_descent(least_squares_cost(residual), T0, iters=300, lr_rot=lr, lr_trans=lr)
    gd_cost = gd.stacked("cost")[:, 0]
    assert gd_cost[-1] < gd_cost[0]  # it does descend ...
    target = 1e-6 * cost[0]
    reached = (gd_cost <= target).nonzero()
    gd_iterations = reached[0].item() if len(reached) else math.inf
    lm_iterations = (cost <= target).nonzero()[0].item()
    assert lm_iterations < gd_iterations  # ... but the ill-conditioned problem needs LM
    assert len(gd.history) == 301 and set(gd.history[0]) == set(out.history[0])


def test_lm_with_noise_finds_the_least_squares_fit():
    residual, T0, T_true = point_problem(noise=1.0, seed=1)
    out = levenberg_marquardt(residual, T0)
    assert out.converged.all()
    assert out.cost.item() <= least_squares_cost(residual)(T_true).item()
    r, J = twist_jacobian(residual, out.pose)
    gradient = (J.transpose(-1, -2) @ r[..., None])[..., 0]
    assert gradient.abs().max().item() < 1e-6 * (J.abs().max() * r.abs().max()).item()
    assert math.degrees(rotation_angle(out.pose[:, :3, :3], T_true[:, :3, :3]).item()) < 0.5
    assert (out.pose[:, :3, 3] - T_true[:, :3, 3]).norm().item() < 2.0


def test_scalar_residual_has_rank_one_normal_matrix_vector_residual_rank_six():
    residual, T0, _ = point_problem()
    scalar = lambda T: residual(T).norm(dim=-1, keepdim=True)  # noqa: E731
    for fn, rank in ((scalar, 1), (residual, 6)):
        _, J = twist_jacobian(fn, T0)
        eig = torch.linalg.eigvalsh(J.transpose(-1, -2) @ J)[0]
        assert int((eig > 1e-10 * eig.max()).sum()) == rank


@pytest.mark.parametrize("method", ["forward", "reverse"])
def test_twist_jacobian_matches_central_differences(method):
    residual, T0, _ = point_problem(B=2)
    curved = lambda T: torch.cat([residual(T), torch.sin(residual(T) / 30)], -1)  # noqa: E731
    r, J = twist_jacobian(curved, T0, method=method)
    assert J.shape == (2, 180, 6) and torch.equal(r, curved(T0))
    h = 1e-6
    for j in range(6):
        e = torch.zeros(6, dtype=DT)
        e[j] = h
        fd = (curved(perturb_left(e, T0)) - curved(perturb_left(-e, T0))) / (2 * h)
        assert torch.allclose(J[..., j], fd, rtol=1e-6, atol=1e-6 * fd.abs().max().item())


@pytest.mark.parametrize("method", ["forward", "reverse"])
def test_unrolled_lm_backpropagates_into_residual_parameters(method):
    residual, T0, _ = point_problem()
    scale = torch.tensor(1.0, dtype=DT, requires_grad=True)
    # four points (M = 12) keep the reverse-mode double backward small
    learnable = lambda T: residual(T)[:, :12] - (scale - 1) * 100  # noqa: E731
    out = levenberg_marquardt(learnable, T0, max_iters=3, differentiable=True, jacobian=method)
    assert out.pose.requires_grad
    out.pose[:, :3, 3].sum().backward()
    assert scale.grad is not None and torch.isfinite(scale.grad) and scale.grad.abs() > 1e-6
    # without differentiable the result carries no graph
    assert not levenberg_marquardt(learnable, T0, max_iters=3).pose.requires_grad


def test_non_finite_residual_is_flagged_diverged():
    residual, T0, T_true = point_problem()
    # the minimum lies beyond a wall the residual cannot be evaluated through
    wall = (T0[:, 2, 3] + T_true[:, 2, 3]) / 2
    side = torch.sign(T0[:, 2, 3] - wall)

    def walled(T):
        r = residual(T)
        return torch.where((side * (T[:, 2, 3] - wall) > 0)[:, None], r, torch.full_like(r, math.nan))

    out = levenberg_marquardt(walled, T0)
    assert out.diverged.all() and not out.converged.any()
    assert torch.isfinite(out.pose).all() and torch.isfinite(out.cost).all()
    assert (side * (out.pose[:, 2, 3] - wall) > 0).all()  # the last good pose, on the start's side

    start_bad = levenberg_marquardt(walled, T_true)
    assert start_bad.diverged.all() and start_bad.iterations.item() == 0

    fenced = levenberg_marquardt(residual, T0, max_translation=10.0)
    assert fenced.diverged.all() and not fenced.converged.any()

    gd = adam(least_squares_cost(walled), T0, iters=500, lr_rot=1e-2, lr_trans=5.0)
    assert gd.diverged.all() and torch.isfinite(gd.pose).all()


def test_batch_elements_converge_independently():
    residual, T0, T_true = point_problem(B=3, seed=2)
    T0 = T0.clone()
    T0[1] = T_true[1]  # already at its minimum: stops at once while the others run
    out = levenberg_marquardt(residual, T0, step_tol=(1e-12, 1e-10))
    assert out.converged.all() and not out.diverged.any()
    assert (relative_error(out.pose, T_true) < 1e-6).all()
    assert out.iterations[1] < out.iterations[0] and out.iterations[1] < out.iterations[2]
    for b in (0, 2):
        alone = levenberg_marquardt(lambda T: residual(T.expand(3, 4, 4))[b : b + 1], T0[b : b + 1],
                                    step_tol=(1e-12, 1e-10))
        assert alone.iterations.item() == out.iterations[b].item()
        assert torch.allclose(alone.pose[0], out.pose[b], atol=1e-9)


def test_adam_descends_with_the_shared_history():
    residual, T0, T_true = point_problem()
    out = adam(least_squares_cost(residual), T0, iters=200, lr_rot=1e-2, lr_trans=2.0)
    cost = out.stacked("cost")[:, 0]
    assert cost[-1] < 1e-2 * cost[0]
    assert out.stacked("pose").shape == (201, 1, 4, 4) and out.iterations.item() == 200
    assert not out.converged.any() and not out.diverged.any()


def test_lm_registers_a_drr_with_a_pixel_residual():
    from SphericalRegLib.camera import Camera, canonical_ap_pose
    from SphericalRegLib.geometry import make_pose
    from SphericalRegLib.render import Renderer

    n, spacing = 32, 4.0
    ijk_to_ras = torch.diag(torch.tensor([spacing, spacing, spacing, 1.0], dtype=DT))
    ijk_to_ras[:3, 3] = -spacing * (n - 1) / 2
    ijk = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij"), -1)
    blobs = [((10, 12, 16), 3.0), ((20, 18, 10), 4.0), ((16, 22, 22), 2.5), ((22, 8, 20), 2.0)]
    volume = sum(torch.exp(-(ijk - torch.tensor(c)).pow(2).sum(-1) / (2 * s * s)) for c, s in blobs)[None]
    camera = Camera(sdd=1000.0, pixel_spacing=(2.0, 2.0), principal_point=(23.5, 23.5), image_size=(48, 48))
    renderer = Renderer(camera, ijk_to_ras, (n, n, n), n_samples=32)
    T_true = canonical_ap_pose(torch.zeros(3, dtype=DT), camera.sdd)[None]
    xray = renderer(volume, T_true)
    residual = lambda T: (renderer(volume, T) - xray).flatten(1)  # noqa: E731, float32 under float64 poses

    # start 2 degrees about each camera axis through the isocentre and 3-5 mm away
    p = T_true[0, :3, 3]
    R = se3_exp(torch.cat([torch.tensor([2.0, -1.5, 2.0], dtype=DT).deg2rad(), torch.zeros(3, dtype=DT)]))[:3, :3]
    T0 = make_pose(R, p - R @ p + torch.tensor([3.0, -2.0, 5.0], dtype=DT))[None] @ T_true

    _, J = twist_jacobian(residual, T0)
    A = J.transpose(-1, -2) @ J
    d = A.diagonal(dim1=-2, dim2=-1).rsqrt()
    correlation = d[..., :, None] * A * d[..., None, :]  # LM's own scaling; radians vs mm drop out
    assert torch.linalg.eigvalsh(correlation).min() > 1e-5  # rank 6

    out = levenberg_marquardt(residual, T0)
    assert out.converged.all() and not out.diverged.any() and out.iterations.item() < 15
    assert math.degrees(rotation_angle(out.pose[:, :3, :3], T_true[:, :3, :3]).item()) < 0.01
    assert (out.pose[:, :3, 3] - T_true[:, :3, 3]).norm().item() < 0.05


def test_lm_leaves_frozen_twist_components_alone():
    """free = all but camera z: every accepted step is exp(delta) T with no z translation in delta,
    and the cost still falls through the other five."""
    from SphericalRegLib.geometry import se3_inverse, se3_log

    residual, T0, T_true = point_problem()
    res = levenberg_marquardt(residual, T0, max_iters=30, free=torch.tensor([True] * 5 + [False]))
    assert 0.5 * residual(res.pose).pow(2).sum() < 0.1 * 0.5 * residual(T0).pow(2).sum()
    poses = [h["pose"] for h in res.history]
    steps = torch.cat([se3_log(b @ se3_inverse(a)) for a, b in zip(poses[:-1], poses[1:])])
    assert steps[:, 3:5].abs().max() > 1.0 and steps[:, 5].abs().max() < 1e-6


def test_lm_stops_when_a_rejected_step_promised_less_than_cost_tol():
    """r = atan(x) from x = 3: the Gauss-Newton step (-12.5) overshoots and is rejected although its
    linear model promised to remove the whole cost. A ``cost_tol`` above that promise (1) calls the
    element settled at once, where it stands; the default works on to the minimum at x = 0."""
    def residual(T):
        return torch.atan(T[:, 0, 3:4])

    start = torch.eye(4, dtype=torch.float64)[None].clone()
    start[0, 0, 3] = 3.0
    settled = levenberg_marquardt(residual, start, cost_tol=1.0, max_iters=50)
    assert bool(settled.converged[0]) and int(settled.iterations[0]) == 1
    assert torch.equal(settled.pose, start)
    strict = levenberg_marquardt(residual, start, max_iters=50)
    assert bool(strict.converged[0]) and float(strict.cost[0]) < 1e-10
    assert int(strict.iterations[0]) > 1


def test_broyden_updates_reach_the_exact_minimum_with_fewer_derivative_passes():
    """Projected points (pinhole, 1000 mm focal length) with pixel noise: LM with Broyden updates
    ends where LM with exact Jacobians ends, stops only on an exact Jacobian (its gradient there is
    at the noise fit's floor), and evaluates derivatives fewer times."""
    _, T0, T_true = point_problem(seed=3)
    g = torch.Generator().manual_seed(4)
    X = torch.randn(1, 30, 3, generator=g, dtype=DT) * 50

    def project(T):
        P = transform_points(T, X)
        return 1000 * P[..., :2] / P[..., 2:]

    target = project(T_true) + 0.5 * torch.randn(1, 30, 2, generator=g, dtype=DT)
    passes = {"derivative": 0}

    def residual(T):
        if torch._C._functorch.is_functorch_wrapped_tensor(T):  # under jacfwd: a derivative pass
            passes["derivative"] += 1
        return (project(T) - target).flatten(1)

    exact = levenberg_marquardt(residual, T0, max_iters=100)
    exact_passes, passes["derivative"] = passes["derivative"], 0
    updated = levenberg_marquardt(residual, T0, max_iters=100, broyden=True)
    assert bool(exact.converged[0]) and bool(updated.converged[0])
    assert relative_error(updated.pose, exact.pose).item() < 1e-4
    assert abs(updated.cost.item() - exact.cost.item()) <= 1e-4 * exact.cost.item()
    assert passes["derivative"] < exact_passes
    r, J = twist_jacobian(residual, updated.pose)
    gradient = (J.transpose(-1, -2) @ r[..., None])[..., 0]
    r0, J0 = twist_jacobian(residual, T0)
    assert gradient.norm() < 1e-3 * (J0.transpose(-1, -2) @ r0[..., None]).norm()


def test_broyden_updates_refuse_a_differentiable_run():
    residual, T0, _ = point_problem()
    with pytest.raises(ValueError, match="broyden"):
        levenberg_marquardt(residual, T0, broyden=True, differentiable=True)


def test_extensions_cross_a_flat_valley_that_gauss_newton_creeps_along():
    """r = (x, 3 cos(x / 3)) along camera x: the second, large residual's own curvature cancels J^T J,
    so the cost is nearly flat where Gauss-Newton's model is steep and its steps are far too short
    (gain ratio near 2). Doubling such steps goes much further in the same iterations; the cost
    still never rises."""
    def residual(T):
        x = T[:, 0, 3:4]
        W = T[:, :3, :3] - T[:, :3, :3].transpose(-1, -2)
        return torch.cat([x, 3 * torch.cos(x / 3), T[:, 1:3, 3], W[:, 0, 1:], W[:, 1, 2:]], dim=-1)

    start = torch.eye(4, dtype=DT)[None].clone()
    start[0, 0, 3] = 2.0
    plain = levenberg_marquardt(residual, start, max_iters=10, cost_tol=0.0)
    extended = levenberg_marquardt(residual, start, max_iters=10, cost_tol=0.0, max_extensions=3)
    x_plain, x_extended = plain.pose[0, 0, 3].abs().item(), extended.pose[0, 0, 3].abs().item()
    assert x_extended < 0.5 * x_plain
    cost = extended.stacked("cost")[:, 0]
    assert (cost[1:] <= cost[:-1]).all()
    with pytest.raises(ValueError, match="extensions"):
        levenberg_marquardt(residual, start, max_extensions=1, differentiable=True)


def test_lm_hands_back_its_residual_and_says_whether_its_jacobian_is_exact_there():
    """The final pose's uncertainty reuses LM's last linearisation: the residual must be the one at
    the returned pose, and a Jacobian flagged exact must be what a fresh derivative pass gives (one
    that ended on an accepted step was not recomputed there, and is not flagged)."""
    flagged = 0
    for broyden in (False, True):
        for seed in range(5):
            residual, T0, _ = point_problem(B=3, noise=0.5, seed=seed)
            res = levenberg_marquardt(residual, T0, max_iters=100, broyden=broyden)
            r, J = twist_jacobian(residual, res.pose)
            assert torch.allclose(res.residual, r, rtol=0, atol=1e-9)
            for k in torch.nonzero(res.exact)[:, 0]:
                assert torch.equal(res.jacobian[k], J[k])
            flagged += int(res.exact.sum())
    assert flagged > 0


def test_nielsen_damping_finds_a_usable_step_in_fewer_rejections():
    """r = atan(x / 10) from x = 40: an undamped Gauss-Newton step overshoots (the model is linear
    where the residual saturates), so a run started with far too little damping must raise it
    before a step is accepted. Nielsen's rule raises it 2, 8, 64, ... times where the simple rule
    doubles it, so it spends fewer of the iteration cap on rejections; both reach the minimum, and a
    name that is neither rule is refused."""
    def residual(T):
        return torch.atan(T[:, 0, 3:4] / 10)

    start = torch.eye(4, dtype=DT)[None].clone()
    start[0, 0, 3] = 40.0
    rejections = {}
    for rule in ("simple", "nielsen"):
        out = levenberg_marquardt(residual, start, damping=1e-6, max_iters=100, damping_rule=rule)
        assert bool(out.converged[0]) and float(out.cost[0]) < 1e-10
        accepted = out.stacked("accepted")[1:, 0]
        rejections[rule] = int(accepted.long().argmax())  # iterations before the first accepted step
    assert rejections["nielsen"] < rejections["simple"] and rejections["simple"] >= 6
    with pytest.raises(ValueError, match="damping_rule"):
        levenberg_marquardt(residual, start, damping_rule="marquardt")
