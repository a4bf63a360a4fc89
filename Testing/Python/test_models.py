"""The learnt parts: equivariant CT features, the token similarity, the pose regressor, augmentation."""

from __future__ import annotations

import math

import pytest
import torch

from SphericalRegLib.augment import random_bone_scale, randomise_xray
from SphericalRegLib.camera import Camera, canonical_ap_pose
from SphericalRegLib.errors import InputError
from SphericalRegLib.features import EquivariantFeatures, PlainFeatures
from SphericalRegLib.geometry import perturb_left, se3_exp
from SphericalRegLib.regressor import PoseRegressor, pose_loss
from SphericalRegLib.render import Renderer
from SphericalRegLib.similarity import SPACES, SimilarityNet, token_distance
from SphericalRegLib.volume import MU_WATER


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for these small networks: on a shared 2-core machine OpenMP's
    spin-waiting made this file about 10x slower with two threads (72 s against 5.5 s measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blob_volume(shape, seed=0, dtype=torch.float32):
    """A few random Gaussian blobs of water-to-bone attenuation, ``(1, I, J, K)``."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, n, dtype=dtype) for n in shape], indexing="ij")
    pos = torch.stack(grids, -1)
    mu = torch.zeros(shape, dtype=dtype)
    for _ in range(5):
        c = (torch.rand(3, generator=g, dtype=dtype) - 0.5) * 1.2
        s = 0.15 + 0.2 * torch.rand(1, generator=g, dtype=dtype)
        mu = mu + MU_WATER * (1 + 2 * torch.rand(1, generator=g, dtype=dtype)) * torch.exp(
            -((pos - c) ** 2).sum(-1) / (2 * s**2))
    return mu[None]


# ----------------------------------------------------------------------------- features

def test_equivariant_features_rotate_with_the_volume():
    """rot90 of the CT rotates the feature volume the same way.

    The kernel lattice of an isotropic grid is mapped onto itself by 90-degree turns and the
    outputs are invariant (0e) fields, so the only error is floating-point round-off: in float64
    it stays below 1e-10 relative (we assert 1e-9).
    """
    torch.manual_seed(0)
    net = EquivariantFeatures(channels=3).double()
    mu = _blob_volume((9, 10, 11), dtype=torch.float64)
    out = net(mu, (2.0, 2.0, 2.0))
    assert out.shape == (3, 9, 10, 11)
    assert torch.equal(out[0], mu[0])
    assert (out[1:] >= 0).all()
    assert out[1:].std() > 0
    for dims in [(1, 2), (1, 3), (2, 3)]:
        rotated = net(torch.rot90(mu, 1, dims), (2.0, 2.0, 2.0))
        expected = torch.rot90(out, 1, dims)
        rel = (rotated - expected).abs().max() / expected.abs().max()
        assert rel < 1e-9, (dims, float(rel))
    # the outputs are 0e (even) fields, so a mirror image mirrors them too
    mirrored = net(torch.flip(mu, (2,)), (2.0, 2.0, 2.0))
    rel = (mirrored - torch.flip(out, (2,))).abs().max() / out.abs().max()
    assert rel < 1e-9, float(rel)


def test_equivariant_features_respect_anisotropic_spacing():
    """On a (1.5, 1.5, 4) mm grid a quarter turn about k maps the kernel lattice onto itself, so
    it commutes with the network; a turn about i does not (the i and k spacings differ) and the
    physical kernel then sees a different neighbourhood."""
    torch.manual_seed(0)
    net = EquivariantFeatures(channels=2).double()
    mu = _blob_volume((9, 9, 5), dtype=torch.float64)
    spacing = (1.5, 1.5, 4.0)
    out = net(mu, spacing)
    about_k = net(torch.rot90(mu, 1, (1, 2)), spacing)
    expected = torch.rot90(out, 1, (1, 2))
    assert (about_k - expected).abs().max() / expected.abs().max() < 1e-9
    swapped = net(mu, (4.0, 1.5, 1.5))
    assert (swapped - out).abs().max() / out.abs().max() > 1e-3


def test_learnt_channels_are_not_a_multiple_of_mu():
    """The learnt field depends on neighbourhoods, so the equivariance test is not passed trivially."""
    torch.manual_seed(0)
    net = EquivariantFeatures(channels=2).double()
    mu = _blob_volume((8, 8, 8), dtype=torch.float64)
    learnt = net(mu, (2.0, 2.0, 2.0))[1]
    plain_ratio = learnt / mu[0].clamp_min(1e-12)
    assert plain_ratio.std() > 1e-3 * plain_ratio.mean()


def test_equivariant_features_batch_anisotropic_spacing_and_gradient():
    torch.manual_seed(0)
    net = EquivariantFeatures(channels=3)
    mu = torch.cat([_blob_volume((8, 9, 6), seed=s) for s in (0, 1)])[:, None]  # (2, 1, I, J, K)
    out = net(mu, torch.tensor([1.5, 1.5, 4.0]))
    assert out.shape == (2, 3, 8, 9, 6)
    single = net(mu[1], torch.tensor([1.5, 1.5, 4.0]))
    torch.testing.assert_close(out[1], single)
    # the learnt channels are of the attenuation's magnitude, so their DRRs are too
    ratio = out[:, 1:].mean() / out[:, 0].mean()
    assert 0.1 < ratio < 10
    out[:, 1:].sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_features_reject_bad_input():
    net = EquivariantFeatures(channels=2)
    with pytest.raises(InputError, match="mu"):
        net(torch.rand(4, 5, 6), (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        net(torch.rand(1, 4, 5, 6), (1.0, 1.0))
    with pytest.raises(InputError, match="channels"):
        EquivariantFeatures(channels=1)


def test_plain_features_is_mu():
    mu = _blob_volume((4, 5, 6))
    assert torch.equal(PlainFeatures()(mu, (1.0, 1.0, 1.0)), mu)
    assert PlainFeatures.channels == 1
    with pytest.raises(ValueError, match="spacing"):
        PlainFeatures()(mu, (1.0, 0.0, 1.0))


# ----------------------------------------------------------------------------- distances

def _points(space, shape, seed):
    from SphericalRegLib.similarity import exp_map
    g = torch.Generator().manual_seed(seed)
    return exp_map(torch.randn(*shape, generator=g, dtype=torch.float64), space)


@pytest.mark.parametrize("space", SPACES)
def test_token_distance_is_a_symmetric_nonnegative_distance(space):
    a, b = _points(space, (3, 8, 5), 0), _points(space, (3, 8, 5), 1)
    d = token_distance(a, b, space)
    assert d.shape == (3, 8)
    assert (d > 0).all()
    torch.testing.assert_close(d, token_distance(b, a, space))
    assert token_distance(a, a, space).abs().max() < 1e-8
    if space == "sphere":
        assert (d <= math.pi).all()
        antipodes = token_distance(a, -a, space)
        torch.testing.assert_close(antipodes, torch.full_like(antipodes, math.pi))
        torch.testing.assert_close(torch.cos(d), (a * b).sum(-1))
    if space == "hyperbolic":
        arg = 1 + 2 * ((a - b) ** 2).sum(-1) / ((1 - (a * a).sum(-1)) * (1 - (b * b).sum(-1)))
        torch.testing.assert_close(d, torch.acosh(arg))


@pytest.mark.parametrize("space, factor", [("sphere", 1.0), ("euclidean", 1.0), ("hyperbolic", 2.0)])
def test_exp_map_is_the_riemannian_exponential(space, factor):
    """The distance from the base point to exp(v) is the metric length of v: |v| on the sphere
    (for |v| < pi) and in R^D, 2|v| on the Poincare ball (its metric is 2/(1-|x|^2) times R^D's)."""
    from SphericalRegLib.similarity import exp_map
    v = torch.randn(50, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = v / v.norm(dim=-1, keepdim=True) * torch.linspace(0.0, 3.0, 50, dtype=torch.float64)[:, None]
    base = exp_map(torch.zeros_like(v), space)
    torch.testing.assert_close(token_distance(base, exp_map(v, space), space), factor * v.norm(dim=-1))


def test_token_distance_rejects_unknown_space():
    with pytest.raises(ValueError, match="space"):
        token_distance(torch.zeros(1, 2), torch.zeros(1, 2), "torus")


# ----------------------------------------------------------------------------- similarity

def _tiny_scene():
    """A 12^3 blob CT, a 32x32 camera and the canonical AP pose of its centre."""
    mu = _blob_volume((12, 12, 12))
    spacing = 8.0
    ijk_to_ras = torch.eye(4, dtype=torch.float64)
    ijk_to_ras[:3, :3] *= spacing
    ijk_to_ras[:3, 3] = -spacing * 5.5
    camera = Camera(1000.0, (5.0, 5.0), (15.5, 15.5), (32, 32))
    pose = canonical_ap_pose(torch.zeros(3, dtype=torch.float64), camera.sdd)
    return mu, spacing, ijk_to_ras, camera, pose


def test_similarity_double_backward_reaches_the_network():
    """g = d(sum r^2)/d(xi) through the real renderer with create_graph=True, then a loss on g:
    the similarity network's and the feature CNN's parameters get non-zero finite gradients."""
    torch.manual_seed(0)
    mu, spacing, ijk_to_ras, camera, pose = _tiny_scene()
    features = EquivariantFeatures(channels=2)
    net = SimilarityNet(drr_channels=2, image_size=64, embed_dim=8, tokens=4)
    renderer = Renderer(camera, ijk_to_ras, mu.shape[-3:], n_samples=24)
    truth = perturb_left(torch.tensor([[0.05, -0.03, 0.02, 6.0, -4.0, 10.0]], dtype=torch.float64), pose)
    xray = renderer(mu, truth)[:, :1]
    feat = features(mu, (spacing,) * 3)
    xi = torch.zeros(2, 6, dtype=torch.float64, requires_grad=True)
    start = torch.stack([pose, truth[0]])
    drr = renderer(feat, perturb_left(xi, start))
    r = net(xray.expand(2, -1, -1, -1), drr)
    assert r.shape == (2, 4) and (r >= 0).all()
    (g,) = torch.autograd.grad((r**2).sum(), xi, create_graph=True)
    assert g.abs().sum() > 0
    target = torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0]], dtype=torch.float64)
    (1 - torch.cosine_similarity(g, target, dim=-1)).sum().backward()
    for module in (net, features):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert all(gr is None or torch.isfinite(gr).all() for gr in grads)
        assert sum(float(gr.abs().sum()) for gr in grads if gr is not None) > 0


def test_similarity_spaces_differ_and_identical_inputs_are_close():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 64, 64)
    d = torch.rand(2, 3, 64, 64, requires_grad=True)
    state = SimilarityNet(3, image_size=64).state_dict()
    values, grads = {}, {}
    for space in SPACES:
        net = SimilarityNet(3, space=space, image_size=64)
        net.load_state_dict(state)
        r = net(x, d)
        assert r.shape == (2, 16) and (r >= 0).all()
        values[space] = r.detach()
        (grads[space],) = torch.autograd.grad(0.5 * (r**2).sum(), d)
        zd = net.embed_drr(d)
        assert net.residual(zd, zd).max() < 1e-6
        if space == "sphere":
            assert zd.shape == (2, 16, 33)
            torch.testing.assert_close(zd.norm(dim=-1), torch.ones(2, 16))
            assert (r <= math.pi).all()
    assert not torch.allclose(values["sphere"], values["euclidean"])
    assert not torch.allclose(values["sphere"], values["hyperbolic"])
    assert not torch.allclose(grads["sphere"], grads["hyperbolic"])
    # standardised inputs: the absolute scale of the line integrals does not matter
    net = SimilarityNet(3, image_size=64)
    # rtol: the 1e-8 variance floor is 0.1% of the variance of 0.01 d
    torch.testing.assert_close(net(x, d), net(100 * x + 3, 0.01 * d), rtol=1e-3, atol=1e-4)
    # one X-ray against a batch of DRRs, and the two-call form the optimiser uses, agree with forward
    both = net(x[:1], d)
    torch.testing.assert_close(both, net.residual(net.embed_xray(x[:1]), net.embed_drr(d)))
    torch.testing.assert_close(both[0], net(x[:1], d[:1])[0])


def test_similarity_rejects_wrong_channels():
    net = SimilarityNet(3, image_size=64)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net.embed_drr(torch.rand(1, 2, 64, 64))
    with pytest.raises(ValueError, match="space"):
        SimilarityNet(3, space="flat")


# ----------------------------------------------------------------------------- regressor

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


# ----------------------------------------------------------------------------- augmentation

def test_randomise_xray_is_seeded_pure_and_finite():
    g = torch.Generator().manual_seed(0)
    img = 5 * torch.rand(8, 1, 48, 40, generator=g)
    before = img.clone()
    a = randomise_xray(img, torch.Generator().manual_seed(7))
    b = randomise_xray(img, torch.Generator().manual_seed(7))
    c = randomise_xray(img, torch.Generator().manual_seed(8))
    assert torch.equal(img, before)
    assert a.shape == img.shape and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    changed = (a - img).abs().amax(dim=(1, 2, 3)) > 1e-6
    assert changed.all()  # nine transforms at p = 0.5: all skipped has odds 1/512 per image
    assert not torch.equal(randomise_xray(img, torch.Generator().manual_seed(1), p=0.0), a)
    torch.testing.assert_close(randomise_xray(img, torch.Generator().manual_seed(1), p=0.0), img)
    every = randomise_xray(img, torch.Generator().manual_seed(1), p=1.0)
    assert torch.isfinite(every).all() and (every.std(dim=(1, 2, 3)) > 0).all()


def test_random_bone_scale():
    s = random_bone_scale(1000, torch.Generator().manual_seed(0))
    assert s.shape == (1000,) and s.min() >= 0.7 and s.max() < 1.5
    assert s.std() > 0.1
    torch.testing.assert_close(s, random_bone_scale(1000, torch.Generator().manual_seed(0)))


def test_resolve_device_names_what_is_wrong():
    from SphericalRegLib.model import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            resolve_device("cuda")
