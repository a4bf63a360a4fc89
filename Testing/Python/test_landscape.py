"""Cost profiles through a pose (SphericalRegLib.landscape) and the landscape command."""

import json

import torch

from SphericalRegLib import cli
from SphericalRegLib.camera import canonical_ap_pose
from SphericalRegLib.landscape import AXES, axis_offsets, capture_range, twist_profiles


def test_capture_range_is_the_monotone_basin_about_the_truth():
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    assert capture_range(x, x**2) == (-4.0, 4.0)
    bumpy = (x**2).clone()
    bumpy[0] = 0.0  # a second valley at -4: the basin ends before it
    assert capture_range(x, bumpy) == (-3.0, 4.0)
    assert capture_range(x, (x - 2) ** 2) == (-4.0, 0.0)  # minimum off the truth: only one side leads to it


def test_profiles_move_one_axis_at_a_time_about_the_isocentre():
    truth = canonical_ap_pose(torch.tensor([10.0, -5.0, 3.0]), 1000.0)
    offsets, poses = axis_offsets(truth, 1000.0, 10.0, 20.0, 5)
    assert offsets.shape == (6, 5) and float(offsets[0, 2]) == 0.0 and float(offsets[3, -1]) == 20.0
    assert torch.allclose(poses.reshape(6, 5, 4, 4)[:, 2], truth.expand(6, 4, 4))  # every axis passes the truth
    distance = lambda T: (T[:, :3, 3] - truth[:3, 3]).norm(dim=-1)  # noqa: E731
    profiles = twist_profiles({"d": distance}, truth, 1000.0, 10.0, 20.0, 5)
    summary = profiles.summary()["d"]
    for axis in AXES[3:]:
        assert summary[axis]["argmin"] == 0.0 and (summary[axis]["capture_lo"], summary[axis]["capture_hi"]) == (-20, 20)


def test_landscape_command_writes_the_plot_and_the_curves(tiny_model_file, tiny_cases, tmp_path):
    out = tmp_path / "land.png"
    argv = ["landscape", str(tiny_cases / "case_000"), "--model", str(tiny_model_file), "--out", str(out),
            "--steps", "5"]
    assert cli.main(argv) == 0
    assert out.stat().st_size > 1000
    curves = json.loads(out.with_suffix(".json").read_text())
    assert set(curves["summary"]) == {"learnt similarity", "1 - NCC (intensity stage)"}
    assert len(curves["costs"]["learnt similarity"]) == 6
    assert cli.main(argv) == 2  # never overwrites unasked
