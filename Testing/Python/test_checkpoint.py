"""Checkpoint files that are damaged, of another format version or of another CT."""

from __future__ import annotations

import pytest
import torch

from SphericalRegLib.checkpoint import FORMAT_VERSION
from SphericalRegLib.errors import InputError
from SphericalRegLib.model import load_model
from fixtures import tiny_ct


def test_damaged_and_foreign_checkpoints_are_input_errors(ct, trainer, tmp_path):
    path = tmp_path / "model.pt"
    trainer.save(path)
    data = path.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupted"):
        load_model(truncated, ct)

    garbage = tmp_path / "notes.pt"
    garbage.write_text("not a model")
    with pytest.raises(InputError, match="truncated or corrupted"):
        load_model(garbage, ct)

    state = torch.load(path, weights_only=False)
    state["format_version"] = FORMAT_VERSION + 1
    newer = tmp_path / "newer.pt"
    torch.save(state, newer)
    with pytest.raises(InputError, match="newer model format"):
        load_model(newer, ct)

    other = tiny_ct(blobs=((0.1, 0.1, 0.2), (-0.35, -0.1, -0.3), (0.0, 0.3, -0.1)))
    with pytest.raises(InputError, match=r"trained on another CT \(24x24x24 voxels of 6 x 6 x 6 mm"):
        load_model(path, other)

    with pytest.raises(InputError, match="model file not found"):
        load_model(tmp_path / "missing.pt", ct)
