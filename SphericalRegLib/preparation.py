"""The one-time preparation of a CT for a model: the training camera, the CT at the working
resolution and the length of the pose metric.

Training and model loading must prepare a CT identically, or a model would see another CT than the
one it learnt: both call these functions. Every error is an
:class:`~SphericalRegLib.errors.InputError` naming the CT (``source``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .camera import ISOCENTRE_FRACTION, Camera
from .errors import InputError
from .volume import Volume

if TYPE_CHECKING:  # SphericalRegLib.training imports this module
    from .training.config import TrainConfig

__all__ = ["training_camera", "working_volume", "pose_length", "check_anatomy_in_view", "MIN_ANATOMY_SHARE"]

MIN_ANATOMY_SHARE = 0.15
"""Below this share of the training field crossing tissue at the canonical view, training would learn
mostly air (a body in one corner of a large volume gives 7%; a narrow spine crop a third or more)."""


def _extent(ct: Volume) -> Tensor:
    return ct.spacing * torch.tensor(ct.shape, dtype=torch.float64)


def training_camera(ct: Volume, config: TrainConfig) -> Camera:
    """The training camera: ``config.camera`` if given, else a centred square detector of
    ``image_size`` pixels covering ``min(field_of_view_mm, CT extent)`` at the isocentre."""
    if config.camera is not None:
        return Camera.from_json(config.camera, "config camera").resized(config.image_size, config.image_size)
    fov = min(config.field_of_view_mm, float(_extent(ct).max()))
    detector = fov / ISOCENTRE_FRACTION
    n = config.image_size
    spacing = detector / n
    return Camera(config.sdd, (spacing, spacing), ((n - 1) / 2, (n - 1) / 2), (n, n))


def working_volume(ct: Volume, config: TrainConfig, camera: Camera | None = None, source="CT") -> Volume:
    """The CT in HU at the working resolution, ``(I, J, K)``: isotropic ``spacing_mm`` voxels,
    coarsened evenly so that no axis exceeds ``max_size``; box-averaged so that bone does not alias.

    Raises :class:`InputError` for a CT too small (under 8 voxels along an axis, or covering only
    a few pixels of the detector) or too large (coarsened beyond ``max_coarsening`` x the
    configured spacing, or over ``memory_budget_gib`` through the feature network).
    """
    extent = _extent(ct)
    spacing = max(config.spacing_mm, float(extent.max()) / config.max_size)
    if spacing > config.max_coarsening * config.spacing_mm:
        raise InputError(
            source,
            f"extent {_mm(extent)} mm is too large for the '{config.preset}' configuration: "
            f"at most {config.max_size} voxels a side would mean {spacing:.1f} mm voxels",
            f"a CT cropped to at most {config.max_size * config.max_coarsening * config.spacing_mm:.0f} mm "
            "a side, or a configuration with more voxels (--config full)",
        )
    shape = tuple(max(1, min(n, round(float(e) / spacing))) for e, n in zip(extent, ct.shape))
    if min(shape) < 8:
        raise InputError(source, f"has {tuple(ct.shape)} voxels ({_mm(extent)} mm): {shape} at the working "
                         f"spacing of {spacing:.1f} mm", "at least 8 voxels along every axis")
    gib = _feature_memory_bytes(shape, config) / 2**30
    if gib > config.memory_budget_gib:
        raise InputError(source, f"needs about {gib:.1f} GiB at the working resolution {shape}",
                         f"at most the configuration's budget of {config.memory_budget_gib} GiB")
    if camera is not None:
        pixel_at_iso = min(camera.pixel_spacing) * ISOCENTRE_FRACTION
        if float(extent.max()) < 8 * pixel_at_iso:
            raise InputError(source, f"extent {_mm(extent)} mm covers fewer than 8 detector pixels "
                             f"({pixel_at_iso:.1f} mm at the isocentre)", "a CT the X-ray field of view sees")
    resampled = ct.resampled(shape)
    data = ct.data.to(torch.float32)
    data = F.adaptive_avg_pool3d(data[None, None], shape)[0, 0] if all(
        s <= n for s, n in zip(shape, ct.shape)) else resampled.data
    return Volume(data, resampled.ijk_to_ras)


def _mm(extent: Tensor) -> str:
    return " x ".join(f"{float(e):.0f}" for e in extent)


def _feature_memory_bytes(shape, config: TrainConfig) -> float:
    """Rough peak memory of one feature-network pass with double backward: every hidden channel
    kept a few times over (activations, their gradients, and the graph of the gradient)."""
    kw = config.feature_kwargs
    hidden = kw.get("scalars", 4) + 3 * kw.get("vectors", 2) + 5 * kw.get("tensors", 1) + 16
    hidden = hidden if config.features == "equivariant" else 1
    return 4.0 * math.prod(shape) * hidden * 8 * 3


def pose_length(ct: Volume) -> float:
    """The characteristic length (mm) of the pose metrics: the CT's bounding radius."""
    return float(ct.radius)


@torch.no_grad()
def check_anatomy_in_view(hu: Tensor, renderer, reference: Tensor, source="CT") -> float:
    """The share of the training detector whose ray crosses at least 1 cm of water-equivalent
    tissue at the canonical view ``reference`` (4, 4); an :class:`InputError` when it is under
    :data:`MIN_ANATOMY_SHARE`: the conventions aim the C-arm at the volume's centre, so a CT whose
    anatomy is off-centre or mostly outside the volume would train the networks on air."""
    from .volume import MU_WATER, hu_to_mu

    L = renderer(hu_to_mu(hu.float())[None], reference.to(hu.device, torch.float64)[None])[0, 0]
    share = float((L > 10.0 * MU_WATER).float().mean())
    if share < MIN_ANATOMY_SHARE:
        raise InputError(source, f"at the canonical view of the volume's centre only {share:.0%} of the "
                         "training field crosses tissue: the anatomy is off-centre in the volume, mostly "
                         "outside it, or the CT is not in Hounsfield units",
                         "a CT cropped around the anatomy (its centre near the volume's centre), in HU")
    return share
