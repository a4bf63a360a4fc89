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


def test_a_mask_keeps_the_length_ignores_masked_pixels_and_is_exact_when_all_true():
    from SphericalRegLib.register.residuals import bright_outliers

    g = torch.Generator().manual_seed(1)
    b = torch.rand(2, 1, 40, 40, generator=g)
    a = 2 * b + 0.1 * torch.rand(2, 1, 40, 40, generator=g)
    for form in ("difference", "ncc"):
        residual = ncc_residual(8, form)
        full = residual(a, b)
        assert torch.equal(residual(a, b, torch.ones(1, 1, 40, 40, dtype=torch.bool)), full)
        mask = torch.ones(1, 1, 40, 40, dtype=torch.bool)
        mask[..., :, 25:] = False
        spoilt = a.clone()
        spoilt[..., :, 25:] = 50.0  # a blade, a clipped band: whatever lies there
        masked = residual(spoilt, b, mask)
        assert masked.shape == full.shape
        assert torch.allclose(masked, residual(a, b, mask), atol=1e-6)
        assert float(0.5 * masked.pow(2).sum(-1).max()) < float(0.5 * residual(spoilt, b).pow(2).sum(-1).min())
    # metal: far brighter than anything the DRR shows
    x = a.clone()
    x[..., 10:14, 10:30] += 20.0
    found = bright_outliers(x, b, torch.ones(1, 1, 40, 40, dtype=torch.bool))
    assert found[..., 10:14, 10:30].all() and found.float().mean() < 0.1
    assert not bright_outliers(a, b, torch.ones(1, 1, 40, 40, dtype=torch.bool)).any()


@pytest.mark.parametrize("form", ["difference", "ncc"])
def test_one_term_alone_is_the_mean_of_its_own_costs(form):
    """The cost of both terms is the mean of the intensity-only and edge-only costs (each the mean
    of its patch and whole-image 1 - NCC), masked or not; both terms named is the default to the
    bit; an unknown term is refused by name."""
    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, 1, 40, 40, generator=g).cumsum(-1)  # smooth rows: noise moves edges more than intensities
    b = a + torch.rand(2, 1, 40, 40, generator=g)
    mask = torch.ones(1, 1, 40, 40, dtype=torch.bool)
    mask[..., :6, :] = False
    for m in (None, mask):
        def cost(terms):
            return 0.5 * ncc_residual(8, form, terms=terms)(a, b, m).pow(2).sum(-1)
        both, intensities, edges = cost(("intensities", "edges")), cost(("intensities",)), cost(("edges",))
        assert torch.allclose(both, (intensities + edges) / 2, rtol=1e-6)
        assert (intensities < 0.8 * edges).all()
        both_named = ncc_residual(8, form, terms=("intensities", "edges"))
        assert torch.equal(ncc_residual(8, form)(a, b, m), both_named(a, b, m))
    with pytest.raises(InputError, match="terms"):
        ncc_residual(8, form, terms=("gradients",))


@pytest.mark.parametrize("masked", [False, True])
def test_a_robust_scale_caps_what_an_unmatched_patch_costs(masked):
    """Cauchy's loss per patch: a very large scale is least squares; at a small scale a patch that
    cannot match (an instrument, tissue the CT lacks) costs far less than under least squares, while
    a well-matched image costs about the same; the residual keeps its length."""
    g = torch.Generator().manual_seed(3)
    b = torch.rand(1, 1, 40, 40, generator=g).cumsum(-1)
    a = b + 0.05 * torch.rand(1, 1, 40, 40, generator=g)
    spoilt = a.clone()
    spoilt[..., :8, :8] = torch.rand(1, 1, 8, 8, generator=g)  # one patch of something else
    mask = torch.ones(1, 1, 40, 40, dtype=torch.bool) if masked else None
    if masked:
        mask[..., 32:, :] = False

    def cost(x, robust):
        r = ncc_residual(8, robust=robust)(x, b, mask)
        return r.shape[-1], float(0.5 * r.pow(2).sum(-1))

    n, plain = cost(spoilt, None)
    assert cost(spoilt, 1e9) == pytest.approx((n, plain), rel=1e-6)
    n_robust, robust = cost(spoilt, 0.05)
    assert n_robust == n and robust < 0.7 * plain
    assert cost(a, 0.05)[1] == pytest.approx(cost(a, None)[1], rel=0.1)
    with pytest.raises(InputError, match="robust"):
        ncc_residual(8, robust=0.0)


@pytest.mark.parametrize("masked", [False, True])
def test_a_quadratic_drr_model_forgives_a_bent_intensity_map_over_the_valid_pixels(masked):
    """An X-ray whose intensities are a concave function of the DRR's (beam hardening, scatter, an
    export curve) matches the DRR exactly under the quadratic model but not under the linear one;
    what lies outside the mask does not enter the fit; an unknown model is refused by name."""
    from SphericalRegLib.register import IntensityLevel

    g = torch.Generator().manual_seed(4)
    b = torch.rand(2, 1, 40, 40, generator=g).cumsum(-1) / 10
    a = 3 * b - 0.4 * b * b + 1
    mask = None
    if masked:
        mask = torch.ones(1, 1, 40, 40, dtype=torch.bool)
        mask[..., :, 30:] = False
        a[..., :, 30:] = 50.0  # a collimator blade, whatever lies there
    for form in ("difference", "ncc"):
        linear = 0.5 * ncc_residual(8, form)(a, b, mask).pow(2).sum(-1)
        quadratic = 0.5 * ncc_residual(8, form, drr_model="quadratic")(a, b, mask).pow(2).sum(-1)
        assert (linear > 1e-3).all() and (quadratic < 1e-6).all()
    with pytest.raises(InputError, match="drr_model"):
        ncc_residual(8, drr_model="cubic")
    with pytest.raises(InputError, match="drr_model"):
        IntensityLevel(2.0, 128, 16, "difference", 30, drr_model="log")


def test_local_outliers_find_narrow_metal_over_bright_anatomy_and_nothing_in_a_matching_image():
    """A screw-like bar over the brightest anatomy is no brighter than the DRR's maximum, so only
    the local test finds it; an X-ray that is an affine map of the DRR (any scale or offset, a
    processed export's window) and the edge of an exposed field are left alone; wider than
    ``width`` is not the local test's business."""
    from SphericalRegLib.register.residuals import bright_outliers, local_outliers

    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    g = torch.Generator().manual_seed(4)
    drr = (3 * torch.exp(-((xx - 32) / 12) ** 2) + 0.3 * torch.sin(yy / 3) + 0.05 * torch.rand(64, 64, generator=g))
    drr = drr[None, None]
    valid = torch.ones(1, 1, 64, 64, dtype=torch.bool)
    xray = 0.7 * drr + 2.0  # another scale and offset
    assert not local_outliers(xray, drr, valid, 9).any()
    screw = xray.clone()
    screw[..., 20:23, 16:28] += 0.9  # on the flank of the brightest anatomy, and no brighter than its top
    assert not bright_outliers(screw, drr, valid).any()
    found = local_outliers(screw, drr, valid, 9)
    assert found[..., 20:23, 16:28].all() and found.float().mean() < 0.03
    field = valid.clone()
    field[..., :, 50:] = False  # a blade's shadow: as dense as the X-ray gets, and invalid
    shuttered = xray.clone()
    shuttered[..., :, 50:] = xray.max() + 1
    assert not local_outliers(shuttered, drr, field, 9).any()
    wide = xray.clone()
    wide[..., 10:40, 10:40] += 0.6  # wider than the width asked for: not found
    assert not local_outliers(wide, drr, valid, 9)[..., 14:36, 14:36].any()


def test_the_outlier_masks_of_one_xray_against_a_batch_of_drrs_are_each_pair_s_own():
    """The registrar passes one X-ray for a batch of poses: the masks are those of each pair alone,
    whether the valid mask is shared or given per image."""
    from SphericalRegLib.register.residuals import bright_outliers, local_outliers

    g = torch.Generator().manual_seed(5)
    base = torch.rand(1, 1, 64, 64, generator=g).cumsum(-1) / 64
    x = 2 * base + 0.3 * torch.rand(1, 1, 64, 64, generator=g)
    x[..., 10:13, 10:25] += 3.0
    drrs = base + 0.1 * torch.rand(3, 1, 64, 64, generator=g)
    drrs[1] *= 2.5  # another scale: the X-ray maps onto each DRR by its own
    valid = torch.rand(1, 1, 64, 64, generator=g) > 0.2
    for masks in (bright_outliers, lambda a, b, v: local_outliers(a, b, v, 9)):
        batch = masks(x, drrs, valid)
        assert batch.shape == (3, 1, 64, 64) and batch.any()
        for k in range(3):
            assert torch.equal(batch[k:k + 1], masks(x, drrs[k:k + 1], valid))
        assert torch.equal(batch, masks(x.expand(3, -1, -1, -1), drrs, valid.expand(3, -1, -1, -1).clone()))
    from SphericalRegLib.register.residuals import metal_outliers, xray_excess
    union = bright_outliers(x, drrs, valid) | local_outliers(x, drrs, valid, 9)
    assert torch.equal(metal_outliers(x, drrs, valid, 9), union)  # what the intensity stage leaves out
    assert torch.equal(metal_outliers(x, drrs, valid, 9, xray_excess(x, valid, 9)), union)
    assert torch.equal(metal_outliers(x, drrs, valid, 0), bright_outliers(x, drrs, valid))
