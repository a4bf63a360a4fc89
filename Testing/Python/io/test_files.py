"""JSON writers refuse to overwrite and are atomic (SphericalRegLib.io.files)."""

import json

import pytest
import torch

from SphericalRegLib.camera import Camera
from SphericalRegLib.errors import InputError
from SphericalRegLib.io import (
    read_json,
    write_json,
)

CAMERA = Camera(1000.0, (0.5, 0.4), (14.5, 9.5), (20, 30))


def test_writers_refuse_to_overwrite_and_are_atomic(tmp_path):
    path = write_json(tmp_path / "a.json", {"x": torch.tensor([1.0, 2.0])})
    assert json.loads(path.read_text()) == {"x": [1.0, 2.0]}
    with pytest.raises(InputError, match="a.json: already exists"):
        write_json(path, {"x": 3})
    with pytest.raises(TypeError):
        write_json(path, {"x": object()}, overwrite=True)
    assert json.loads(path.read_text()) == {"x": [1.0, 2.0]}  # a failed write left the old file whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # and no temporary behind


def test_read_json_names_the_file_and_what_was_expected(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json: is not valid JSON .*expected a thing"):
        read_json(tmp_path / "bad.json", "a thing")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="is not a JSON object"):
        read_json(tmp_path / "list.json", "a thing")
    with pytest.raises(InputError, match="file not found"):
        read_json(tmp_path / "missing.json", "a thing")
