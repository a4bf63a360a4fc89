"""A trained model loaded for its CT: the same networks and the feature volume, and an exact resume."""

from __future__ import annotations

import pytest
import torch

from SphericalRegLib.checkpoint import read_checkpoint
from SphericalRegLib.model import load_model
from SphericalRegLib.training import Trainer, TrainConfig
from fixtures import TINY


def test_checkpoint_round_trip_and_exact_resume(ct, tmp_path):
    config = TrainConfig(**TINY)
    a = Trainer(ct, config)
    a.train_step()
    path = tmp_path / "model.pt"
    a.save(path)

    bundle = load_model(path, ct)
    assert bundle.config == config and bundle.step == 1
    for name in ("features", "similarity", "regressor"):
        mine, loaded = a.networks[name].state_dict(), getattr(bundle, name).state_dict()
        assert mine.keys() == loaded.keys()
        assert all(torch.equal(mine[k], loaded[k]) for k in mine)
    assert bundle.feature_volume.data.shape == (2, 24, 24, 24)
    assert torch.equal(bundle.feature_volume.ijk_to_ras, bundle.volume.ijk_to_ras)

    b = Trainer(ct, config)
    b.restore(read_checkpoint(path, ct))
    assert b.step == 1
    next_a, next_b = a.train_step(), b.train_step()
    assert next_a["loss"] == pytest.approx(next_b["loss"], rel=1e-5)
    assert b.step == 2
