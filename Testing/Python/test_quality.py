"""The verdict on whether a model learnt (SphericalRegLib.quality), at training's end and at registration."""

import json

from SphericalRegLib import cli
from SphericalRegLib.quality import describe_quality, model_quality


def _history(within, median, reg, prior):
    return {"val_step": [100, 200], "val_grad_within30": [0.0, within], "val_grad_angle_median_deg": [90.0, median],
            "val_reg_geodesic_mm": [50.0, reg], "val_prior_geodesic_mm": [50.0, prior]}


def test_a_model_at_chance_is_called_so_and_a_good_one_is_not():
    bad = model_quality(_history(0.02, 88.0, 48.0, 50.0))
    assert bad["similarity"] == "at chance" and bad["regressor"] == "no better than the pose prior"
    assert len(bad["warnings"]) == 2 and any("WARNING" in line for line in describe_quality(bad))
    good = model_quality(_history(0.7, 20.0, 6.0, 50.0))
    assert good["similarity"] == "learnt" and good["regressor"] == "learnt" and not good["warnings"]
    assert model_quality(_history(0.2, 60.0, 25.0, 50.0))["similarity"] == "weak"


def test_a_run_stopped_in_the_regressors_lead_has_an_untrained_similarity_and_a_verdict_on_its_regressor():
    nan = float("nan")
    history = {"val_step": [100, 200], "val_grad_within30": [nan, nan], "val_grad_angle_median_deg": [nan, nan],
               "val_reg_geodesic_mm": [60.0, 40.0], "val_prior_geodesic_mm": [130.0, 130.0]}
    quality = model_quality(history)
    assert quality["similarity"] == "not trained" and quality["grad_within30"] is None
    assert quality["regressor"] == "learnt" and quality["reg_geodesic_mm"] == 40.0
    assert any("never trained" in w for w in quality["warnings"])
    assert "nan" not in " ".join(describe_quality(quality))
    later = {k: v + ([0.55] if k == "val_grad_within30" else [30.0] if k != "val_step" else [300])
             for k, v in history.items()}
    assert model_quality(later)["grad_within30"] == 0.55  # the first validated share after the lead counts
    assert model_quality({}) is None
    assert "never validated" in describe_quality(None)[0]


def test_training_ends_with_the_verdict_and_registration_repeats_its_warnings(tiny_model_file, tiny_cases, tmp_path,
                                                                           capsys):
    from SphericalRegLib.checkpoint import read_checkpoint

    quality = model_quality(read_checkpoint(tiny_model_file)["history"])
    assert quality is not None  # the last step always validates
    out = tmp_path / "out"
    assert cli.main(["register", str(tiny_cases / "case_000"), "--model", str(tiny_model_file), "--out", str(out),
                     "--init"]) in (0, 3)
    result = json.loads((out / "result.json").read_text())
    assert result["warnings"] == quality["warnings"]
    err = capsys.readouterr().err
    assert all(f"WARNING: {w}" in err for w in quality["warnings"])
