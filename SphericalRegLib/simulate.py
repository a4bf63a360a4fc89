"""Simulated X-ray cases of a CT with ground truth.

The frames are detector intensities from more physics than the DRRs methods register with:
exact Siddon line integrals of attenuation at full CT resolution (DiffDRR), Beer-Lambert,
scatter (a broad blur of the primary), Poisson photon noise, detector gain and offset, and
16-bit quantisation. A method that merely re-renders its own DRR model cannot match them exactly.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor

from .camera import ISOCENTRE_FRACTION, Camera
from .errors import InputError
from .geometry import transform_points
from .io import read_ct, read_dicom_series, truth_path, write_json
from .poses import evaluation_poses
from .volume import Volume, hu_to_mu

__all__ = ["simulate_case", "default_camera", "sample_landmarks", "write_cases",
           "PHOTONS", "SCATTER_FRACTION", "SCATTER_SIGMA_MM"]

PHOTONS = 10_000.0
"""Mean photons per pixel in unattenuated air: a fluoroscopy-like dose at a binned pixel."""
SCATTER_FRACTION = 0.05
"""Scatter-to-primary ratio of the (blurred) scatter added to the primary image."""
SCATTER_SIGMA_MM = 40.0
"""Width (standard deviation, detector mm) of the scatter kernel: scatter is smooth."""
GAIN, OFFSET = 5.0, 100.0
"""Detector counts per photon and dark offset in counts: air lands near 52,600 of 65,535."""


def simulate_case(ct: Volume, camera_from_world: Tensor, camera: Camera, generator: torch.Generator,
                  photons: float = PHOTONS, scatter_fraction: float = SCATTER_FRACTION,
                  scatter_sigma_mm: float = SCATTER_SIGMA_MM, gain: float = GAIN, offset: float = OFFSET,
                  bone_scale: float = 1.0, drr=None) -> Tensor:
    """One simulated detector frame ``(rows, cols)`` float64 holding 16-bit counts (air bright).

    ``ct`` in HU; ``camera_from_world`` (4, 4). ``I = gain * Poisson(photons * (exp(-L) + s * blur(exp(-L)))) + offset``
    with L the Siddon line integral of :func:`hu_to_mu`; rounded and clipped to 0..65535.
    ``drr`` (``diffdrr_bridge.make_diffdrr`` of the attenuation volume) may be passed to reuse it.
    This is ``physics.simulate_frame`` under ``PRESETS["plain"]`` with these parameters.
    """
    from .physics import PRESETS, Prepared, simulate_frame

    physics = replace(PRESETS["plain"], photons=photons, scatter_fraction=scatter_fraction,
                      scatter_sigma_mm=scatter_sigma_mm, gain=gain, offset=offset)
    prepared = Prepared(ct, camera, drr=drr, bone_scale=bone_scale)
    return simulate_frame(ct, camera_from_world, camera, physics, generator, prepared)[0]


def default_camera(ct: Volume, sdd: float, size: int = 256, pixel_spacing: float | None = None) -> Camera:
    """A square detector on which the CT's central region fills most of the field at the canonical view.

    The canonical AP view looks along A-P, so the field spans R-L and S-I. Its side at the
    isocentre (``ISOCENTRE_FRACTION * sdd`` from the source) is 85% of the CT's smaller R/S extent; the detector is
    that magnified by ``1 / ISOCENTRE_FRACTION``.
    """
    corners = ct.corners()
    extent = corners.max(0).values - corners.min(0).values + ct.spacing.max()
    if pixel_spacing is None:
        field_at_isocentre = 0.85 * float(min(extent[0], extent[2]))
        pixel_spacing = field_at_isocentre / ISOCENTRE_FRACTION / size
    return Camera(sdd, (pixel_spacing, pixel_spacing), ((size - 1) / 2, (size - 1) / 2), (size, size)).validate(
        "camera (sdd, size, pixel_spacing)")


def sample_landmarks(ct: Volume, n: int, generator: torch.Generator, bone_hu: float = 300.0) -> Tensor:
    """``n`` world points (mm) at centres of voxels above ``bone_hu``, drawn without replacement.

    Falls back to soft tissue (> -200 HU) for a CT without bone.
    """
    data = ct.data if ct.data.dim() == 3 else ct.data[0]
    for threshold in (bone_hu, -200.0):
        index = (data > threshold).flatten().nonzero()[:, 0]
        if index.numel() >= n:
            break
    else:
        raise InputError("ct", "has too few voxels above -200 HU for landmarks", "a CT containing anatomy")
    pick = index[torch.randperm(index.numel(), generator=generator)[:n]]
    I, J, K = data.shape
    ijk = torch.stack([pick // (J * K), (pick // K) % J, pick % K], dim=-1).to(torch.float64)
    return ijk @ ct.ijk_to_ras[:3, :3].T + ct.ijk_to_ras[:3, 3]


def _copy_ct(source: Path, folder: Path, overwrite: bool) -> Path:
    """The CT into the case folder in its own format where that is one of the case format's."""
    name = source.name.lower()
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        if name.endswith(suffix) and source.is_file():
            target = folder / f"ct{suffix}"
            if target.exists() and not overwrite:
                raise InputError(target, "already exists", "an empty output folder or --overwrite")
            shutil.copyfile(source, target)
            return target
    # a DICOM folder, .nii, .mhd + raw, ...: rewrite losslessly as NIfTI
    target = folder / "ct.nii.gz"
    if target.exists() and not overwrite:
        raise InputError(target, "already exists", "an empty output folder or --overwrite")
    image = read_dicom_series(source) if source.is_dir() else sitk.ReadImage(str(source))
    sitk.WriteImage(image, str(target), True)
    return target


def _enclosing(body: Volume, ct: Volume, source) -> Volume:
    """``body``, checked to hold ``ct``'s corner voxels (1 mm tolerance), or a clear error."""
    inside = body.ijk_to_ras.to(torch.float64).inverse()
    ijk = transform_points(inside, ct.corners().to(torch.float64))
    size = torch.tensor(body.shape, dtype=torch.float64)
    tolerance = 1.0 / body.spacing.to(torch.float64)
    if not bool(((ijk >= -0.5 - tolerance) & (ijk <= size - 0.5 + tolerance)).all()):
        raise InputError(source, "does not hold the case CT's field (in world coordinates)",
                         "the CT the case's CT was cropped from, with the same world coordinates")
    return body


def _write_xray(path: Path, pixels: Tensor, bits: int = 16) -> None:
    """16-bit counts, or an 8-bit export as a system's image processing leaves it."""
    array = pixels.cpu().numpy().astype(np.uint8 if bits <= 8 else np.uint16)
    if path.suffix == ".npy":
        np.save(path, array)
    else:
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


ORBIT_DEG = (60.0, 90.0)
"""Range of the orbital angle between view 0 and each further view (either direction)."""
ANGULATION_DEG = 10.0
"""Further views are tilted cranially or caudally by up to this much."""


def draw_orbits(n_views: int, generator: torch.Generator, isocentre_mm: float) -> list[dict]:
    """Each further view's C-arm turn about a point ``isocentre_mm`` along view 0's central ray:
    orbit and angulation (deg) and its ``camera_from_reference``."""
    from .views import orbit

    turns = []
    for _ in range(1, n_views):
        u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
        sign = 1.0 if u[0] < 0.5 else -1.0
        orbital = sign * (ORBIT_DEG[0] + (ORBIT_DEG[1] - ORBIT_DEG[0]) * u[1])
        angulation = ANGULATION_DEG * (2 * u[2] - 1)
        turns.append({"orbit_deg": orbital, "angulation_deg": angulation,
                      "camera_from_reference": orbit(orbital, angulation, isocentre_mm)})
    return turns


def write_cases(ct_path: str | Path, out: str | Path, n: int, seed: int, size: int = 256, sdd: float = 1020.0,
                pixel_spacing: float | None = None, n_landmarks: int = 16, photons: float = PHOTONS,
                xray_format: str = "png", overwrite: bool = False, views: int = 1, physics: str = "plain",
                log=print, xray_ct: str | Path | None = None) -> list[Path]:
    """Write ``n`` case folders ``out/case_000 ...`` and their ``case_XXX.truth.json``; return the folders.

    ``views`` > 1 adds ``view_1/`` ... to each case (conventions, "Several views of one case"): the
    C-arm turned by an orbit in ORBIT_DEG (either way) with an angulation of up to ANGULATION_DEG
    about an isocentre on view 0's central ray at the CT centre's depth (where a radiographer
    puts it, so that the anatomy stays in view), each view with its own noise. View 0 and everything else are the same
    as a single-view run of the same seed.

    ``physics``: a preset of :mod:`SphericalRegLib.physics` or ``random`` (every parameter drawn per
    view; the table and the instruments, being in the room, are the same in every view of a case);
    ``plain`` with ``photons`` is the simulator of earlier results, frame for frame.

    ``xray_ct``: the CT the X-rays are rendered from, when ``ct_path`` is a crop of it in the same
    world coordinates (a narrow spine CT cut from a wider one). A patient's X-ray shows the body on
    past a narrow CT's field, and one rendered from the crop shows a slab with air beside it; the
    case gets the crop, as registration would. Poses and landmarks are drawn for the crop."""
    ct_path, out = Path(ct_path), Path(out)
    if n < 1:
        raise InputError("n", f"is {n}", "at least one case")
    if views < 1:
        raise InputError("views", f"is {views}", "at least one view per case")
    if out.exists() and not out.is_dir():
        raise InputError(out, "is a file", "an output folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(out, "is not empty", "an empty or new output folder, or --overwrite to write into it")
    if xray_format not in ("png", "npy"):
        raise InputError("xray_format", f"is {xray_format!r}", "png or npy")
    from .physics import Prepared, draw_instruments, physics_for, simulate_frame

    physics_generator = torch.Generator().manual_seed(int(seed) + 3_000_003)
    physics_for(physics, physics_generator)  # an unknown name fails before any work
    physics_generator.manual_seed(int(seed) + 3_000_003)
    ct = read_ct(ct_path)
    body = ct if xray_ct is None else _enclosing(read_ct(xray_ct), ct, xray_ct)
    camera = default_camera(ct, sdd, size, pixel_spacing)
    truth, start = evaluation_poses(ct.centre, camera.sdd, n, seed)
    generator = torch.Generator().manual_seed(int(seed))
    out.mkdir(parents=True, exist_ok=True)

    from .diffdrr_bridge import make_diffdrr

    # Siddon in chunks of 4096 rays: memory stays bounded on a full-resolution CT
    patch = 64 if camera.rows * camera.cols > 64 * 64 else None
    drr = make_diffdrr(Volume(hu_to_mu(body.data.float()), body.ijk_to_ras), camera, patch_size=patch)
    write_json(out / "simulation.json", {
        "ct": str(ct_path.resolve()), "n": n, "seed": int(seed), "camera": camera.to_json(),
        "photons_per_pixel_in_air": photons, "scatter_to_primary": SCATTER_FRACTION,
        "scatter_sigma_mm": SCATTER_SIGMA_MM, "gain_counts_per_photon": GAIN, "offset_counts": OFFSET,
        "poses": "poses.evaluation_poses(ct.centre, sdd, n, seed)", "renderer": "DiffDRR Siddon, full CT resolution",
        "views": views, "xray_ct": None if xray_ct is None else str(Path(xray_ct).resolve()),
        **({"orbit_deg": ORBIT_DEG, "angulation_deg_max": ANGULATION_DEG} if views > 1 else {}),
        "physics": physics, "physics_per_case": "case_XXX.truth.json, 'physics' (one per view)",
    }, overwrite=True)
    prepared = Prepared(body, camera, drr=drr)

    def frame(pose: Tensor, noise: torch.Generator, room: dict) -> tuple[Tensor, dict]:
        """One view's file pixels and meta; ``room`` holds the case's table and instruments once drawn."""
        if physics == "plain":
            return simulate_case(body, pose, camera, noise, photons=photons, drr=drr), {"physics": "plain"}
        drawn = physics_for(physics, physics_generator)
        if "physics" in room:  # the same table and instruments as view 0
            first = room["physics"]
            drawn = replace(drawn, table=first.table, screws=first.screws, kwires=first.kwires,
                            retractors=first.retractors)
        else:
            room["physics"] = drawn
            if drawn.screws or drawn.kwires or drawn.retractors:
                room["instruments"] = draw_instruments(drawn, ct, physics_generator)
        return simulate_frame(body, pose, camera, drawn, noise, prepared, room.get("instruments"))
    # the further views draw from their own generator: view 0 stays as a single-view run writes it
    turns_generator = torch.Generator().manual_seed(int(seed) + 1_000_003)
    noise_generator = torch.Generator().manual_seed(int(seed) + 2_000_003)
    folders = []
    for i in range(n):
        tic = time.perf_counter()
        folder = out / f"case_{i:03d}"
        folder.mkdir(exist_ok=True)
        stale = sorted(p.name for p in folder.glob("view_*") if p.is_dir() and p.name[5:].isdigit()
                       and int(p.name[5:]) >= views)
        if stale:  # they would be read as views of the new case
            raise InputError(folder, f"holds {', '.join(stale)} from an earlier run with more views",
                             "a new output folder, or the same --views as before")
        room = {}
        pixels, meta = frame(truth[i], generator, room)
        metas = [meta]
        _write_xray(folder / f"xray.{xray_format}", pixels, meta.get("bits", 16))
        write_json(folder / "geometry.json", camera.to_json(), overwrite)
        # a radiographer turns the C-arm about the anatomy: the isocentre at the CT centre's depth
        depth = float(transform_points(truth[i], ct.centre[None].to(truth))[0, 2])
        for k, turn in enumerate(draw_orbits(views, turns_generator, depth), start=1):
            sub = folder / f"view_{k}"
            sub.mkdir(exist_ok=True)
            pixels, meta = frame(turn["camera_from_reference"] @ truth[i], noise_generator, room)
            metas.append(meta)
            _write_xray(sub / f"xray.{xray_format}", pixels, meta.get("bits", 16))
            write_json(sub / "geometry.json", {**camera.to_json(), "camera_from_reference": turn["camera_from_reference"]},
                       overwrite)
        write_json(folder / "init.json", {"camera_from_world": start[i]}, overwrite)
        _copy_ct(ct_path, folder, overwrite)
        landmarks = sample_landmarks(ct, n_landmarks, generator)
        truth_json = {"camera_from_world": truth[i], "landmarks_world": landmarks}
        if physics != "plain":
            truth_json["physics"] = metas
        write_json(truth_path(folder), truth_json, overwrite)
        folders.append(folder)
        log(f"case {i + 1}/{n}: {folder} ({time.perf_counter() - tic:.1f} s)")
    stale = sorted(p.name for p in out.glob("case_[0-9][0-9][0-9]") if p.is_dir() and int(p.name[5:]) >= n)
    if stale:
        log(f"note: {out} still holds {len(stale)} older case folders ({stale[0]} ...) not written by this run")
    return folders
