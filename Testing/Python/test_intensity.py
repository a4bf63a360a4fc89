import torch

from SphericalRegLib.intensity import gradient_ncc, multiscale_ncc, ncc, patch_ncc


def images():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.avg_pool2d(torch.rand(2, 1, 72, 72, generator=g), 5, 1)
    return a, torch.roll(a, 4, dims=-1)


def test_similarities_are_one_for_affine_intensity_changes_and_lower_for_shifts():
    a, shifted = images()
    for f in (ncc, lambda x, y: patch_ncc(x, y, 13), multiscale_ncc, gradient_ncc):
        same = f(a, 3 * a + 7)
        assert torch.allclose(same, torch.ones(2, dtype=a.dtype), atol=1e-4)
        assert (f(a, shifted) < same - 0.05).all()
        assert (f(a, -a) < 0).all()


def test_mask_excludes_pixels():
    a, _ = images()
    b = a.clone()
    b[..., :10] = 100.0
    mask = torch.ones_like(a, dtype=torch.bool)
    mask[..., :10] = False
    assert ncc(a, b).max() < 0.9
    assert torch.allclose(ncc(a, b, mask), torch.ones(2), atol=1e-4)


def test_gradients_flow():
    a, shifted = images()
    b = shifted.clone().requires_grad_(True)
    multiscale_ncc(a, b).sum().backward()
    assert torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0
