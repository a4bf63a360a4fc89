import math

import pytest

from SphericalRegLib.confidence import DEFAULT_SIGNALS, LEGACY_SIGNALS, confidence_values, fit, predict

THREE = ("log(1 - final NCC)", "log in-plane sd", "log depth sd")


def test_platt_scaling_separates_good_from_bad_registrations():
    good = [{"final_ncc": 0.995 - 0.002 * i, "cost": 0.01 * (1 + i), "inplane_sd": 0.02, "depth_sd": 0.04}
            for i in range(10)]
    bad = [{"final_ncc": 0.90 - 0.01 * i, "cost": 5.0 * (1 + i), "inplane_sd": 0.05 + 0.01 * i, "depth_sd": 0.06}
           for i in range(6)]
    cal = fit(good + bad, [True] * 10 + [False] * 6, THREE)
    assert cal["cases"] == 16 and cal["positives"] == 10 and len(cal["weights"]) == 3
    p_good = [predict(cal, g) for g in good]
    p_bad = [predict(cal, b) for b in bad]
    assert min(p_good) > 0.5 > max(p_bad)
    assert all(0.0 <= p <= 1.0 and math.isfinite(p) for p in p_good + p_bad)
    assert predict(cal, {"final_ncc": 0.99, "inplane_sd": 0.02}) is None  # a signal missing: no confidence, not a guess


def test_a_calibration_of_the_first_format_still_predicts():
    old = {"weights": [1.13, -0.71], "bias": 1.22, "mean": [0.955, -2.43], "std": [0.152, 4.5],
           "signals": list(LEGACY_SIGNALS)}
    assert predict(old, {"final_ncc": 0.99, "cost": 0.01}) > predict(old, {"final_ncc": 0.6, "cost": 0.01})
    del old["signals"]
    assert 0 < predict(old, {"final_ncc": 0.99, "cost": 0.01}) < 1


def test_a_worse_signal_never_raises_the_fitted_confidence():
    """Few failures, one with a low learnt cost: unconstrained, the cost's weight turns positive."""
    good = [{"final_ncc": 0.997, "cost": 0.5 + 0.5 * i, "inplane_sd": 0.02} for i in range(12)]
    bad = [{"final_ncc": 0.96, "cost": 0.1, "inplane_sd": 0.02}, {"final_ncc": 0.95, "cost": 0.2, "inplane_sd": 0.03}]
    signals = ("log(1 - final NCC)", "log similarity cost", "log in-plane sd")
    free = fit(good + bad, [True] * 12 + [False] * 2, signals, monotone=False)
    assert free["weights"][1] > 0  # what the constraint is for
    cal = fit(good + bad, [True] * 12 + [False] * 2, signals)
    assert all(w <= 0 for w in cal["weights"])  # all three signals: smaller is better
    base = {"final_ncc": 0.99, "cost": 1.0, "inplane_sd": 0.02}
    for key, worse in (("final_ncc", 0.9), ("cost", 10.0), ("inplane_sd", 0.2)):
        assert predict(cal, {**base, key: worse}) <= predict(cal, base)


def test_signals_beyond_every_calibration_run_earn_no_more_than_the_best_run():
    """Fitted on random-physics runs (NCC up to 0.9), a plain X-ray's NCC of 0.998 once scored 1.00
    whatever its error; the fit now holds a signal to the best value it saw, on that side only."""
    good = [{"final_ncc": 0.85 + 0.005 * i, "inplane_sd": 0.02, "depth_sd": 0.04} for i in range(10)]
    bad = [{"final_ncc": 0.6 + 0.02 * i, "inplane_sd": 0.05, "depth_sd": 0.06} for i in range(4)]
    cal = fit(good + bad, [True] * 10 + [False] * 4, THREE)
    assert cal["best"][0] == pytest.approx(math.log(1 - 0.895))
    best_seen = predict(cal, {"final_ncc": 0.895, "inplane_sd": 0.02, "depth_sd": 0.04})
    assert predict(cal, {"final_ncc": 0.998, "inplane_sd": 0.002, "depth_sd": 0.004}) == pytest.approx(best_seen)
    assert best_seen <= 11 / 12  # Laplace: 10 successes cannot show more
    worst_seen = predict(cal, {"final_ncc": 0.6, "inplane_sd": 0.05, "depth_sd": 0.06})
    assert predict(cal, {"final_ncc": 0.3, "inplane_sd": 0.2, "depth_sd": 0.06}) < worst_seen  # the safe side: no floor


def test_the_default_confidence_reads_the_residual_shift_and_needs_it():
    """The median patch shift, mm on the detector: a few tenths where the pose is right."""
    good = [confidence_values(0.9, None, None, 0.1 + 0.05 * i) for i in range(8)]
    bad = [confidence_values(0.9, None, None, s) for s in (0.5, 1.0, 3.0, 12.0)]
    cal = fit(good + bad, [True] * 8 + [False] * 4)
    assert cal["signals"] == list(DEFAULT_SIGNALS) == ["log residual shift"]
    assert predict(cal, confidence_values(0.9, None, None, 0.15)) > 0.5 > predict(cal, confidence_values(0.9, None, None, 3.0))
    assert predict(cal, confidence_values(0.99, 1.0, {"raw_inplane_sd_mm": 0.02, "raw_depth_sd_mm": 0.04})) is None


def test_joint_registrations_get_their_own_fit_and_single_views_keep_theirs():
    """Runs of several views are fitted apart (``joint``) when there are enough of both kinds: a shift
    that is a single view's failure can be a joint registration's success, and the joint fit says so
    while a single view is still scored by the single-view fit; a calibration without a joint part
    scores every registration as before."""
    from SphericalRegLib.confidence import for_views
    from SphericalRegLib.evaluation.calibration import fit_confidence
    from SphericalRegLib.evaluation.rows import Row

    def row(k, shift, mtre, views):
        return Row("ours", f"case_{k:03d}", 1.0, 10, None, False, 0.9, None, mtre, 0.5, 0.5 * mtre, 0.1,
                   depth_sd=0.05, inplane_sd=0.01, views=views, centre_inplane_sd=0.01, centre_depth_sd=0.05,
                   residual_shift=shift)

    single = [row(k, 0.2 + 0.05 * k, 0.5 if k < 5 else 2.0 + k, 1) for k in range(12)]  # sub-mm below ~0.45 mm
    joint = [row(20 + k, 0.3 + 0.1 * k, 0.5 if k < 8 else 20.0, 2) for k in range(12)]  # sub-mm up to ~1 mm
    calibration = fit_confidence(single + joint)
    assert calibration["cases"] == 12 and calibration["joint"]["cases"] == 12
    at = {"residual_shift": 0.8}
    assert predict(for_views(calibration, 2), at) > 0.5 > predict(for_views(calibration, 1), at)
    assert for_views(calibration, 1) is calibration
    alone = fit_confidence(single)
    assert "joint" not in alone and for_views(alone, 2) is alone


def test_the_shipped_calibration_scores_joint_registrations_by_their_own_part():
    """The shipped model's calibration carries a joint part fitted on two-view tuning runs: a joint
    registration whose worst view's patches lie a few tenths of a millimetre off is likely
    sub-millimetre, one whose view no patch matches is not, and single views keep their own fit."""
    from pathlib import Path

    from SphericalRegLib.confidence import for_views, load_calibration

    calibration = load_calibration(Path(__file__).parents[2] / "Resources" / "Models" / "chest_example.pt")
    joint = for_views(calibration, 2)
    assert joint is calibration["joint"] and for_views(calibration, 1) is calibration
    assert joint["signals"] == list(DEFAULT_SIGNALS) and joint["cases"] >= 40
    assert predict(joint, {"residual_shift": 0.4}) > 0.7
    assert predict(joint, {"residual_shift": 23.4}) < 0.3
    assert predict(joint, {"residual_shift": 0.4}) < (joint["positives"] + 1) / (joint["positives"] + 2)


def test_the_confidence_never_exceeds_what_the_stated_depth_uncertainty_allows():
    """A calibration on the residual shift cannot see depth; the calibrated depth sd can. The
    registrar shows the lower of the two, and an uncalibrated sd (raw, far too narrow) bounds nothing."""
    from types import SimpleNamespace

    import torch

    from SphericalRegLib.camera import Camera
    from SphericalRegLib.confidence import depth_bound
    from SphericalRegLib.register import Registrar
    from SphericalRegLib.register.records import ViewResult

    assert depth_bound(0.0) == 1.0 and depth_bound(1.0) == pytest.approx(0.6827, abs=1e-4)
    assert depth_bound(0.2) > 0.999 and depth_bound(5.0) < 0.17
    values = [{"residual_shift": 0.2 + 0.1 * k} for k in range(12)]
    calibration = fit(values, [k < 6 for k in range(12)], DEFAULT_SIGNALS)
    view = ViewResult("view 0", Camera(1020.0, (1.0, 1.0), (31.5, 31.5), (64, 64)), torch.eye(4, dtype=torch.float64),
                      0.9, residual_shift_mm=0.2)
    registrar = SimpleNamespace(calibration=calibration)
    alone = Registrar._confidence(registrar, view, 0.1, False, 1, None)
    assert alone > 0.8
    wide = {"depth_sd_mm": 3.0, "inplane_sd_mm": 0.2, "calibrated": True}
    assert Registrar._confidence(registrar, view, 0.1, False, 1, wide) == pytest.approx(depth_bound(3.0))
    assert Registrar._confidence(registrar, view, 0.1, False, 1, {**wide, "calibrated": False}) == alone
    assert Registrar._confidence(registrar, view, 0.1, True, 1, wide) == 0.0


def test_the_score_shown_is_0_for_a_misaligned_view_and_bounded_by_the_depth_uncertainty():
    """One rule for the registrar and the benchmarks that replay it: a misaligned view scores 0,
    with a calibration or without; otherwise predict, never above the calibrated depth bound."""
    from SphericalRegLib.confidence import confidence_values, depth_bound, fit, predict, score

    good = [confidence_values(0.9, None, None, 0.1 + 0.05 * i) for i in range(8)]
    bad = [confidence_values(0.9, None, None, s) for s in (0.5, 1.0, 3.0, 12.0)]
    cal = fit(good + bad, [True] * 8 + [False] * 4, signals=("log residual shift",))
    values = confidence_values(0.9, None, None, 0.15)
    assert score(cal, values) == predict(cal, values) > 0.5
    assert score(cal, confidence_values(0.9, None, None, 0.15, misaligned=True)) == 0.0
    assert score(None, confidence_values(0.9, None, None, 12.0, misaligned=True)) == 0.0
    assert score(None, values) is None
    wide = {"calibrated": True, "depth_sd_mm": 3.0}
    assert score(cal, values, wide) == depth_bound(3.0) < predict(cal, values)
    assert score(cal, values, {"calibrated": False, "depth_sd_mm": 3.0}) == predict(cal, values)
