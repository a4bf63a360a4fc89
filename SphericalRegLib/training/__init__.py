"""Patient-specific training of the similarity and the regressor: the run's configuration
(:mod:`.config`), the objective's maths (:mod:`.objective`), the trainer and its loop
(:mod:`.trainer`) and the training curves (:mod:`.plots`). The command line is
:mod:`SphericalRegLib.commands.train`.
"""

from .config import PRESETS, TrainConfig, load_config
from .objective import centred, direction_loss, pose_distance, target_gradient, twist_angles
from .plots import curves_path, plot_history
from .trainer import Trainer, run

__all__ = [
    "TrainConfig",
    "PRESETS",
    "load_config",
    "centred",
    "pose_distance",
    "target_gradient",
    "direction_loss",
    "twist_angles",
    "Trainer",
    "run",
    "plot_history",
    "curves_path",
]
