"""Shared test set-up. OpenMP threads that spin while waiting make torch on a small, shared CPU
(CI's 2 cores) an order of magnitude slower; passive waiting must be chosen before torch loads.

The session fixtures build the tiny CT, a tiny model trained through the real train command and
simulated cases once, for every test folder that registers (see fixtures.py)."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from fixtures import TINY, tiny_ct, train_tiny_model, write_tiny_cases  # noqa: E402


@pytest.fixture(scope="session")
def tiny_volume():
    """The tiny CT (HU, 24^3 voxels of 6 mm)."""
    return tiny_ct()


@pytest.fixture(scope="session")
def tiny_model_file(tiny_volume, tmp_path_factory):
    """A tiny model of the tiny CT, trained for two steps."""
    return train_tiny_model(tiny_volume, tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_cases(tiny_volume, tmp_path_factory):
    """Two simulated cases of the tiny CT (48 x 48 px)."""
    return write_tiny_cases(tiny_volume, tmp_path_factory.mktemp("tiny_cases"))


@pytest.fixture(scope="module")
def ct():
    """The tiny CT, fresh for each test module that may change it."""
    return tiny_ct()


@pytest.fixture(scope="module")
def trainer(ct):
    """A Trainer of the tiny configuration on the tiny CT, one per test module."""
    from SphericalRegLib.training import Trainer, TrainConfig

    return Trainer(ct, TrainConfig(**TINY))
