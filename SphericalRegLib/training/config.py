"""What defines a training run: :class:`TrainConfig`, its named presets and JSON configuration files.

The configuration is stored whole in every checkpoint (:mod:`SphericalRegLib.checkpoint`), so it
lives apart from the trainer: loading a model for registration needs the configuration but none of
the training machinery.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..errors import InputError
from ..poses import EVAL_ROT_DEG, EVAL_TRANS_MM, INIT_ROT_DEG, INIT_TRANS_MM
from .objective import METRICS

__all__ = ["TrainConfig", "PRESETS", "NETWORKS", "ARCHITECTURE", "NETWORK_FIELDS", "load_config", "config_file_fields"]

NETWORKS = ("features", "similarity", "regressor")
ARCHITECTURE = ("spacing_mm", "max_size", "max_coarsening", "sdd", "field_of_view_mm", "image_size", "camera",
                "n_samples", "features", "feature_kwargs", "space", "similarity_kwargs", "regressor_kwargs")
"""The fields that shape the networks and what they see: a run started from another model's
networks (``sphericalreg train --init``) takes these from that model, except the network fields
below that its configuration file sets itself."""

NETWORK_FIELDS = {"features": ("features", "feature_kwargs"),
                  "similarity": ("features", "feature_kwargs", "space", "similarity_kwargs"),
                  "regressor": ("regressor_kwargs",)}
"""Per network, the architecture fields that shape it beside the images and the CT grid. With
``--init``, a configuration file may change these for the networks it trains: those start afresh
(e.g. a new similarity learnt beside a kept regressor)."""


def _scaled(spread, factor: float) -> tuple[float, float, float]:
    return tuple(float(s) * factor for s in spread)


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored whole in every checkpoint.

    Camera: ``camera`` (a ``geometry.json`` dictionary) when given, otherwise one derived from
    the CT like a typical C-arm (:func:`SphericalRegLib.preparation.training_camera`): ``sdd`` mm,
    a square detector of ``image_size`` pixels that covers ``field_of_view_mm`` (or the CT's
    extent, if smaller) at the isocentre. The CT is worked on at ``spacing_mm`` isotropic voxels, coarsened so that no
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
    # each sample's direction terms weighted by its own gradient norm (objective.direction_loss)
    weighted_direction: bool = False
    regressor_weight: float = 1.0
    # value term: the RMS token distance should read the geodesic pose distance in units of value_scale_mm
    value_weight: float = 0.5
    value_scale_mm: float = 30.0
    # the value term at the true pose too (Trainer.anchor_loss): puts the learnt minimum at the truth
    anchor_weight: float = 0.0
    # pose sampling (must cover poses.EVAL_* and the starting offsets INIT_*)
    truth_rot_deg: tuple = _scaled(EVAL_ROT_DEG, 1.5)
    truth_trans_mm: tuple = _scaled(EVAL_TRANS_MM, 1.5)
    moving_rot_deg: tuple = INIT_ROT_DEG
    moving_trans_mm: tuple = INIT_TRANS_MM
    moving_scale: tuple = (0.1, 2.5)
    bone_scale: tuple = (0.7, 1.5)
    augment_p: float = 0.5  # probability of each X-ray randomisation (method notes: 0.5)
    # probability of each physics-family effect per training X-ray (augment.randomise_physics: spectrum,
    # scatter, noise, blur, heel, grid, shutters, instruments, processing), before the randomisation
    # above; 0 leaves training as it was
    physics_p: float = 0.0
    # whether the similarity's X-rays go through the physics family too; False keeps it to the X-rays the
    # regressor reads alone, so the similarity trains on exactly what it trained on without physics
    physics_similarity: bool = True
    # probability per training X-ray of a field that ends early (augment.cut_field: a smaller or
    # off-centre detector, collimation), the DRR cut alike as registration cuts it
    field_cut_p: float = 0.0
    # the smallest detector a cut field stands for, as a fraction of the training camera's side:
    # a narrow CT's C-arm, or a 9-inch intensifier read by a model trained for 30 cm, fills a third
    # to a half of the training image, and a regressor that never saw that reads it 100+ mm off
    field_min_side: float = 1.0
    # how the cut detector's side is drawn between field_min_side and 1: min + (1 - min) u^power,
    # u ~ U(0, 1); 1 draws it uniformly, 2 puts about half the cuts of min 0.35 below half the side
    field_side_power: float = 1.0
    # the networks this run optimises (the others keep their weights: e.g. a regressor fine-tuned
    # alone, without rendering feature DRRs or the double backward, at ~1/10 of a joint step)
    trained: tuple = NETWORKS
    # networks a run started from another model (sphericalreg train --init) does not take from it:
    # they start from random weights, as in a run from scratch (each must be in ``trained``)
    afresh: tuple = ()
    # the model whose networks this run started from (sphericalreg train --init), for the record
    initialised_from: str | None = None
    # optimisation
    steps: int = 2000
    batch_size: int = 4
    # X-rays the regressor sees each step (up to batch_size: the batch's own). Those beyond it are rendered
    # for the regressor alone, with no feature DRRs and no double backward, so they cost little; four
    # times the poses per step made the GPU model's regressor three times better (docs/results.md)
    regressor_batch: int = 0
    # the share of the steps, at the start, that train the regressor alone (max(batch_size, regressor_batch)
    # X-rays, no feature DRR, no double backward: about a quarter of a joint step on a CPU); the features and
    # the similarity warm up and decay over the steps after them, the regressor over all
    regressor_only_share: float = 0.0
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
    # after training: simulated held-out cases of the CT on which the confidence and the uncertainty
    # are calibrated (evaluation.calibration.calibrate_model), shared among the comma-separated
    # physics presets; 0 leaves the model uncalibrated
    calibration_cases: int = 8
    calibration_physics: str = "plain,random"

    def __post_init__(self):
        for name in ("truth_rot_deg", "truth_trans_mm", "moving_rot_deg", "moving_trans_mm",
                     "moving_scale", "bone_scale"):
            setattr(self, name, tuple(float(x) for x in getattr(self, name)))
        self.trained, self.afresh = tuple(self.trained), tuple(self.afresh)
        unknown = [n for n in self.trained if n not in NETWORKS]
        if unknown or not self.trained:
            raise InputError("trained", f"is {list(self.trained)}", "one or more of " + ", ".join(NETWORKS))
        if not set(self.afresh) <= set(self.trained):
            raise InputError("afresh", f"is {list(self.afresh)} with trained {list(self.trained)}",
                             "networks this run trains: one it does not train would keep its random weights")
        choices = dict(features=("equivariant", "plain"), space=("sphere", "euclidean", "hyperbolic"),
                       metric=METRICS)
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(name, f"is {getattr(self, name)!r}", " or ".join(allowed))
        for name in ("physics_p", "field_cut_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(name, f"is {getattr(self, name)}", "a probability from 0 (off) to 1")
        if not 0 < self.field_min_side <= 1:
            raise InputError("field_min_side", f"is {self.field_min_side}",
                             "a fraction of the training camera's side in (0, 1]")
        if not self.field_side_power > 0:
            raise InputError("field_side_power", f"is {self.field_side_power}",
                             "a positive exponent (1: cut detectors' sides drawn uniformly)")
        if self.calibration_cases < 0:
            raise InputError("calibration_cases", f"is {self.calibration_cases}", "0 (no calibration) or more cases")
        from ..physics import physics_names

        physics_names(self.calibration_physics, "calibration_physics")
        if not 0 <= self.regressor_only_share < 1:
            raise InputError("regressor_only_share", f"is {self.regressor_only_share}",
                             "a share of the steps from 0 (none) to below 1 for the regressor alone")
        if self.regressor_batch < 0:
            raise InputError("regressor_batch", f"is {self.regressor_batch}",
                             "0 or more X-rays a step (up to batch_size: the batch's own)")
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
            raise InputError("config", f"is {name!r}", " or ".join(PRESETS))
        return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


PRESETS = {
    # Two CPU cores: 40.5 minutes, calibration included, timed whole on the idle machine with the physics
    # family (thirty-first session; 58 beside other jobs, docs/results.md). On the example CT
    # (64 x 64 x 59 working voxels, 64 x 64 images, batch 4) a step took 1.2 s with one thread: 1600
    # steps plus validation and checkpoints take about 35 minutes. Each X-ray randomisation at p = 0.1:
    # at 0.3 (most images changed two or more ways, a third inverted) the regressor learnt nothing in
    # 300 steps at batch 4.
    # The similarity is docs/learnability.md's recipe (fifteenth session): tokens from the trunk's
    # stride-8 stage (an 8 x 8 grid of regional tokens), tied stems, the gradient-weighted direction
    # loss and the SE(3) target. From scratch on the spine crop it put 57% of 256 held-out gradients
    # within 30 deg after 1600 steps (the trainer's own 256: 61%), against 14% of 64 for the second
    # session's recipe (docs/results.md, "A similarity that learns from scratch", and the sixteenth session).
    # The regressor sees 16 X-rays a step, 12 of them rendered for it alone (regressor_batch): on the
    # spine crop 24 mm / 10.7 deg at the isocentre after 1600 steps against 46 mm / 18.8 deg at batch 4,
    # the similarity unchanged, the run 41 against 36 minutes beside other jobs (sixteenth session).
    # Half the training X-rays end early at a border (field_cut_p), as registration reads an X-ray
    # from a detector smaller than the training camera's: without it the regressor read the example
    # cases 11.8 mm off at the isocentre, with it 6.2 mm (docs/results.md, field cuts).
    # The cut field may also be a detector down to 35% of the camera's side (field_min_side): the spine
    # crop's cases, on a 150 mm detector, were read 144 mm off without it, 80 mm with it (docs/results.md,
    # "Detectors smaller than the training camera's").
    # The first 3100 of the 4000 steps train the regressor alone (regressor_only_share), at about a
    # quarter of a joint step each; the similarity then trains for 900 joint steps (its share on the
    # spine crop had stopped rising by step 1000 of 1600). The regressor alone on the spine crop reached
    # in 2000 steps (13 min) what 1600 joint steps gave it in 41 (docs/results.md, "The regressor
    # trained first"); a lead of 3200 rather than 2000 took its median error on 256 held-out poses from
    # 13.7 mm / 5.1 deg to 11.6 mm / 3.9 deg (a second seed: 19.5 / 4.6 to 9.2 / 3.4; the chest: 10.8 /
    # 3.3 to 10.4 / 2.6; docs/results.md, "A longer lead"). With 1200 joint steps after it, the README's
    # command took 52 minutes on the idle machine (chest, calibration included), so the joint phase was
    # cut to 900 and the lead to 3100: 36.8 minutes timed whole and idle, 44 at the first run's slower
    # hour (the spine crop, seed 0: 11.3 mm / 4.8 deg, similarity 57% as before; docs/results.md,
    # "timed end to end"). The 4400-step preset is benchmarks/configs/small_4400.json.
    # The X-rays the regressor reads alone go through the physics family (physics_p 0.25; the similarity's
    # do not, so it trains as before): the lead's regressor on the chest then started random-physics cases
    # 36 and 47 mm off (median mTRE, tuning and report sets) instead of 53 and 114 mm, and plain ones 12
    # instead of 15 mm (docs/results.md, "The regressor trained under the physics family").
    # Validation on 256 held-out poses (about 30 s on one core): on 64, two held-out sets of one model
    # read 14-27 points apart, and the learnt stage's gate (quality.LEARNT_STAGE_SHARE) reads this number.
    "small": TrainConfig(preset="small", spacing_mm=3.0, max_size=64, image_size=64, n_samples=64,
                         batch_size=4, regressor_batch=16, steps=4000, regressor_only_share=3100 / 4000,
                         warmup_steps=100, val_every=400,
                         val_size=256,
                         checkpoint_every=200, memory_budget_gib=4.0, augment_p=0.1, lr_similarity=5e-4,
                         field_cut_p=0.5, field_min_side=0.35, metric="se3", weighted_direction=True,
                         physics_p=0.25, physics_similarity=False,
                         similarity_kwargs=dict(tied_stems=True, token_stage=2, tokens=64)),
    # Fine-tuning a trained model's regressor alone (``sphericalreg train --init MODEL --config
    # finetune``): no feature DRRs, no double backward, so a step at batch 16 costs about a joint
    # step at batch 4 (docs/results.md, "Regressor fine-tuned under the physics family"); the
    # physics family is on so that its start survives X-ray systems other than the simulator's.
    "finetune": TrainConfig(preset="finetune", spacing_mm=3.0, max_size=64, image_size=64, n_samples=64,
                            batch_size=16, steps=2400, warmup_steps=50, val_every=300, val_size=64,
                            checkpoint_every=100, memory_budget_gib=4.0, augment_p=0.1, physics_p=0.25,
                            trained=("regressor",), lr_regressor=2e-4, field_cut_p=0.5, field_min_side=0.35),
    # One GPU.
    "full": TrainConfig(preset="full", spacing_mm=2.0, max_size=128, image_size=128, batch_size=16,
                        steps=20000, memory_budget_gib=24.0, val_every=500, val_size=64,
                        checkpoint_every=1000, feature_kwargs=dict(channels=4, scalars=8, vectors=4, tensors=2)),
}


def _config_file(name: str) -> dict:
    """The fields of a JSON configuration file (with its ``"base"``), or a clear error."""
    path = Path(name)
    if not path.is_file():
        raise InputError("config", f"{name!r} is neither a preset nor a file",
                         f"{' or '.join(PRESETS)}, or a JSON file of TrainConfig fields")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(path, f"is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise InputError(path, "is not a JSON object", "{field: value, ...}")
    return d


def config_file_fields(name: str) -> set[str]:
    """The TrainConfig fields a configuration file sets itself (none for a preset)."""
    return set() if name in PRESETS else set(_config_file(name)) - {"base"}


def load_config(name: str, **overrides) -> TrainConfig:
    """A preset by ``name``, or a JSON file of :class:`TrainConfig` fields (optionally with
    ``"base": preset``, default small), with ``overrides`` that are not None applied on top."""
    if name in PRESETS:
        return TrainConfig.preset_named(name, **overrides)
    path, d = Path(name), _config_file(name)
    base = d.pop("base", "small")
    if base not in PRESETS:
        raise InputError(path, f'"base" is {base!r}', " or ".join(PRESETS))
    try:
        config = replace(PRESETS[base], **d)
    except TypeError as e:
        raise InputError(path, f"has a field TrainConfig does not know ({e})") from None
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
