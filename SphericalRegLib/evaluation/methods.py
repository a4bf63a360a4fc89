"""The methods an evaluation can run, and where each starts from (the conventions' protocol)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

from ..camera import ISOCENTRE_FRACTION, Camera
from ..poses import sample_offsets

__all__ = ["Method", "METHODS", "DERIVED", "FAR_ROT_DEG", "FAR_TRANS_MM", "far_start"]


@dataclass(frozen=True)
class Method:
    """model: key into the models given (``main``, or an ablation's key); None for the peer;
    init: ``regressor``, ``given`` (init.json) or ``far`` (init.json moved a further
    FAR_ROT_DEG / FAR_TRANS_MM); optimizer, learnt_stage, refine: :class:`~SphericalRegLib.register.RegisterOptions`
    (the ablations compare learnt similarities, so they run that stage whatever a model's validation says);
    views: how many of a case's views it registers jointly (None: all; a peer uses view 0)."""

    model: str | None
    init: str
    optimizer: str = "lm"
    refine: bool = True
    learnt_stage: str = "auto"
    description: str = ""
    views: int | None = None

    @property
    def needs_init(self) -> bool:
        return self.init in ("given", "far")


METHODS = {
    "ours": Method("main", "regressor", description="the default pipeline: regressor, LM on the learnt similarity "
                   "when the model validated it, translation search, LM on patch NCC"),
    "ours-learnt": Method("main", "regressor", learnt_stage="always",
                          description="as ours, with the learnt-similarity stage whatever the model's validation says"),
    "ours-1view": Method("main", "regressor", views=1,
                         description="as ours on view 0 alone: what the further views of a multi-view case add"),
    "ours-init": Method("main", "given", description="as ours, from init.json instead of the regressor"),
    "ours-se3": Method("se3", "regressor", learnt_stage="always",
                       description="ours-learnt with a model trained on the SE(3) metric"),
    "ours-so4": Method("so4", "regressor", learnt_stage="always",
                       description="ours-learnt with a model trained on the SO(4) metric"),
    "ours-gd": Method("main", "regressor", optimizer="gd", learnt_stage="always",
                      description="gradient descent instead of LM on the learnt similarity"),
    "ours-no-learnt": Method("main", "regressor", optimizer="none",
                             description="ours without the learnt-similarity stage: what that stage adds"),
    "euclidean": Method("euclidean", "regressor", learnt_stage="always",
                        description="Euclidean instead of spherical similarity"),
    "hyperbolic": Method("hyperbolic", "regressor", learnt_stage="always",
                         description="hyperbolic instead of spherical similarity"),
    "no-equivariant": Method("plain", "regressor", learnt_stage="always", description="without the equivariant CNN"),
    "diffpose-ncc": Method(None, "given", description="DiffDRR Siddon + multiscale NCC + Adam, from init.json"),
    "ours-far": Method("main", "far", description="as ours-init from init.json moved a further 10 deg / 40 mm "
                       "per axis: starts that sometimes fail, for calibrating the confidence"),
}
FAR_ROT_DEG, FAR_TRANS_MM = (10.0, 10.0, 10.0), (40.0, 40.0, 40.0)
DERIVED = {"regressor": ("ours", "initial"), "ours-no-intensity": ("ours-learnt", "similarity")}
"""Rows that come free from a stage of another method's run: name -> (method, stage)."""


def far_start(case_name: str, init: Tensor, camera: Camera, rot_deg=FAR_ROT_DEG, trans_mm=FAR_TRANS_MM) -> Tensor:
    """``init`` moved by a further offset (sds per axis) seeded by the case's name (the same in every shard)."""
    g = torch.Generator().manual_seed(zlib.crc32(case_name.encode()))
    return sample_offsets(1, rot_deg, trans_mm, ISOCENTRE_FRACTION * camera.sdd, g)[0] @ init
