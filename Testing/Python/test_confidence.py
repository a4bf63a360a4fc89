import math

from SphericalRegLib.confidence import fit, predict


def test_platt_scaling_separates_good_from_bad_registrations():
    good = [(0.995 - 0.002 * i, 0.01 * (1 + i)) for i in range(10)]  # high NCC, low similarity cost
    bad = [(0.90 - 0.01 * i, 5.0 * (1 + i)) for i in range(6)]
    cal = fit([g[0] for g in good + bad], [g[1] for g in good + bad], [True] * 10 + [False] * 6)
    assert cal["cases"] == 16 and cal["positives"] == 10
    p_good = [predict(cal, *g) for g in good]
    p_bad = [predict(cal, *b) for b in bad]
    assert min(p_good) > 0.5 > max(p_bad)
    assert all(0.0 <= p <= 1.0 and math.isfinite(p) for p in p_good + p_bad)
