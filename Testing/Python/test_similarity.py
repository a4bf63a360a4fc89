"""The token similarity: distances of the three embedding spaces, the double backward, the spaces' effect."""

from __future__ import annotations

import math

import pytest
import torch

from SphericalRegLib.camera import Camera, canonical_ap_pose
from SphericalRegLib.features import EquivariantFeatures
from SphericalRegLib.geometry import perturb_left
from SphericalRegLib.render import Renderer
from SphericalRegLib.similarity import SPACES, SimilarityNet, token_distance
from fixtures import blob_volume as _blob_volume
from fixtures import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


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


def test_tied_stems_make_the_similarity_start_as_a_comparison_of_like_images():
    """With the DRR stem tied to the X-ray stem, a DRR whose mu channel is the X-ray embeds like the
    X-ray (whatever its learnt channels hold), so S = 0 at the truth from the first step."""
    torch.manual_seed(0)
    net = SimilarityNet(drr_channels=3, embed_dim=8, image_size=32, tokens=4, tied_stems=True).eval()
    x = torch.rand(2, 1, 32, 32)
    drr = torch.cat([x, torch.rand(2, 2, 32, 32)], dim=1)
    with torch.no_grad():
        assert torch.allclose(net.embed_xray(x), net.embed_drr(drr), atol=1e-5)
        untied = SimilarityNet(drr_channels=3, embed_dim=8, image_size=32, tokens=4).eval()
        assert not torch.allclose(untied.embed_xray(x), untied.embed_drr(drr), atol=1e-3)


def test_tokens_from_an_earlier_stage_are_local():
    """token_stage=2: an 8 x 8 grid of tokens at 64 px, each seeing mostly its own part of the image
    (standardisation and attention are global), so a change in one corner moves the corner's
    tokens most; the later stages are gone."""
    torch.manual_seed(0)
    net = SimilarityNet(3, image_size=64, tokens=64, token_stage=2, tied_stems=True).eval()
    assert (net.grid, net.heads, len(net.trunk.stages)) == (8, 1, 3)
    d = torch.rand(1, 3, 64, 64)
    x = d[:, :1].clone()
    assert net(x, d).max() < 1e-3  # tied stems: a DRR's mu channel is its own X-ray
    x[..., :16, :16] += 1.0
    r = net(x, d).reshape(8, 8)
    assert r[:4, :4].mean() > 2 * r[4:, 4:].mean() and r[:4, :4].max() > 1.5 * r[4:, 4:].max()
    with pytest.raises(ValueError, match="token_stage"):
        SimilarityNet(3, image_size=64, token_stage=5)
