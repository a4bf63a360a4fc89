"""A trained patient-specific model on disk: its configuration, its checkpoint and its loading.

A checkpoint holds everything registration needs besides the CT: the full :class:`TrainConfig`,
the C-arm camera it was trained for, the state of the three networks (CT features, similarity,
regressor) and a fingerprint of the CT, so that a model is never applied to a CT it was not
trained on. Training state (optimiser, scheduler, step, RNG states, history) rides along so a run
resumes exactly.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .camera import Camera
from .errors import InputError
from .io import atomic_write
from .poses import EVAL_ROT_DEG, EVAL_TRANS_MM, INIT_ROT_DEG, INIT_TRANS_MM
from .volume import Volume, hu_to_mu

__all__ = [
    "FORMAT_VERSION",
    "TrainConfig",
    "PRESETS",
    "ModelBundle",
    "default_camera",
    "working_volume",
    "ct_fingerprint",
    "build_networks",
    "save_checkpoint",
    "read_checkpoint",
    "load_model",
]

FORMAT_VERSION = 1
"""Bumped whenever the checkpoint layout or the meaning of a stored field changes."""

_ISOCENTRE_FRACTION = 0.8
"""Source-to-isocentre distance as a share of sdd (the conventions' canonical view)."""


def _scaled(spread, factor: float) -> tuple[float, float, float]:
    return tuple(float(s) * factor for s in spread)


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored whole in every checkpoint.

    Camera: ``camera`` (a ``geometry.json`` dictionary) when given, otherwise one derived from
    the CT like a typical C-arm (:func:`default_camera`): ``sdd`` mm, a square detector of
    ``image_size`` pixels that covers ``field_of_view_mm`` (or the CT's extent, if smaller) at
    the isocentre. The CT is worked on at ``spacing_mm`` isotropic voxels, coarsened so that no
    axis exceeds ``max_size`` voxels.

    Pose sampling: ground truths are offsets of the canonical AP view with per-axis spreads
    ``truth_rot_deg`` / ``truth_trans_mm``; moving poses are further offsets of the truth with
    spreads ``moving_rot_deg`` / ``moving_trans_mm`` times a per-sample factor uniform in
    ``moving_scale``, so training sees both the conventions' starting offsets and larger ones.
    """

    preset: str = "small"
    # CT and camera
    spacing_mm: float = 3.0
    max_size: int = 64
    max_coarsening: float = 4.0
    memory_budget_gib: float = 4.0
    sdd: float = 1020.0
    field_of_view_mm: float = 300.0
    image_size: int = 64
    camera: dict | None = None
    n_samples: int | None = None
    # networks
    features: str = "equivariant"
    feature_kwargs: dict = field(default_factory=lambda: dict(channels=3))
    space: str = "sphere"
    similarity_kwargs: dict = field(default_factory=dict)
    regressor_kwargs: dict = field(default_factory=dict)
    # objective
    metric: str = "so4"
    regressor_weight: float = 1.0
    # value term: the RMS token distance should read the geodesic pose distance in units of value_scale_mm
    value_weight: float = 0.5
    value_scale_mm: float = 30.0
    # pose sampling (must cover poses.EVAL_* and the starting offsets INIT_*)
    truth_rot_deg: tuple = _scaled(EVAL_ROT_DEG, 1.5)
    truth_trans_mm: tuple = _scaled(EVAL_TRANS_MM, 1.5)
    moving_rot_deg: tuple = INIT_ROT_DEG
    moving_trans_mm: tuple = INIT_TRANS_MM
    moving_scale: tuple = (0.1, 2.5)
    bone_scale: tuple = (0.7, 1.5)
    augment_p: float = 0.5  # probability of each X-ray randomisation (method notes: 0.5)
    # optimisation
    steps: int = 2000
    batch_size: int = 4
    lr_similarity: float = 2e-4
    lr_features: float = 3e-4
    lr_regressor: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    clip_grad: float = 10.0
    seed: int = 0
    fixed_batch: bool = False
    # bookkeeping
    val_every: int = 100
    val_size: int = 16
    val_seed: int = 1_000_003
    checkpoint_every: int = 250

    def __post_init__(self):
        for name in ("truth_rot_deg", "truth_trans_mm", "moving_rot_deg", "moving_trans_mm",
                     "moving_scale", "bone_scale"):
            setattr(self, name, tuple(float(x) for x in getattr(self, name)))
        choices = dict(features=("equivariant", "plain"), space=("sphere", "euclidean", "hyperbolic"),
                       metric=("se3", "so4"))
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"--{name}", f"is {getattr(self, name)!r}", " or ".join(allowed))
        if self.steps < 1 or self.batch_size < 1 or self.image_size < 8:
            raise InputError("config", f"steps={self.steps}, batch_size={self.batch_size}, "
                             f"image_size={self.image_size}", "steps >= 1, batch >= 1, images >= 8 px")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source=None) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(source, f"configuration has unknown fields {unknown}",
                             "a checkpoint written by this version of sphericalreg")
        return cls(**d)

    @classmethod
    def preset_named(cls, name: str, **overrides) -> "TrainConfig":
        if name not in PRESETS:
            raise InputError("--config", f"is {name!r}", " or ".join(PRESETS))
        return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


PRESETS = {
    # Two CPU cores, at most 45 minutes. On the example CT (64 x 64 x 59 working voxels, 64 x 64
    # images, batch 4) a step took 1.2 s with one thread: 1600 steps plus validation and checkpoints
    # take about 35 minutes. Each X-ray randomisation at p = 0.1: at 0.3 (most images changed two or
    # more ways, a third inverted) the regressor learnt nothing in 300 steps at batch 4.
    "small": TrainConfig(preset="small", spacing_mm=3.0, max_size=64, image_size=64, n_samples=64,
                         batch_size=4, steps=1600, warmup_steps=100, val_every=100, checkpoint_every=200,
                         memory_budget_gib=4.0, augment_p=0.1, lr_similarity=5e-4),
    # One GPU.
    "full": TrainConfig(preset="full", spacing_mm=2.0, max_size=128, image_size=128, batch_size=16,
                        steps=20000, memory_budget_gib=24.0, val_every=500, val_size=64,
                        checkpoint_every=1000, feature_kwargs=dict(channels=4, scalars=8, vectors=4, tensors=2)),
}


# ----------------------------------------------------------------------------- CT preparation


def _extent(ct: Volume) -> Tensor:
    return ct.spacing * torch.tensor(ct.shape, dtype=torch.float64)


def default_camera(ct: Volume, config: TrainConfig) -> Camera:
    """The training camera: ``config.camera`` if given, else a centred square detector of
    ``image_size`` pixels covering ``min(field_of_view_mm, CT extent)`` at the isocentre."""
    if config.camera is not None:
        return Camera.from_json(config.camera, "config camera").resized(config.image_size, config.image_size)
    fov = min(config.field_of_view_mm, float(_extent(ct).max()))
    detector = fov / _ISOCENTRE_FRACTION
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
        pixel_at_iso = min(camera.pixel_spacing) * _ISOCENTRE_FRACTION
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


def ct_fingerprint(ct: Volume) -> dict:
    """Shape, spacing, ijk_to_ras and a hash of the HU data averaged onto 16^3 and rounded."""
    data = ct.data if ct.data.dim() == 3 else ct.data[0]
    low = F.adaptive_avg_pool3d(data.detach().to(torch.float64).cpu()[None, None], (16, 16, 16))
    digest = hashlib.sha256(low.round().to(torch.int64).numpy().tobytes()).hexdigest()
    return dict(
        shape=list(ct.shape),
        spacing=[round(float(s), 6) for s in ct.spacing],
        ijk_to_ras=ct.ijk_to_ras.tolist(),
        hu_sha256=digest,
    )


def _same_ct(a: dict, b: dict) -> bool:
    return (
        a["shape"] == b["shape"]
        and a["hu_sha256"] == b["hu_sha256"]
        and torch.allclose(torch.tensor(a["ijk_to_ras"]), torch.tensor(b["ijk_to_ras"]), atol=1e-3)
    )


# ----------------------------------------------------------------------------- networks


def build_networks(config: TrainConfig, reference_pose: Tensor, isocentre: Tensor,
                   length: float) -> tuple[nn.Module, nn.Module, nn.Module]:
    """``(features, similarity, regressor)`` freshly initialised for ``config``; the regressor
    predicts offsets of ``reference_pose`` (4, 4) about ``isocentre`` (3,) in units of ``length`` mm."""
    from .features import EquivariantFeatures, PlainFeatures
    from .regressor import PoseRegressor
    from .similarity import SimilarityNet

    features = EquivariantFeatures(**config.feature_kwargs) if config.features == "equivariant" else PlainFeatures()
    similarity = SimilarityNet(drr_channels=features.channels, space=config.space,
                               **{"image_size": config.image_size, **config.similarity_kwargs})
    regressor = PoseRegressor(reference_pose, isocentre, length, **config.regressor_kwargs)
    return features, similarity, regressor


@dataclass
class ModelBundle:
    """A trained model ready to register X-rays of its CT.

    features, similarity, regressor: the networks in eval mode; config: the training
    configuration; camera: the C-arm camera it was trained for (images are resized to it);
    volume: the CT in HU at the working resolution; mu: its attenuation ``(1, I, J, K)``;
    feature_volume: ``features(mu)`` ``(C, I, J, K)`` with ``volume.ijk_to_ras``, computed once per
    CT (the one-time per-CT preparation); reference_pose: the canonical AP pose ``(4, 4)`` the
    regressor's offsets refer to; length: the characteristic length (mm) of the pose metric;
    step: training steps done; history: training curves.
    """

    features: nn.Module
    similarity: nn.Module
    regressor: nn.Module
    config: TrainConfig
    camera: Camera
    volume: Volume
    mu: Tensor
    feature_volume: Volume
    reference_pose: Tensor
    length: float
    step: int
    history: dict


def save_checkpoint(path, *, config: TrainConfig, camera: Camera, fingerprint: dict, networks: dict,
                    step: int, optimizer=None, scheduler=None, history=None, rng=None,
                    world_size: int = 1, extra: dict | None = None) -> None:
    """Write the checkpoint atomically (temporary file in the same folder, then ``os.replace``).

    ``networks``: ``{"features": module, "similarity": module, "regressor": module}``.
    """
    path = Path(path)
    state = dict(
        format="sphericalreg-model",
        format_version=FORMAT_VERSION,
        config=config.to_dict(),
        camera=camera.to_json(),
        ct=fingerprint,
        networks={name: module.state_dict() for name, module in networks.items()},
        optimizer=optimizer.state_dict() if optimizer is not None else None,
        scheduler=scheduler.state_dict() if scheduler is not None else None,
        step=int(step),
        history=history or {},
        rng=rng or {},
        world_size=int(world_size),
        **(extra or {}),
    )
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path, ct: Volume | None = None, map_location="cpu") -> dict:
    """The checkpoint dictionary, checked: a real checkpoint, of this format version, and (given
    ``ct``) trained on that CT. Every failure is an :class:`InputError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "model file not found", "a .pt file written by 'sphericalreg train'")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for a damaged zip/pickle
        raise InputError(path, f"is not a readable model checkpoint, truncated or corrupted "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                         "a .pt file written by 'sphericalreg train'") from None
    if not isinstance(state, dict) or state.get("format") != "sphericalreg-model":
        raise InputError(path, "is a torch file but not a SphericalReg model",
                         "a .pt file written by 'sphericalreg train'")
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        age = "an older" if isinstance(version, int) and version < FORMAT_VERSION else "a newer"
        raise InputError(path, f"was written in {age} model format (version {version})",
                         f"format version {FORMAT_VERSION}: retrain with this sphericalreg "
                         "or use the version that wrote it")
    if ct is not None:
        mine = ct_fingerprint(ct)
        theirs = state["ct"]
        if not _same_ct(mine, theirs):
            raise InputError(
                path,
                f"was trained on another CT ({_describe(theirs)}), not this one ({_describe(mine)})",
                "the CT the model was trained on: models are patient-specific, train one with 'sphericalreg train'",
            )
    return state


def _describe(fp: dict) -> str:
    shape = "x".join(str(s) for s in fp["shape"])
    spacing = " x ".join(f"{s:g}" for s in fp["spacing"])
    return f"{shape} voxels of {spacing} mm, HU hash {fp['hu_sha256'][:8]}"


def load_model(path, ct: Volume, device="cpu") -> ModelBundle:
    """Load a trained model for ``ct`` (HU, ``(I, J, K)``) and prepare the CT's feature volume.

    Raises :class:`InputError` for a missing, damaged, other-version or other-CT model file and
    for a CT the configuration cannot work on.
    """
    from .camera import canonical_ap_pose

    state = read_checkpoint(path, ct)
    config = TrainConfig.from_dict(state["config"], path)
    camera = Camera.from_json(state["camera"], path)
    volume = working_volume(ct, config, camera)
    reference, length = canonical_ap_pose(ct.centre, camera.sdd), pose_length(ct)
    features, similarity, regressor = build_networks(config, reference, ct.centre, length)
    try:
        for name, module in (("features", features), ("similarity", similarity), ("regressor", regressor)):
            module.load_state_dict(state["networks"][name])
    except (KeyError, RuntimeError) as e:
        raise InputError(path, f"network weights do not fit this version's networks ({str(e).splitlines()[0]})",
                         "a model written by this version of sphericalreg") from None
    for module in (features, similarity, regressor):
        module.to(device).eval()
    mu = hu_to_mu(volume.data.to(device))[None]
    with torch.no_grad():
        feats = features(mu, volume.spacing)
    return ModelBundle(
        features=features, similarity=similarity, regressor=regressor, config=config, camera=camera,
        volume=volume, mu=mu, feature_volume=Volume(feats, volume.ijk_to_ras),
        reference_pose=reference, length=length,
        step=int(state["step"]), history=state.get("history", {}),
    )


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """``--device``: cuda when available unless named; ``cuda`` means this rank's GPU under torchrun."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device", f"is {name} but no CUDA device is available", "cpu")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name != "cpu":
        raise InputError("--device", f"is {name!r}", "cpu or cuda")
    return torch.device("cpu")


def pose_length(ct: Volume) -> float:
    """The characteristic length (mm) of the pose metrics: the CT's bounding radius."""
    return float(ct.radius)


def export_model(source, target, *, half: bool = True, overwrite: bool = False) -> Path:
    """A deployable copy of a training checkpoint: networks, configuration, camera, CT fingerprint
    and curves, without optimiser, scheduler and RNG state; floating weights in float16 unless
    ``half`` is False (loading casts them back to float32). Returns ``target``."""
    from .io import atomic_write

    target = Path(target)
    if target.exists() and not overwrite:
        raise InputError(target, "already exists", "a new path, or --overwrite")
    state = read_checkpoint(source)
    cast = (lambda t: t.half() if t.is_floating_point() else t) if half else (lambda t: t)
    state["networks"] = {name: {k: cast(v) for k, v in sd.items()} for name, sd in state["networks"].items()}
    for key in ("optimizer", "scheduler", "rng"):
        state[key] = None
    state["exported_from"] = {"path": str(source), "half": half}
    atomic_write(target, lambda tmp: torch.save(state, tmp))
    return target


def add_arguments(p) -> None:
    p.add_argument("model", help="checkpoint written by 'sphericalreg train'")
    p.add_argument("out", help="the deployable model file to write")
    p.add_argument("--float32", action="store_true", help="keep float32 weights (default: float16, half the size)")
    p.add_argument("--overwrite", action="store_true")


def main(args) -> int:
    out = export_model(args.model, args.out, half=not args.float32, overwrite=args.overwrite)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")
    return 0
