"""The intensity stage's NCC residual (SphericalRegLib.register.residuals)."""

import pytest
import torch

from SphericalRegLib.errors import InputError
from SphericalRegLib.register import ncc_residual


def test_ncc_residual_forms_give_the_mean_ncc_cost_and_vanish_at_a_match():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 40, 40, generator=g), torch.rand(2, 1, 40, 40, generator=g)
    costs = [0.5 * ncc_residual(8, form)(a, b).pow(2).sum(-1) for form in ("difference", "ncc")]
    assert torch.allclose(costs[0], costs[1], rtol=1e-5)
    assert 0.5 < float(costs[0].mean()) < 1.5  # unrelated images: NCC near 0
    match = ncc_residual(8)(a, 3 * a + 1)
    assert float(match.abs().max()) < 1e-3
    with pytest.raises(InputError, match="form"):
        ncc_residual(8, "ssd")
