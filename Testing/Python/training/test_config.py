"""Training configurations by preset name or from a JSON file."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from SphericalRegLib.errors import InputError
from SphericalRegLib.training import PRESETS, load_config
from SphericalRegLib.training.config import TrainConfig


def test_load_config_from_a_preset_a_json_file_with_base_and_a_bad_file(tmp_path):
    config = load_config("full", steps=7, seed=None)
    assert config == replace(PRESETS["full"], steps=7)

    path = tmp_path / "run.json"
    path.write_text(json.dumps({"base": "full", "image_size": 96, "metric": "se3"}))
    config = load_config(str(path), batch_size=3)
    assert config.preset == "full" and config.spacing_mm == PRESETS["full"].spacing_mm
    assert (config.image_size, config.metric, config.batch_size) == (96, "se3", 3)

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="is not valid JSON") as raised:
        load_config(str(bad))
    assert raised.value.source == str(bad)
    with pytest.raises(InputError, match="neither a preset nor a file") as raised:
        load_config(str(tmp_path / "missing.json"))
    assert raised.value.source == "config"


def test_a_cut_detector_side_power_must_be_positive():
    with pytest.raises(InputError, match="field_side_power"):
        TrainConfig(field_side_power=0.0)
    assert TrainConfig.preset_named("small", field_side_power=2.0).field_side_power == 2.0


def test_calibration_physics_names_presets_the_cases_are_shared_among():
    assert TrainConfig(calibration_physics="plain, hard,random").calibration_physics == "plain, hard,random"
    with pytest.raises(InputError, match="calibration_physics.*'plain,fluoro'.*comma-separated"):
        TrainConfig(calibration_physics="plain,fluoro")
