"""Confidence that a registration is sub-millimetre: Platt scaling of per-case signals, fitted on
held-out simulated cases whose truth is known.

The signals (:data:`SIGNALS`) are read from a registration's outcome: the final NCC of the
line-integral DRR with the X-ray, the learnt-similarity cost, how well the final pose is pinned
down (the raw Gauss-Newton standard deviations at the CT centre, in the detector plane and along the
central ray, from the final LM's J^T J), and the shift the final DRR's patches still want to lie on
the X-ray (:mod:`~SphericalRegLib.alignment`). The default (:data:`DEFAULT_SIGNALS`) is that shift
alone: it describes the image, not the model, so runs of other CTs and models pool with a model's
own, and over the tuning runs of two CTs under plain and random physics it ranked sub-millimetre
runs above the others with AUROC 0.98, where the in-plane and depth sds gave 0.89 and the final
NCC 0.86; fitted leaving each CT out, the NCC and the sds beside it only lowered the ranking
(docs/results.md, twenty-eighth session). The learnt cost's scale is the model's own. A calibration
names the signals it was fitted on, so older files keep working.

A calibration fitted on a few runs must not vouch for what it never saw. :func:`predict` therefore
never extrapolates towards success: a signal better than the best value among the calibration runs
counts as that best value (a plain X-ray's NCC of 0.998 is beyond every run of a calibration on
random physics, and a logistic fit carried it to 1.00 even for a registration 1.9 mm off). And the
probability stays below Laplace's rule of succession, (s + 1) / (s + 2) for s successful runs: four
successes cannot show a 99.99% success rate. Towards failure both may extrapolate: a low confidence
is never the dangerous error.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

__all__ = ["SIGNALS", "BETTER_WHEN", "DEFAULT_SIGNALS", "confidence_values", "features", "fit", "predict", "for_views",
           "depth_bound", "score", "calibration_path", "load_calibration"]

SIGNALS = {
    "final NCC": lambda s: float(s["final_ncc"]),
    "log(1 - final NCC)": lambda s: math.log(max(1.0 - float(s["final_ncc"]), 1e-6)),
    "log similarity cost": lambda s: math.log(max(float(s["cost"]), 1e-12)),
    "log in-plane sd": lambda s: math.log(max(float(s["inplane_sd"]), 1e-9)),
    "log depth sd": lambda s: math.log(max(float(s["depth_sd"]), 1e-9)),
    "log residual shift": lambda s: math.log(max(float(s["residual_shift"]), 1e-3)),
}
"""Signal name -> its value from ``{"final_ncc", "cost", "inplane_sd", "depth_sd", "residual_shift"}``
(the raw sds at the CT centre, mm; the median patch shift, mm on the detector,
:func:`~SphericalRegLib.alignment.residual_shift_mm`)."""

BETTER_WHEN = {"final NCC": +1, "log(1 - final NCC)": -1, "log similarity cost": -1, "log in-plane sd": -1,
               "log depth sd": -1,
               "log residual shift": -1}
"""Signal name -> +1 when a larger value means a better registration, -1 when a smaller one does.
:func:`fit` keeps each weight on its side: with a handful of failures to learn from, an
unconstrained fit once gave a higher learnt cost a higher confidence."""

DEFAULT_SIGNALS = ("log residual shift",)
LEGACY_SIGNALS = ("final NCC", "log similarity cost")
"""What calibrations written before the signals were named were fitted on."""


def calibration_path(model_path) -> Path:
    """Where the confidence calibration of a model lives: beside it, so calibrating never rewrites the model."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".calibration.json")


def load_calibration(model_path) -> dict | None:
    """The calibration beside ``model_path``, or None when the model has none."""
    from .io import read_json

    path = calibration_path(model_path)
    if not path.exists():
        return None
    return read_json(path, "a calibration written by 'sphericalreg evaluate --calibrate'")


def confidence_values(final_ncc: float | None, cost: float | None, uncertainty: dict | None,
                      residual_shift: float | None = None, misaligned: bool = False) -> dict:
    """The values :data:`SIGNALS` read, from a registration's final NCC, learnt cost, uncertainty and
    residual patch shift (mm), and whether that shift says the pose is wrong
    (:func:`~SphericalRegLib.alignment.misaligned`), which :func:`score` reads."""
    values = {"final_ncc": final_ncc, "cost": cost, "residual_shift": residual_shift, "misaligned": misaligned}
    if uncertainty is not None:
        values["inplane_sd"] = uncertainty["raw_inplane_sd_mm"]
        values["depth_sd"] = uncertainty["raw_depth_sd_mm"]
    return values


def features(values: dict, signals=DEFAULT_SIGNALS) -> list[float] | None:
    """The ``signals`` of one registration's ``values``; None when one of them is missing."""
    try:
        return [SIGNALS[name](values) for name in signals]
    except (KeyError, TypeError):
        return None


def predict(calibration: dict, values: dict) -> float | None:
    """Probability in [0, 1] that mTRE < 1 mm, or None when ``values`` lack a signal the calibration needs.

    Calibrations that record their runs' range (``best``) and counts are held to them (module docstring);
    older ones predict as they were fitted."""
    signals = calibration.get("signals", LEGACY_SIGNALS)
    f = features(values, signals)
    if f is None:
        return None
    f = torch.tensor(f, dtype=torch.float64)
    if "best" in calibration:
        side = torch.tensor([BETTER_WHEN[name] for name in signals], dtype=torch.float64)
        best = torch.tensor(calibration["best"], dtype=torch.float64)
        f = side * torch.minimum(side * f, side * best)
    mean = torch.tensor(calibration["mean"], dtype=torch.float64)
    std = torch.tensor(calibration["std"], dtype=torch.float64)
    z = calibration["bias"] + torch.dot(torch.tensor(calibration["weights"], dtype=torch.float64), (f - mean) / std)
    p = float(torch.sigmoid(z))
    if "best" in calibration:
        successes = calibration["positives"]
        p = min(p, (successes + 1.0) / (successes + 2))
    return p


def for_views(calibration: dict | None, n_views: int) -> dict | None:
    """The part of ``calibration`` that scores a registration of ``n_views`` views: its ``joint`` fit
    for several views when it has one, else the whole (single-view) fit.

    One view cannot see depth in its residual shift, so single-view runs with a given shift are often
    1-3 mm off along the central ray; jointly registered views pin depth, and the same shift means a
    better pose. A single-view fit scored sub-millimetre joint registrations 0.000-0.005
    (docs/results.md, thirty-second session)."""
    if calibration is None or n_views < 2 or "joint" not in calibration:
        return calibration
    return calibration["joint"]


def depth_bound(depth_sd_mm: float, tolerance_mm: float = 1.0) -> float:
    """The probability that the error along the central ray is under ``tolerance_mm`` if it is
    Gaussian with the calibrated ``depth_sd_mm``: a bound on the confidence, so that the two
    statements shown beside a pose never contradict each other.

    One view's residual shift cannot see depth (a millimetre along the central ray magnifies the
    image by about 0.1%): fitted on it, the calibration a new model gets scored 3 of 15 gross
    random-physics failures of the shipped model 0.35-0.60; with this bound 1 of 15 (docs/results.md,
    thirty-third session)."""
    if not depth_sd_mm > 0:
        return 1.0
    return math.erf(tolerance_mm / (depth_sd_mm * math.sqrt(2)))


def score(calibration: dict | None, values: dict, uncertainty: dict | None = None) -> float | None:
    """The confidence shown for one view: 0 where its residual shift says the pose is wrong (the
    calibrations saw such shifts only on gross failures, and a logistic curve would still give one
    about 0.3), else :func:`predict` (None without a ``calibration``), never above what a calibrated
    ``uncertainty`` (the registration's) gives a depth error under 1 mm (:func:`depth_bound`)."""
    if values.get("misaligned"):
        return 0.0
    if calibration is None:
        return None
    p = predict(calibration, values)
    if p is not None and uncertainty is not None and uncertainty.get("calibrated"):
        p = min(p, depth_bound(uncertainty["depth_sd_mm"]))
    return p


def fit(values: list[dict], success, signals=DEFAULT_SIGNALS, l2: float = 1e-2, iters: int = 500,
        monotone: bool = True) -> dict:
    """Logistic regression (L2-regularised, standardised inputs) of ``success`` on ``signals``.

    ``values``: one :func:`confidence_values` per run (runs lacking a
    signal are left out). ``monotone``: each weight has the sign of :data:`BETTER_WHEN` (or is ~0), so no
    signal can raise the confidence by getting worse. Returns the calibration dictionary
    :func:`predict` reads, with the runs' counts and each signal's best value among them.
    """
    rows = [(features(v, signals), bool(s)) for v, s in zip(values, success)]
    rows = [(f, s) for f, s in rows if f is not None]
    X = torch.tensor([f for f, _ in rows], dtype=torch.float64).reshape(len(rows), len(signals))
    y = torch.tensor([s for _, s in rows], dtype=torch.float64)
    mean, std = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = (X - mean) / std
    sign = torch.tensor([BETTER_WHEN[name] if monotone else 0 for name in signals], dtype=torch.float64)
    v = torch.zeros(len(signals), dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([v, b], max_iter=iters, line_search_fn="strong_wolfe")

    def weights():
        return torch.where(sign != 0, sign * torch.nn.functional.softplus(v), v)

    def closure():
        opt.zero_grad()
        w = weights()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(Z @ w + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    side = torch.tensor([BETTER_WHEN[name] for name in signals], dtype=torch.float64)
    best = side * (side * X).max(0).values
    return {"weights": weights().detach().tolist(), "bias": float(b.detach()), "mean": mean.tolist(), "std": std.tolist(),
            "best": best.tolist(), "cases": int(len(y)), "positives": int(y.sum()), "signals": list(signals)}
