"""The CT at the working resolution: too small or too large for the configuration."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from SphericalRegLib.errors import InputError
from SphericalRegLib.preparation import working_volume
from SphericalRegLib.training import TrainConfig
from SphericalRegLib.volume import Volume
from fixtures import TINY, tiny_ct


def test_ct_too_small_or_too_large_for_the_configuration():
    config = TrainConfig(**TINY)
    small = Volume(torch.zeros(10, 10, 10), torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0])))
    with pytest.raises(InputError, match="at least 8 voxels"):
        working_volume(small, config)
    huge = Volume(torch.zeros(40, 40, 40), torch.diag(torch.tensor([30.0, 30.0, 30.0, 1.0])))
    with pytest.raises(InputError, match="too large"):
        working_volume(huge, config)
    with pytest.raises(InputError, match="GiB"):
        working_volume(tiny_ct(), replace(config, memory_budget_gib=1e-4))


def test_training_refuses_a_ct_whose_anatomy_is_out_of_the_canonical_view():
    """The conventions aim at the volume's centre: a body tucked in a corner of a large air volume
    (or a CT that is all air) must stop training with a message, not train on air."""
    import pytest
    import torch

    from SphericalRegLib.errors import InputError
    from SphericalRegLib.training import Trainer, TrainConfig
    from SphericalRegLib.volume import Volume
    from fixtures import TINY, tiny_ct

    ct = tiny_ct()
    assert Trainer(ct, TrainConfig(**TINY)).anatomy_share > 0.3
    corner = torch.full((72, 72, 72), -1000.0)
    corner[:24, :24, :24] = ct.data
    off = Volume(corner, ct.ijk_to_ras)
    with pytest.raises(InputError, match="off-centre"):
        Trainer(off, TrainConfig(**{**TINY, "max_size": 72}), source="off.nii.gz")
    with pytest.raises(InputError, match="crosses tissue"):
        Trainer(Volume(torch.full((24, 24, 24), -1000.0), ct.ijk_to_ras), TrainConfig(**TINY))
