"""Training-time randomisation of the simulated X-rays and of the bone attenuation."""

from __future__ import annotations

import pytest
import torch

from SphericalRegLib.augment import random_bone_scale, randomise_xray
from fixtures import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


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
