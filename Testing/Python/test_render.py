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
