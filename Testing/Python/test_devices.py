"""The device choice shared by every command and the Slicer panel."""

from __future__ import annotations

import pytest
import torch

from SphericalRegLib.errors import InputError


def test_resolve_device_names_what_is_wrong():
    from SphericalRegLib.devices import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            resolve_device("cuda")
