"""The learnt model: its three networks built for a configuration, and a trained model loaded for a CT.

:func:`build_networks` makes the CT feature network, the similarity and the regressor that
training optimises; :func:`load_model` reads a checkpoint (:mod:`SphericalRegLib.checkpoint`),
prepares the CT as training did (:mod:`SphericalRegLib.preparation`) and returns the
:class:`ModelBundle` that registration works with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .camera import Camera, canonical_ap_pose
from .checkpoint import read_checkpoint
from .errors import InputError
from .preparation import pose_length, working_volume
from .volume import Volume, hu_to_mu

if TYPE_CHECKING:  # SphericalRegLib.training imports this module: TrainConfig is imported where used
    from .training.config import TrainConfig

__all__ = ["ModelBundle", "build_networks", "load_model"]


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


def load_model(path, ct: Volume, device="cpu") -> ModelBundle:
    """Load a trained model for ``ct`` (HU, ``(I, J, K)``) and prepare the CT's feature volume.

    Raises :class:`InputError` for a missing, damaged, other-version or other-CT model file and
    for a CT the configuration cannot work on.
    """
    from .training.config import TrainConfig

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
