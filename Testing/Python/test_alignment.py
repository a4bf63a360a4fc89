import math

import pytest
import torch
import torch.nn.functional as F

from SphericalRegLib.alignment import RADIUS, patch_shifts, residual_alignment, residual_distortion, residual_shift_mm
from SphericalRegLib.distortion import distort


def texture(seed=0, size=160):
    """Smooth random anatomy-like texture with edges, (1, 1, size, size)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, size // 8, size // 8, generator=g)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return torch.tanh(2 * x)


def crop(x, dy=0, dx=0, n=128, margin=16):
    """A 128-px window of ``x``, its content moved by (dy, dx) px."""
    return x[..., margin - dy:margin - dy + n, margin - dx:margin - dx + n]


ALL = torch.ones(1, 1, 128, 128, dtype=torch.bool)


def test_each_patch_finds_the_shift_that_moved_the_image():
    x = texture()
    shifts, peak = patch_shifts(crop(x), crop(x, 2, -3))
    inner = peak > 0.9
    assert inner.float().mean() > 0.8
    error = shifts[inner] - torch.tensor([2.0, -3.0])
    assert error.abs().max() < 0.3 and error.median(0).values.abs().max() < 0.1  # parabola: a small bias


def test_the_residual_shift_is_in_mm_on_the_detector_and_nil_where_the_images_agree():
    x = texture(1)
    assert float(residual_shift_mm(crop(x), crop(x), ALL, 2.0)) < 0.1
    assert float(residual_shift_mm(crop(x), crop(x, 1, 2), ALL, 2.0)) == pytest.approx(2.0 * math.sqrt(5), abs=0.3)
    noisy = crop(x, 1, 2) + 0.3 * torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(2))
    assert float(residual_shift_mm(crop(x), noisy, ALL, 2.0)) == pytest.approx(2.0 * math.sqrt(5), abs=0.5)


def test_images_that_agree_nowhere_get_a_large_shift_and_no_match_the_largest_measured():
    a, b = crop(texture(3)), crop(texture(4))
    assert float(residual_shift_mm(a, b, ALL, 1.5)) > 0.5 * RADIUS * 1.5 * math.sqrt(2)
    flat = torch.zeros_like(b)
    assert float(residual_shift_mm(a, flat, ALL, 1.5)) == pytest.approx(RADIUS * 1.5 * math.sqrt(2))


def test_only_patches_inside_the_exposed_field_count():
    x = texture(5)
    moved = crop(x, 0, 3)
    outside = moved.clone()
    outside[..., :, 64:] = crop(x)[..., :, 64:]  # right half unmoved, but outside the field
    field = torch.zeros(1, 1, 128, 128, dtype=torch.bool)
    field[..., :, :64] = True
    assert float(residual_shift_mm(crop(x), outside, field, 1.0)) == pytest.approx(3.0, abs=0.2)
    assert float(residual_shift_mm(crop(x), outside, ALL, 1.0)) < 3.0 - 0.5


def test_batches_are_measured_one_by_one():
    x = texture(6)
    a = torch.cat([crop(x), crop(x)])
    b = torch.cat([crop(x), crop(x, 2, 0)])
    out = residual_shift_mm(a, b, ALL, 1.0)
    assert out.shape == (2,) and float(out[0]) < 0.05 and float(out[1]) == pytest.approx(2.0, abs=0.2)


def test_the_residual_warp_is_read_as_pincushion_and_s_distortion_whatever_rigid_motion_remains():
    x = crop(texture(6))
    assert residual_distortion(x, x, ALL).coefficients.abs().max() < 0.003
    for k, s in ((0.05, 0.0), (0.0, 0.03), (0.04, -0.02)):
        warped = distort(x, torch.tensor([[k, s]]))
        moved = distort(crop(texture(6), 2, -1), torch.tensor([[k, s]]))  # and a shift a pose still owes
        for b in (warped, moved):
            fit = residual_distortion(x, b.float(), ALL)
            assert fit.coefficients[0].tolist() == pytest.approx([k, s], abs=0.006)
            assert (fit.standard_errors < 0.005).all() and int(fit.patches) > 60


def test_a_magnification_is_not_read_as_pincushion():
    x = texture(7)
    zoomed = F.interpolate(x, scale_factor=1.04, mode="bilinear", align_corners=False)
    fit = residual_distortion(crop(x), crop(zoomed, margin=22), ALL)
    assert fit.coefficients.abs().max() < 0.006


def test_too_few_matching_patches_give_no_distortion_fit():
    fit = residual_distortion(crop(texture(8)), torch.zeros(1, 1, 128, 128), ALL)
    assert torch.isnan(fit.coefficients).all() and torch.isnan(fit.standard_errors).all() and int(fit.patches) == 0


def test_the_shift_and_the_warp_from_one_patch_search_are_each_functions_own():
    x = crop(texture(9))
    warped = distort(crop(texture(9), 1, 2), torch.tensor([[0.04, 0.02]])).float()
    shift, fit = residual_alignment(x, warped, ALL, 1.5)
    assert torch.equal(shift, residual_shift_mm(x, warped, ALL, 1.5))
    alone = residual_distortion(x, warped, ALL)
    assert all(torch.equal(a, b) for a, b in zip(fit, alone))


def test_a_shift_measured_on_matching_patches_beyond_5_mm_says_misaligned_and_no_match_does_not():
    from SphericalRegLib.alignment import MISALIGNED_SHIFT_MM, largest_shift_mm, misaligned

    x = texture(5)
    moved = float(residual_shift_mm(crop(x), crop(x, 3, 4), ALL, 1.5))  # 5 px = 7.5 mm, matched
    assert moved == pytest.approx(7.5, abs=0.3) and misaligned(moved, 1.5)
    assert not misaligned(float(residual_shift_mm(crop(x), crop(x, 1, 1), ALL, 1.5)), 1.5)
    nowhere = float(residual_shift_mm(crop(x), torch.zeros(1, 1, 128, 128), ALL, 1.5))  # the no-match answer
    assert nowhere == pytest.approx(largest_shift_mm(1.5)) and not misaligned(nowhere, 1.5)
    assert misaligned(MISALIGNED_SHIFT_MM, 1.5) and not misaligned(None, 1.5)
