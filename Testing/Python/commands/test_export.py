"""``sphericalreg export``: a smaller deployable model that loads to the same networks."""

from __future__ import annotations

import torch

from SphericalRegLib import cli
from SphericalRegLib.model import load_model


def test_exported_model_is_smaller_and_loads_to_the_same_networks(ct, trainer, tmp_path):
    full = tmp_path / "model.pt"
    trainer.save(full)
    small = tmp_path / "deploy.pt"
    assert cli.main(["export", str(full), str(small)]) == 0
    assert small.stat().st_size < 0.6 * full.stat().st_size
    assert cli.main(["export", str(full), str(small)]) == 2  # never overwrites unasked
    a, b = load_model(full, ct), load_model(small, ct)
    for name in ("features", "similarity", "regressor"):
        for k, v in getattr(a, name).state_dict().items():
            w = getattr(b, name).state_dict()[k]
            assert w.dtype == v.dtype
            assert torch.allclose(w.float(), v.float(), rtol=1e-3, atol=1e-4)
