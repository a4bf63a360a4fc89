"""A model comes calibrated: the train command ends by calibrating on simulated held-out cases
(evaluation.calibration.calibrate_model)."""

from __future__ import annotations

import json

from SphericalRegLib import cli
from SphericalRegLib.confidence import DEFAULT_SIGNALS, calibration_path
from SphericalRegLib.evaluation.calibration import REFERENCE_RUNS
from SphericalRegLib.evaluation.rows import read_rows
from fixtures import TINY_MODEL_CONFIG, write_training_inputs


def test_train_ends_with_a_calibration_beside_the_model_and_no_cases_left(tiny_volume, tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    ct, config = write_training_inputs(tiny_volume, tmp_path, TINY_MODEL_CONFIG)
    out = tmp_path / "model.pt"
    assert cli.main(["train", "--ct", str(ct), "--out", str(out), "--config", str(config), "--steps", "1",
                     "--calibration-cases", "3"]) == 0
    printed = capsys.readouterr().out
    assert "calibrating on 3 simulated held-out cases" in printed
    calibration = json.loads(calibration_path(out).read_text())
    assert calibration["cases_dir"] == ("3 cases simulated at the end of training (2 physics plain seed 7700000, "
                                      "1 physics random seed 7701000)")
    # the 6 runs pooled with the reference runs, which hold successes and failures: always fitted
    fitted = [r for r in read_rows(REFERENCE_RUNS) if r.residual_shift is not None]  # the diverged have none
    single = [r for r in fitted if r.views == 1]
    assert calibration["reference_runs"] == f"{len(fitted)} runs of reference_runs.csv"
    own = calibration["cases"] - len(single)
    assert 0 <= own <= 6 and f"confidence fitted on {calibration['cases']} runs ({own} of them this model's)" in printed
    assert calibration["signals"] == list(DEFAULT_SIGNALS) and "best" in calibration
    # several views: the joint part every model gets from the reference runs' joint registrations
    assert calibration["joint"]["cases"] == len(fitted) - len(single) >= 40
    assert f"for several views on {calibration['joint']['cases']} joint registrations" in printed
    worked = sum(r.depth_sd is not None and not r.diverged and r.mTRE < 5 and r.views == 1
                 for r in read_rows(REFERENCE_RUNS))
    assert worked <= calibration["uncertainty_scale"]["cases"] <= worked + 6  # the sds' scale: pooled too
    assert list((tmp_path / "tmp").iterdir()) == []  # the simulated cases are gone
