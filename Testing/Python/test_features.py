"""The CT feature volume: equivariance of the learnt fields, anisotropic spacing, bad input."""

from __future__ import annotations

import pytest
import torch

from SphericalRegLib.errors import InputError
from SphericalRegLib.features import EquivariantFeatures, PlainFeatures
from fixtures import blob_volume as _blob_volume
from fixtures import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


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
