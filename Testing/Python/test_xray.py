"""X-ray preprocessing on synthetic frames whose line integrals, collimator and resampling are known."""

import warnings

import pytest
import torch

from SphericalRegLib.camera import Camera, canonical_ap_pose, project
from SphericalRegLib.errors import InputError
from SphericalRegLib.xray import (collimator_mask, defects, describe, looks_like_line_integrals, preprocess, resample,
                                  shutter_mask, to_line_integrals)

ROWS, COLS = 60, 80
I0 = 3000.0


def body_line_integrals():
    """An elliptic 'body' with a denser 'bone' in it, on air: L up to ~4 in the middle, 0 outside."""
    v, u = torch.meshgrid(torch.arange(ROWS, dtype=torch.float64), torch.arange(COLS, dtype=torch.float64),
                          indexing="ij")
    r2 = ((u - 40) / 28) ** 2 + ((v - 30) / 22) ** 2
    L = 3.0 * (1 - r2).clamp_min(0).sqrt()
    return L + 1.0 * (((u - 45) / 4) ** 2 + ((v - 30) / 15) ** 2 < 1)


def test_to_line_integrals_recovers_known_line_integrals():
    L = body_line_integrals()
    I = I0 * torch.exp(-L)
    assert torch.allclose(to_line_integrals(I), L, atol=1e-9)  # I0 found as the air level
    assert torch.allclose(to_line_integrals(I + 50, dark=50), L, atol=1e-9)
    assert torch.allclose(to_line_integrals(I, air=2 * I0), L + torch.log(torch.tensor(2.0)), atol=1e-9)
    inverted = I.max() + I.min() - I  # stored as MONOCHROME1
    assert torch.allclose(to_line_integrals(inverted, "MONOCHROME1"), L, atol=1e-9)
    mask = torch.zeros(ROWS, COLS, dtype=torch.bool)
    mask[5:-5, 3:-3] = True
    out = to_line_integrals(I, mask=mask)
    assert (out[~mask] == 0).all() and torch.allclose(out[mask], L[mask], atol=1e-9)


def test_to_line_integrals_is_robust_to_hot_pixels():
    L = body_line_integrals()
    I = I0 * torch.exp(-L)
    I.view(-1)[torch.randperm(I.numel(), generator=torch.Generator().manual_seed(0))[:10]] = 65535.0
    out = to_line_integrals(I)
    good = I < 65535
    assert torch.allclose(out[good], L[good], atol=1e-9)


def test_polarity_check_warns_on_a_line_integral_image():
    L = body_line_integrals()
    assert looks_like_line_integrals(L) and not looks_like_line_integrals(I0 * torch.exp(-L))
    with pytest.warns(UserWarning, match="line-integral"):
        to_line_integrals(L + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_line_integrals(I0 * torch.exp(-L))
    with pytest.raises(InputError, match="photometric"):
        to_line_integrals(L, "RGB")


def collimated(top=6, bottom=0, left=9, right=4, level=12.0):
    I = I0 * torch.exp(-body_line_integrals())
    noise = torch.rand(ROWS, COLS, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    shadow = level + 3 * noise  # leakage through the blades: low, nearly flat
    inside = torch.zeros(ROWS, COLS, dtype=torch.bool)
    inside[top:ROWS - bottom, left:COLS - right] = True
    return torch.where(inside, I, shadow), inside


def test_collimator_mask_finds_straight_blades():
    image, inside = collimated()
    assert torch.equal(collimator_mask(image), inside)
    image, inside = collimated(top=0, bottom=11, left=0, right=0)
    assert torch.equal(collimator_mask(image), inside)
    # no collimator: the dark body (never a whole flat row) is not mistaken for one
    assert collimator_mask(I0 * torch.exp(-body_line_integrals())).all()
    # dark anatomy that fades out towards the bottom edge, flat across each row, is no blade
    I = I0 * torch.exp(-body_line_integrals())
    fade = torch.linspace(1.0, 0.0, 15, dtype=torch.float64)[:, None] * I[44] + 12.0
    I[45:] = fade.mean(1, keepdim=True).expand(15, COLS)
    assert collimator_mask(I).all()
    # MONOCHROME1: the blades are bright in the stored values
    image, inside = collimated()
    assert torch.equal(collimator_mask(image.max() + image.min() - image, "MONOCHROME1"), inside)


def camera(rows=ROWS, cols=COLS):
    return Camera(1000.0, (0.3, 0.25), (cols / 2 - 0.5 + 3.0, rows / 2 - 0.5 - 2.0), (rows, cols))


def test_resample_area_averages_and_keeps_the_geometry():
    cam = camera()
    checker = ((torch.arange(ROWS)[:, None] + torch.arange(COLS)[None, :]) % 2).double()
    half, cam2 = resample(checker, cam, ROWS // 2, COLS // 2)
    assert torch.allclose(half, torch.full_like(half, 0.5), atol=1e-6)  # every 2x2 block averaged
    ramp = torch.arange(COLS, dtype=torch.float64).expand(ROWS, COLS) * 2 + 5
    small, cam2 = resample(ramp, cam, 15, 20)  # a factor 4: new pixel u' covers old 4u' .. 4u'+3
    expected = (torch.arange(20, dtype=torch.float64) * 4 + 1.5) * 2 + 5
    assert torch.allclose(small[:, 2:-2], expected[2:-2].expand(15, 16), atol=1e-6)
    odd, _ = resample(ramp, cam, 45, 60)  # a factor 4/3: filtered, centred on each new pixel
    expected = ((torch.arange(60, dtype=torch.float64) + 0.5) * 4 / 3 - 0.5) * 2 + 5
    # within 0.02 px (the ramp rises 2 per px): the discrete filter's weights are not quite symmetric
    assert torch.allclose(odd[:, 3:-3], expected[3:-3].expand(45, 54), atol=0.04)
    # a world point lands on the same physical spot of the detector in both cameras
    T = canonical_ap_pose(torch.zeros(3), cam.sdd)
    X = torch.randn(20, 3, dtype=torch.float64) * 30
    uv, uv2 = project(X, T, cam), project(X, T, cam2)
    assert torch.allclose((uv + 0.5) / torch.tensor([4.0, 4.0], dtype=torch.float64) - 0.5, uv2, atol=1e-9)
    up, cam3 = resample(ramp, cam, ROWS * 2, COLS * 2)
    assert up.shape == (ROWS * 2, COLS * 2) and cam3.image_size == (ROWS * 2, COLS * 2)
    with pytest.raises(InputError, match="camera's image_size"):
        resample(ramp[:10], cam, 5, 5)


def test_preprocess_combines_mask_log_and_resampling():
    image, inside = collimated()
    L_true = body_line_integrals()
    L, cam, mask = preprocess(image, camera(), size=40)
    assert L.shape == mask.shape == (30, 40) and cam.image_size == (30, 40)
    assert cam.pixel_spacing == pytest.approx((0.6, 0.5))
    expected_mask = inside.view(30, 2, 40, 2).all(3).all(1)
    assert torch.equal(mask, expected_mask)
    assert (L[~mask] == 0).all()
    # inside, the line integrals are those of the body, averaged over 2x2 blocks
    truth = L_true.view(30, 2, 40, 2).mean((1, 3))
    assert torch.allclose(L[mask].double(), truth[mask], atol=1e-5)


def test_warp_to_camera_images_a_point_where_the_other_camera_projects_it():
    """A change of intrinsics is a homography: a bead imaged by one C-arm lands, after the warp, on
    the pixel where another C-arm (other sdd, pitch, principal point) projects it."""
    from SphericalRegLib.camera import project
    from SphericalRegLib.geometry import make_pose
    from SphericalRegLib.xray import warp_to_camera

    source = Camera(1000.0, (0.5, 0.5), (60.0, 45.5), (100, 120))
    target = Camera(1200.0, (0.9, 0.8), (30.0, 40.0), (80, 64))
    pose = make_pose(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 800.0], dtype=torch.float64))
    bead = torch.tensor([[6.0, -4.0, 0.0]], dtype=torch.float64)
    u, v = project(bead, pose, source)[0].tolist()
    rows, cols = torch.meshgrid(torch.arange(100.0), torch.arange(120.0), indexing="ij")
    image = torch.exp(-((cols - u) ** 2 + (rows - v) ** 2) / (2 * 3.0**2))
    warped = warp_to_camera(image, source, target)
    assert warped.shape == (80, 64)
    peak = divmod(int(warped.argmax()), 64)
    ut, vt = project(bead, pose, target)[0].tolist()
    assert abs(peak[1] - ut) <= 1 and abs(peak[0] - vt) <= 1
    assert torch.allclose(warp_to_camera(image, source, source), image, atol=1e-5)  # the identity is exact


def test_preprocess_for_camera_masks_what_the_source_detector_never_saw():
    from SphericalRegLib.xray import preprocess_for_camera

    source = Camera(1000.0, (1.0, 1.0), (31.5, 31.5), (64, 64))
    wider = Camera(1000.0, (2.0, 2.0), (31.5, 31.5), (64, 64))  # twice the field: a border it never saw
    frame = torch.full((64, 64), 1000.0)
    L, valid = preprocess_for_camera(frame, source, wider, line_integrals=False)
    assert valid[32, 32] and not valid[0, 0] and not valid[63, 32]
    assert 0.2 < float(valid.float().mean()) < 0.3  # about a quarter of the wider field
    assert float(L[~valid].abs().max()) == 0.0


def noisy_counts(L, photons=20000.0, gain=3.0, offset=150.0, seed=0):
    """Raw 16-bit counts of line integrals ``L`` with Poisson noise (air bright)."""
    g = torch.Generator().manual_seed(seed)
    return (gain * torch.poisson(photons * torch.exp(-L), generator=g) + offset).round().clamp(0, 65535)


def test_describe_tells_raw_counts_from_processed_exports_and_their_polarity():
    L = body_line_integrals() + 1.0
    raw = noisy_counts(L)
    d = describe(raw)
    assert d["encoding"] == "intensity" and d["photometric"] == "MONOCHROME2"
    # a log export windowed at 2-98%: black and white plateaus, air bright, shutter black at the border
    y = -L
    lo, hi = torch.quantile(y, torch.tensor([0.02, 0.98], dtype=y.dtype))
    z = ((y - lo) / (hi - lo)).clamp(0, 1)
    z[:, :12] = 0  # a blade's shadow, clipped black
    export = (255 * z).round()
    d = describe(export)
    assert d["encoding"] == "processed" and d["photometric"] == "MONOCHROME2" and d["confident"]
    d = describe(255 - export)  # bone bright: the border is clipped white
    assert d["encoding"] == "processed" and d["photometric"] == "MONOCHROME1"
    assert describe(255 - export, "MONOCHROME2")["photometric"] == "MONOCHROME2"  # a given photometric wins


def test_a_processed_export_is_read_affinely_with_its_clipped_pixels_invalid():
    L = body_line_integrals() + 1.0
    L = torch.where(L > 1.5, L, 1.5 + 0.1 * torch.rand(L.shape, generator=torch.Generator().manual_seed(2),
                                                        dtype=L.dtype))  # the field full of body, as a chest view
    y = -L
    lo, hi = torch.quantile(y, torch.tensor([0.05, 0.95], dtype=y.dtype))
    z = ((y - lo) / (hi - lo)).clamp(0, 1)
    export = 255 - (255 * z).round()  # bone bright
    read, _, valid = preprocess(export, camera(), size=80, photometric="AUTO")
    clipped = (export == 0) | (export == 255)
    assert torch.equal(valid, ~clipped)
    a, b = read[valid].double(), L[valid]
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1]
    assert corr > 0.999


def test_shutters_next_to_dark_anatomy_are_found_and_defects_replaced():
    L = body_line_integrals() + 2.0  # no air at the border: dark anatomy everywhere
    shadow = torch.zeros_like(L, dtype=torch.bool)
    shadow[:10] = True
    shadow[:, 70:] = True
    blades = torch.where(shadow, L + 3.0, L)
    mask = shutter_mask(blades)
    assert torch.equal(mask[12:-2, 2:68], torch.ones(ROWS - 14, 66, dtype=torch.bool))
    assert not mask[:10].any() and not mask[:, 70:].any() and mask.float().mean() > 0.7
    assert shutter_mask(L).all()  # anatomy alone is no blade
    counts = noisy_counts(torch.where(shadow, L + 3.9, L))
    counts[0] = 150.0  # a dead line at the edge
    counts[30, 30] = 65535.0  # a hot pixel
    read, _, valid = preprocess(counts, camera(), size=80)
    assert not valid[:10].any() and not valid[:, 70:].any()
    inside = valid & ~shadow
    error = read[inside].double() - L[inside]  # I0 is the thinnest anatomy: L up to a constant
    assert torch.quantile((error - error.median()).abs(), 0.9) < 0.3 and abs(float(read[30, 30]) - float(L[30, 30]) - float(error.median())) < 0.5
    assert not defects(L).any() and defects(to_line_integrals(counts, check=False))[30, 30]


def test_round_field_mask_finds_an_image_intensifiers_field_and_nothing_in_anatomy():
    from SphericalRegLib.xray import round_field_mask

    L = body_line_integrals()
    v, u = torch.meshgrid(torch.arange(ROWS, dtype=torch.float64), torch.arange(COLS, dtype=torch.float64),
                          indexing="ij")
    r = ((u - (COLS - 1) / 2) ** 2 + (v - (ROWS - 1) / 2) ** 2).sqrt()
    for radius in (26.0, 34.0, 42.0):  # inside the detector, cutting its sides, only its corners
        outside = r > radius
        mask = round_field_mask(torch.where(outside, L + 3.9, L))
        assert not (mask & outside).any()
        assert mask[r < radius - 4].all()
        counts = noisy_counts(torch.where(outside, L + 3.9, L))
        _, _, valid = preprocess(counts, camera(), size=80)
        assert not (valid & outside).any() and valid[r < radius - 4].float().mean() > 0.99
    assert round_field_mask(L).all()  # a body's outline steps down outwards
    assert round_field_mask(body_line_integrals()[:, :8]).all()  # too small to hold a circle


def test_is_round_field_tells_an_intensifiers_field_from_blades_and_an_open_detector():
    from SphericalRegLib.xray import is_round_field

    H = W = 64
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    r = ((u - 31.5) ** 2 + (v - 31.5) ** 2).sqrt()
    assert is_round_field(r <= 30) and is_round_field(r <= 20)
    assert not is_round_field(torch.ones(H, W, dtype=torch.bool))  # open: nothing cut
    blades = torch.zeros(H, W, dtype=torch.bool)
    blades[8:56, 4:60] = True
    assert not is_round_field(blades)
    assert not is_round_field((r <= 30) & (u < 40))  # a round field with a blade across it: not only round
    assert not is_round_field(torch.zeros(H, W, dtype=torch.bool))


def _correlation(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_a_linear_lut_export_read_as_one_gives_the_line_integrals():
    """An 8-bit export of intensities crushes the thick anatomy into a few grey levels; read as a log
    LUT's export (affinely) it is far from the line integrals, read as a linear LUT's it is close."""
    L = body_line_integrals()
    I = torch.exp(-L)
    lo, hi = torch.quantile(I.flatten(), torch.tensor([0.01, 0.99], dtype=torch.float64))
    export = ((I - lo) / (hi - lo)).clamp(0, 1).mul(255).round()
    as_log, _, valid_log = preprocess(export, camera(), size=80, encoding="processed")
    as_linear, _, valid = preprocess(export, camera(), size=80, encoding="processed-linear")
    body = valid & valid_log & (L > 0.5)
    assert _correlation(as_linear[body], L[body]) > 0.99 > 0.95 > _correlation(as_log[body], L[body])
    with pytest.raises(InputError, match="processed-linear"):
        preprocess(export, camera(), size=80, encoding="linear")


def test_a_side_blade_between_deep_top_and_bottom_blades_is_found():
    """The shadow and the open field beside a blade are compared where no other blade reaches:
    across the whole line, deep top and bottom blades made the open side look like shadow."""
    L = body_line_integrals() + 2.0
    shadow = torch.zeros_like(L, dtype=torch.bool)
    shadow[:16], shadow[-16:], shadow[:, :12] = True, True, True
    mask = shutter_mask(torch.where(shadow, L + 3.9, L))
    assert not (mask & shadow).any() and mask[21:-21, 15:-2].all()  # the penumbra: span // 2 px more


def test_an_iris_behind_blades_is_found_where_its_edge_shows():
    """An iris whose circle the blades cut leaves only arcs at the corners of their field: its edge is
    looked for only there, not on the blades' flat shadows, where nothing steps."""
    from SphericalRegLib.xray import round_field_mask

    H = W = 160
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    r = ((u - (W - 1) / 2) ** 2 + (v - (H - 1) / 2) ** 2).sqrt()
    L = 1.0 + 2.0 * torch.exp(-((u - 80) / 30) ** 2) + 0.5 * torch.sin(v / 9)  # a spine-like band and ribs
    blades = torch.zeros_like(L, dtype=torch.bool)
    blades[:16], blades[-16:], blades[:, :16], blades[:, -16:] = True, True, True, True
    corners = (r > 74.0) & ~blades
    image = torch.where(blades | (r > 74.0), L + 3.9, L)
    assert corners.sum() > 1000 and round_field_mask(image).all()  # most of the circle lies behind blades
    field = shutter_mask(image)
    found = round_field_mask(image, within=field)
    assert not (found & corners).any() and found[(r < 70.0) & field].all()


def test_a_blade_that_an_s_curve_export_leaves_barely_darker_than_dense_anatomy_is_found():
    """A sigmoid display LUT squeezes a blade's shadow and the dense anatomy beside it into the last
    few grey levels: the log reading sees no step there, the linear reading stretches that end, and
    an export is searched for blades in both."""
    from SphericalRegLib.xray import LOG_SPAN, _linear_reading

    L = body_line_integrals() + 2.0  # dense anatomy up to the blade
    shadow = torch.zeros_like(L, dtype=torch.bool)
    shadow[-12:] = True
    y = -torch.where(shadow, L + 3.9, L)
    export = (4095 * torch.sigmoid((y - torch.quantile(y, 0.5)) / 0.3)).round()  # 12 bits, air bright
    lo, hi = float(export.min()), float(export.max())
    assert shutter_mask(LOG_SPAN * (hi - export) / (hi - lo))[-12:].all()  # the log reading alone misses it
    assert not shutter_mask(_linear_reading(export, lo, hi))[-12:].any()
    for encoding in ("processed", "processed-linear"):
        _, _, valid = preprocess(export, camera(), size=80, encoding=encoding)
        unclipped = (export != lo) & (export != hi)  # the flat thin anatomy is clipped white
        assert not (valid & shadow).any() and torch.equal(valid[:40], unclipped[:40])
