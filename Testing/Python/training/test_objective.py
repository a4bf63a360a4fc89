"""The objective's maths: the gradient target of the pose distances, on poses sampled from a tiny CT."""

from __future__ import annotations

import torch

from SphericalRegLib.geometry import perturb_left, se3_exp
from SphericalRegLib.training import pose_distance, target_gradient
from SphericalRegLib.training.objective import METRICS, depth_weight


def test_target_gradient_points_uphill_and_depends_on_the_metric(trainer):
    g = torch.Generator().manual_seed(5)
    batch = trainer.sample(3, g, augment=False)
    moving, truth = batch["moving"], batch["truth"]
    args = (trainer.length, trainer.isocentre, trainer.depth)
    targets = {m: target_gradient(moving, truth, m, *args) for m in METRICS}
    for metric, gs in targets.items():
        d0 = pose_distance(moving, truth, metric, *args)
        step = -1e-3 * gs / gs.norm(dim=-1, keepdim=True) * torch.tensor([0.01] * 3 + [10.0] * 3, dtype=torch.float64)
        d1 = pose_distance(perturb_left(step, moving), truth, metric, *args)
        assert (d1 < d0).all(), metric
    for other in ("so4", "view"):
        cos = torch.nn.functional.cosine_similarity(targets["se3"], targets[other], dim=-1)
        assert (cos < 1 - 1e-6).all(), other  # different targets, not merely rescaled


def test_the_view_metric_counts_a_shift_along_the_central_ray_by_what_it_magnifies(trainer):
    args = (trainer.length, trainer.isocentre, trainer.depth)
    truth = trainer.reference[None].double()
    w = depth_weight(trainer.length, trainer.depth)
    assert 0 < w < 1
    for axis, expected in ((3, 5.0), (4, 5.0), (5, 5.0 * w)):  # camera x, y (across the ray), z (along it)
        xi = torch.zeros(1, 6, dtype=torch.float64)
        xi[0, axis] = 5.0
        moved = se3_exp(xi) @ truth  # a translation in the camera frame moves the isocentre alike
        assert torch.allclose(pose_distance(moved, truth, "view", *args), torch.tensor([expected], dtype=torch.float64))
        assert torch.allclose(pose_distance(moved, truth, "se3", *args), torch.tensor([5.0], dtype=torch.float64))


def test_weighted_direction_loss_weighs_samples_by_their_gradient_norm():
    from SphericalRegLib.training import direction_loss

    target = torch.tensor([[1.0, 0, 0, 1, 0, 0], [1.0, 0, 0, 1, 0, 0]], dtype=torch.float64)
    g = torch.tensor([[0.0, 1, 0, 0, 1, 0], [0.0, 1, 0, 0, 1, 0]], dtype=torch.float64)  # equal norms
    assert torch.allclose(direction_loss(g, target, weighted=True), direction_loss(g, target))
    g = torch.tensor([[0.0, 3, 0, 0, 3, 0], [0.0, 1, 0, 0, 1, 0]], dtype=torch.float64)  # same directions
    weighted = direction_loss(g, target, weighted=True)
    assert torch.allclose(weighted, direction_loss(g, target) * torch.tensor([1.5, 0.5], dtype=torch.float64))
