"""``sphericalreg register`` end to end: outputs, refusals, and messages that name flags."""

from __future__ import annotations

import json

import torch

from SphericalRegLib import cli
from SphericalRegLib.geometry import se3_inverse
from SphericalRegLib.io import read_itk_transform
from fixtures import tiny_ct, write_tiny_cases

f64 = torch.float64


def test_register_command_writes_every_output_and_refuses_to_overwrite(tiny_model_file, tiny_cases, tmp_path):
    out = tmp_path / "out"
    argv = ["register", str(tiny_cases / "case_001"), "--model", str(tiny_model_file), "--out", str(out)]
    assert cli.main(argv + ["--init"]) in (0, 3)
    result = json.loads((out / "result.json").read_text())
    for key in ("camera_from_world", "seconds", "similarity", "confidence", "iterations", "stages"):
        assert key in result
    pose = torch.tensor(result["camera_from_world"], dtype=f64)
    assert torch.allclose(pose[:3, :3] @ pose[:3, :3].T, torch.eye(3, dtype=f64), atol=1e-9)
    assert torch.allclose(read_itk_transform(out / "world_from_camera.tfm"), se3_inverse(pose), atol=1e-6)
    transform = json.loads((out / "transform.json").read_text())
    assert torch.allclose(torch.tensor(transform["world_from_camera"], dtype=f64), se3_inverse(pose))
    assert (out / "overlay.png").stat().st_size > 1000
    before = (out / "result.json").read_text()
    assert cli.main(argv) == 2  # existing outputs are not replaced unasked
    assert (out / "result.json").read_text() == before


def test_a_model_for_another_ct_is_refused_with_a_clear_message(tiny_model_file, tmp_path, capsys):
    other = tiny_ct(blobs=((0.1, 0.1, 0.1), (-0.2, 0.2, 0.0), (0.3, -0.3, 0.2)))
    cases = write_tiny_cases(other, tmp_path, n=1, seed=1, size=32)
    assert cli.main(["register", str(cases / "case_000"), "--model", str(tiny_model_file),
                     "--out", str(tmp_path / "out")]) == 2
    assert "another CT" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_errors_name_the_flag_the_user_typed(tiny_model_file, tiny_cases, tmp_path, capsys):
    argv = ["register", str(tiny_cases / "case_000"), "--model", str(tiny_model_file), "--out", str(tmp_path)]
    assert cli.main(argv + ["--iterations", "0"]) == 2
    assert "--iterations: is 0" in capsys.readouterr().err
    assert cli.main(argv + ["--device", "tpu"]) == 2
    assert "--device: is 'tpu'" in capsys.readouterr().err
    assert cli.main(argv + ["--distortion", "0.08"]) == 2
    assert "--distortion: is ['0.08']" in capsys.readouterr().err
    assert cli.main(argv + ["--other-start-levels", "-1"]) == 2
    assert "--other-start-levels: is -1" in capsys.readouterr().err


def test_a_processed_export_is_read_as_the_user_says_or_as_the_ct_decides(tiny_model_file, tiny_cases, tmp_path):
    """An 8-bit export of intensities (a linear LUT), saved as a PNG: left to itself, registration reads
    it as linear because the CT says so and notes it; told --encoding, it reads it so and asks nothing."""
    import shutil

    import numpy as np
    import SimpleITK as sitk

    from SphericalRegLib.io import read_case

    case_dir = tmp_path / "case"
    shutil.copytree(tiny_cases / "case_000", case_dir)
    counts = read_case(case_dir).xray.double()
    lo, hi = torch.quantile(counts.flatten(), torch.tensor([0.01, 0.99], dtype=f64))
    export = ((counts - lo) / (hi - lo)).clamp(0, 1).mul(255).round().numpy().astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(export), str(case_dir / "xray.png"))
    argv = ["register", str(case_dir), "--model", str(tiny_model_file), "--init", "--iterations", "2"]
    assert cli.main(argv + ["--out", str(tmp_path / "auto")]) in (0, 3)
    notes = json.loads((tmp_path / "auto" / "result.json").read_text())["notes"]
    assert any("linear-LUT" in n for n in notes)
    assert cli.main(argv + ["--out", str(tmp_path / "told"), "--encoding", "processed-linear"]) in (0, 3)
    notes = json.loads((tmp_path / "told" / "result.json").read_text())["notes"]
    assert not any("linear-LUT" in n for n in notes)
