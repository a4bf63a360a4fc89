"""The physics family of simulated X-rays (SphericalRegLib.physics): each effect does what it says,
plain is the old simulator bit for bit, random draws are seeded, and every preset's frame reads back."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from SphericalRegLib import physics as P
from SphericalRegLib.camera import Camera, canonical_ap_pose
from SphericalRegLib.diffdrr_bridge import siddon_line_integrals
from SphericalRegLib.errors import InputError
from SphericalRegLib.io.images import read_xray
from SphericalRegLib.simulate import default_camera, simulate_case
from SphericalRegLib.volume import Volume, hu_to_mu
from SphericalRegLib.xray import preprocess
from fixtures import one_torch_thread, tiny_ct

SIZE = 48
QUIET = dict(quantum_noise=False, scatter_fraction=0.0)  # deterministic frames


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def setup():
    ct = tiny_ct()
    camera = default_camera(ct, 1020.0, SIZE)
    pose = canonical_ap_pose(ct.centre, 1020.0)
    return ct, camera, pose, P.prepare(ct, camera)


def frame(setup, physics, seed=0):
    ct, camera, pose, prepared = setup
    return P.simulate_frame(ct, pose, camera, physics, torch.Generator().manual_seed(seed), prepared)


def _old_simulate_case(ct, camera_from_world, camera, generator, photons=10_000.0, scatter_fraction=0.05,
                       scatter_sigma_mm=40.0, gain=5.0, offset=100.0, bone_scale=1.0, drr=None):
    """simulate.simulate_case as it was before the physics family (commit ae4050b), verbatim."""
    def blur(image, sigma_px):
        x = image[None, None]
        for dim, sigma in ((2, sigma_px[1]), (3, sigma_px[0])):
            if sigma < 0.3:
                continue
            radius = max(1, min(int(3 * sigma), x.shape[dim] - 1))
            t = torch.arange(-radius, radius + 1, dtype=x.dtype)
            k = torch.exp(-0.5 * (t / sigma) ** 2)
            k = k / k.sum()
            pad = [0, 0, 0, 0]
            pad[0 if dim == 3 else 2] = pad[1 if dim == 3 else 3] = radius
            x = F.pad(x, pad, mode="reflect")
            kernel = k.view(1, 1, -1, 1) if dim == 2 else k.view(1, 1, 1, -1)
            x = F.conv2d(x, kernel)
        return x[0, 0]

    mu = Volume(hu_to_mu(ct.data.float(), bone_scale), ct.ijk_to_ras)
    T = torch.as_tensor(camera_from_world, dtype=torch.float64).reshape(-1, 4, 4)[:1]
    with torch.no_grad():
        L = siddon_line_integrals(mu, T, camera, drr=drr)[0].to(torch.float64)
    primary = torch.exp(-L.clamp_min(0))
    du, dv = camera.pixel_spacing
    scatter = scatter_fraction * blur(primary, (scatter_sigma_mm / du, scatter_sigma_mm / dv))
    expected = photons * (primary + scatter)
    counts = torch.poisson(expected, generator=generator)
    return (gain * counts + offset).round().clamp(0, 65535)


def test_plain_is_the_old_simulator_bit_for_bit(setup):
    ct, camera, pose, prepared = setup
    for seed in (0, 5):
        old = _old_simulate_case(ct, pose, camera, torch.Generator().manual_seed(seed))
        new, meta = frame(setup, P.PRESETS["plain"], seed)
        assert torch.equal(old, new)
        assert meta["bits"] == 16 and meta["photometric"] == "MONOCHROME2" and meta["physics"] == P.Physics().to_json()
        g_old, g_new = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        kw = dict(photons=500.0, scatter_fraction=0.2, gain=3.0, offset=7.0, bone_scale=1.3)
        assert torch.equal(_old_simulate_case(ct, pose, camera, g_old, **kw), simulate_case(ct, pose, camera, g_new, **kw))
        assert torch.equal(torch.rand(3, generator=g_old), torch.rand(3, generator=g_new))  # same draws consumed


def test_presets_effects_and_names():
    assert set(P.EFFECTS) <= set(P.PRESETS) and "plain" in P.PRESETS and len(P.EFFECTS) >= 10
    for name in P.EFFECTS:
        assert P.PRESETS[name] != P.PRESETS["plain"], name
    for name in P.PRESETS:
        physics = P.physics_for(name, torch.Generator())
        assert P.Physics.from_json(physics.to_json()) == physics
    with pytest.raises(InputError) as e:
        P.physics_for("xyz", torch.Generator())
    assert "xyz" in str(e.value) and "plain" in str(e.value) and "random" in str(e.value)
    with pytest.raises(InputError):
        P.Physics(mapping="none", bits=8)


def test_attenuation_tables_and_spectra():
    e = torch.tensor(P.ENERGIES_KEV)
    for name, values in P.MASS_ATTENUATION.items():
        torch.testing.assert_close(P.mass_attenuation(name, e), torch.tensor(values, dtype=torch.float64))
    assert abs(P.reference_mu("bone") - 0.0604) < 1e-3 and abs(P.reference_mu("soft") - 0.02) < 1e-9
    means = []
    for kvp, al in ((60, 2.5), (120, 2.5), (120, 8.0)):
        E, w = P.spectrum(kvp, al)
        assert abs(float(w.sum()) - 1) < 1e-12 and (w >= 0).all() and E.max() < kvp
        means.append(float((E * w).sum()))
    assert means[0] < means[1] < means[2]  # higher kVp and more filtration harden the beam


def _line_integrals(image, physics):
    return -torch.log((image - physics.offset).clamp_min(1e-3) / (physics.photons * physics.gain))


def test_higher_kvp_lowers_bone_contrast(setup):
    ct, camera, pose, prepared = setup
    paths = prepared.materials(pose[None], "titanium")
    assert torch.allclose(paths.sum(0), siddon_line_integrals(prepared.mu, pose[None], camera, prepared.drr)[0].double(),
                          rtol=1e-4, atol=1e-4)  # the material split keeps the 60 keV line integral
    bone, soft = paths[1] > 0.5 * paths[1].max(), (paths[1] == 0) & (paths[0] > 0.5 * paths[0].max())
    assert bone.any() and soft.any()
    contrast = []
    for kvp in (60.0, 120.0):
        physics = replace(P.PRESETS["plain"], kvp=kvp, **QUIET)
        L = _line_integrals(frame(setup, physics)[0], physics)
        contrast.append(float(L[bone].mean() / L[soft].mean()))
    assert contrast[1] < 0.9 * contrast[0]


def test_scatter_raises_the_minimum_and_noise_falls_with_dose(setup):
    low = frame(setup, replace(P.PRESETS["plain"], **QUIET))[0]
    high = frame(setup, replace(P.PRESETS["plain"], quantum_noise=False, scatter_fraction=1.0))[0]
    assert high.min() > low.min() + 0.2 * (low.max() - low.min())
    thick = frame(setup, replace(P.PRESETS["plain"], quantum_noise=False, scatter_fraction=1.0,
                                 scatter_model="thickness", scatter_sigma_mm=10.0))[0] - low
    broad = frame(setup, replace(P.PRESETS["plain"], quantum_noise=False, scatter_fraction=1.0,
                                 scatter_sigma_mm=10.0))[0] - low
    assert thick[0, 0] < 0.2 * broad[0, 0] and thick.max() > 0.1 * broad.max()  # none from open field
    spreads = []
    for photons in (200.0, 20000.0):
        physics = replace(P.PRESETS["plain"], photons=photons, gain=50000.0 / photons, scatter_fraction=0.0)
        noisy, mean = frame(setup, physics)[0], frame(setup, replace(physics, quantum_noise=False))[0]
        spreads.append(float(((noisy - mean) / (mean - physics.offset)).std()))
    assert 7 < spreads[0] / spreads[1] < 13  # Poisson: relative noise ~ 1 / sqrt(dose), 10x here


def test_eight_bit_export_has_256_levels(setup):
    image, meta = frame(setup, P.PRESETS["processing"])
    assert meta["bits"] == 8 and meta["processed"]
    assert image.min() == 0 and image.max() == 255 and torch.equal(image, image.round())
    assert 150 < image.unique().numel() <= 256
    inverted, meta = frame(setup, P.PRESETS["processed-8bit"])
    assert meta["photometric"] == "MONOCHROME1" and inverted.max() == 255


def test_shutters_flatten_the_border(setup):
    physics = replace(P.PRESETS["shutters"], shutters=0.3)
    image, meta = frame(setup, physics, seed=2)
    top, bottom, left, right = meta["shutters_px"]
    assert min(top, bottom, left, right) >= 1
    band = torch.cat([image[:top].flatten(), image[:, :left].flatten()])
    field = image[top:SIZE - bottom, left:SIZE - right]
    assert band.mean() < field.min()  # the blades are darker than anything in the field
    assert band.std() < 0.2 * field.std()


def test_an_instrument_raises_attenuation_only_where_drawn(setup):
    ct, camera, pose, prepared = setup
    base = frame(setup, replace(P.PRESETS["plain"], **QUIET))[0]
    physics = replace(P.PRESETS["plain"], kwires=1, screws=2, retractors=1, **QUIET)
    tools = P.draw_instruments(physics, ct, torch.Generator().manual_seed(3))
    image, meta = frame(setup, physics, seed=3)
    assert [d["kind"] for d in meta["instruments"]] == ["screw", "screw", "kwire", "retractor"]
    assert meta["instruments"] == tools  # drawn from the frame's generator, before anything else
    source, pixels = P._pixel_rays(pose, camera)
    where = P._render_instruments(tools, source, pixels).sum(0) > 0
    assert 0.005 < where.float().mean() < 0.5
    assert (image[where] <= base[where]).all() and (image[where] < base[where]).float().mean() > 0.9
    assert torch.equal(image[~where], base[~where])
    table = frame(setup, replace(P.PRESETS["plain"], table=True, **QUIET))[0]
    assert (table <= base).all() and (table < base).float().mean() > 0.5  # AP: every ray crosses the table


def test_instruments_are_3d_and_the_same_in_every_view(setup):
    from SphericalRegLib.camera import project
    from SphericalRegLib.geometry import make_pose, so3_exp

    ct, camera, pose, prepared = setup
    wire = [{"kind": "kwire", "material": "iron", "cylinders": [[(ct.centre + torch.tensor(a)).tolist(),
                                                                  (ct.centre + torch.tensor(b)).tolist(), 4.0]],
             "plates": []} for a, b in [([-40.0, 10.0, -30.0], [40.0, -10.0, 30.0])]]
    turned = pose @ make_pose(so3_exp(torch.tensor([0.0, 0.0, 0.6], dtype=torch.float64)), ct.centre
                              - so3_exp(torch.tensor([0.0, 0.0, 0.6], dtype=torch.float64)) @ ct.centre)
    for T in (pose, turned):
        source, pixels = P._pixel_rays(T, camera)
        metal = P._render_instruments(wire, source, pixels)[3] / P.reference_mu("iron")  # mm of steel
        for t in (0.2, 0.5, 0.8):  # points along the wire project onto pixels that see it
            a, b = (torch.tensor(x, dtype=torch.float64) for x in wire[0]["cylinders"][0][:2])
            uv = project((a + t * (b - a))[None], T, camera)[0]
            assert metal[int(uv[1].round()), int(uv[0].round())] > 6.0  # nearly the 8 mm diameter
        assert 8.0 < metal.max() < 8.0 / 0.5 and (metal > 0).float().mean() < 0.3
    # a cylinder seen end-on: the path is its length
    source, pixels = P._pixel_rays(pose, camera)
    axis = (pixels[SIZE // 2, SIZE // 2] - source) / (pixels[SIZE // 2, SIZE // 2] - source).norm()
    rod = ct.centre - 10 * axis, ct.centre + 10 * axis
    end_on = P._cylinder_length(source, pixels, rod[0].tolist(), rod[1].tolist(), 2.0)
    assert abs(float(end_on[SIZE // 2, SIZE // 2]) - 20.0) < 1e-6 and float(end_on.max()) < 20.01
    # a plate edge-on and face-on
    plate = {"centre": ct.centre.tolist(), "axes": _axes_with_normal(axis), "half": [30.0, 20.0, 1.0]}
    length = P._plate_length(source, pixels, plate)
    assert abs(float(length[SIZE // 2, SIZE // 2]) - 2.0) < 1e-6


def _axes_with_normal(normal):
    """Three orthonormal rows, the last ``normal``."""
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    u = torch.linalg.cross(normal, helper)
    u = u / u.norm()
    v = torch.linalg.cross(normal, u)
    return [u.tolist(), v.tolist(), normal.tolist()]


def test_truncation_continues_the_body_past_the_ct(setup):
    ct, _, pose, _ = setup
    n = ct.shape[0]
    x = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2) / (n / 2)
    trunk = (x[:, None, None] ** 2 / 0.8 + x[None, :, None] ** 2 / 0.5 < 1).expand(ct.shape)
    ct = Volume(torch.where(trunk & (ct.data < 0), torch.full_like(ct.data, 20.0), ct.data), ct.ijk_to_ras)
    wide = default_camera(ct, 1020.0, SIZE, pixel_spacing=8.0)  # a field larger than the CT's shadow
    prepared = P.prepare(ct, wide)
    physics = replace(P.PRESETS["plain"], **QUIET)
    run = lambda p: P.simulate_frame(ct, pose, wide, p, torch.Generator().manual_seed(0), prepared)[0]  # noqa: E731
    open_, truncated = run(physics), run(replace(physics, truncation=1.0))
    source, pixels = P._pixel_rays(pose, wide)
    miss = P._ray_in_ct(ct, source, pixels) <= 1.0
    assert miss.float().mean() > 0.1
    assert torch.equal(open_[~miss], truncated[~miss])
    assert (truncated[miss] <= open_[miss]).all() and truncated[miss].mean() < open_[miss].mean() - 1000


def test_crop_ct_keeps_the_voxel_grid(setup):
    ct = setup[0]
    cropped = P.crop_ct(ct, 0.25, torch.Generator().manual_seed(1))
    assert cropped.shape == (24, 24, 18)
    first = int(round(float((cropped.ijk_to_ras[2, 3] - ct.ijk_to_ras[2, 3]) / ct.spacing[2])))
    assert 0 <= first <= 6 and torch.equal(cropped.data, ct.data[:, :, first:first + 18])
    centre = cropped.ijk_to_ras[:3, :3] @ torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64) + cropped.ijk_to_ras[:3, 3]
    torch.testing.assert_close(centre, ct.ijk_to_ras[:3, :3] @ torch.tensor([3.0, 4.0, 5.0 + first],
                                                                           dtype=torch.float64) + ct.ijk_to_ras[:3, 3])
    assert torch.equal(P.crop_ct(ct, 0.0, torch.Generator()).data, ct.data)


def test_heel_grid_blur_distortion_and_detector(setup):
    base = frame(setup, replace(P.PRESETS["plain"], **QUIET))[0]
    heel = frame(setup, replace(P.PRESETS["heel"], **QUIET), seed=1)[0]
    ratio = (heel - 100) / (base - 100)
    profile = torch.cat([ratio.mean(1), ratio.mean(0)])
    assert 0.25 < float(profile.max() - profile.min()) < 0.35  # a 30% ramp across the field
    grid = frame(setup, replace(P.PRESETS["grid"], **QUIET), seed=1)[0]
    ratio = (grid - 100) / (base - 100)
    assert 0.9 < float(ratio.min()) < 0.93 and float(ratio.max()) > 0.99  # 8% deep lines
    assert torch.allclose(ratio.std(0), torch.zeros(SIZE, dtype=ratio.dtype), atol=2e-3) or torch.allclose(
        ratio.std(1), torch.zeros(SIZE, dtype=ratio.dtype), atol=2e-3)  # lines along one axis
    blurred = frame(setup, replace(P.PRESETS["blur"], **QUIET))[0]
    assert blurred.diff(dim=1).abs().max() < 0.8 * base.diff(dim=1).abs().max()
    distorted = frame(setup, replace(P.PRESETS["distortion"], **QUIET))[0]
    c = SIZE // 2
    assert (distorted - base).abs().mean() > 100 and abs(distorted[c, c] - base[c, c]) < 0.05 * base[c, c]
    detector = frame(setup, P.PRESETS["detector"])[0]
    assert (detector == 65535).sum() >= 1 and (detector == 800).sum() >= SIZE  # hot pixels, a dead line


def test_random_is_seeded_and_varied(setup):
    draws = [P.physics_for("random", torch.Generator().manual_seed(s)) for s in range(12)]
    assert draws[0] == P.physics_for("random", torch.Generator().manual_seed(0))
    assert len({d.kvp for d in draws}) == 12 and len({d.mapping for d in draws}) >= 3
    for field in ("photons", "scatter_fraction", "blur_mm", "heel"):
        assert len({getattr(d, field) for d in draws}) == 12, field
    a, b = frame(setup, draws[0], seed=4)[0], frame(setup, draws[0], seed=4)[0]
    assert torch.equal(a, b) and not torch.equal(a, frame(setup, draws[1], seed=4)[0])


def test_every_preset_reads_back_through_the_reader(setup, tmp_path):
    ct, camera, pose, prepared = setup
    names = list(P.PRESETS) + ["random"] * 4
    for i, name in enumerate(names):
        g = torch.Generator().manual_seed(i)
        image, meta = P.simulate_frame(ct, pose, camera, P.physics_for(name, g), g, prepared)
        assert image.shape == (SIZE, SIZE) and image.dtype == torch.float64
        assert image.min() >= 0 and image.max() <= 2 ** meta["bits"] - 1 and torch.equal(image, image.round())
        dtype = np.uint8 if meta["bits"] == 8 else np.uint16
        path = tmp_path / f"{i}_{name}.png"
        sitk.WriteImage(sitk.GetImageFromArray(image.numpy().astype(dtype)), str(path))
        camera.save(tmp_path / "geometry.json")
        pixels, read_camera, read_meta = read_xray(path)
        assert read_meta["dtype"] == np.dtype(dtype).name and torch.equal(pixels.double(), image)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # processed frames may look like line integrals; reported
            L, _, mask = preprocess(pixels, read_camera, 32, photometric=meta["photometric"])
        assert torch.isfinite(L).all() and mask.float().mean() > 0.2, name
        assert L[mask].std() > 0, name
