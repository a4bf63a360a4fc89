"""Fitting a model's confidence on the rows of an evaluation of held-out cases."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..confidence import DEFAULT_SIGNALS, calibration_path, features, fit
from ..errors import InputError
from ..io import write_json
from ..register.uncertainty import fit_scale
from .rows import Row, read_rows

__all__ = ["fit_confidence", "calibrate_model", "CALIBRATION_METHODS", "CALIBRATION_SEED", "REFERENCE_RUNS"]

REFERENCE_RUNS = Path(__file__).with_name("reference_runs.csv")
"""Registrations of other CTs and models that a new model's own calibration runs are pooled with,
for the confidence and for the uncertainty scale: 120 single-view runs (ours and ours-far) of the
4000-step small models of the example chest and of its spine crop, plain and random physics, on
tuning cases (seeds 7500, 7600, 7700; docs/results.md, twenty-seventh session), their residual
shift replayed at each final pose (twenty-eighth session); and 44 joint registrations of two views
by the shipped chest model (tuning cases t_mv_random3, t_mv_random, t_mv_plain, seeds 7900, 7200,
4100; thirty-third session), each with its largest view's shift, from which every new model gets
the ``joint`` part the shipped one has. The confidence's signal and the sds describe the
intensity stage's final pose, not the model, so they carry over. Eight cases
of one's own cannot show how failures look: fitted on them alone, the spine model scored failures
25-213 mm off 0.30-0.71, and its in-plane sds held 35% of the errors (not gross) within 1 sd;
pooled with the chest's runs, no failure over 5 mm scored 0.3 and 88% of the errors lay within 1 sd."""

CALIBRATION_SEED = 7_700_000
"""Seeds of the cases a model is calibrated on at the end of training: apart from every seed the
results tables use, so that those stay held out."""

CALIBRATION_METHODS = ("ours", "ours-init", "ours-far")


def fit_confidence(rows: list[Row], methods=CALIBRATION_METHODS, signals=DEFAULT_SIGNALS) -> dict:
    """Platt scaling on every run of the main model: the signals describe the final pose, whatever its
    start. Joint registrations of several views are fitted apart, as ``joint``
    (:func:`~SphericalRegLib.confidence.for_views`), when there are enough of them; the main fit
    then takes the single-view runs alone."""
    fitted = _fitted_runs(rows, methods, signals)
    joint = [r for r in fitted if (r.views or 1) > 1]
    single = [r for r in fitted if (r.views or 1) == 1]
    rs = single if _fittable(joint) and _fittable(single) else fitted
    if not _fittable(rs):
        raise InputError("calibration", f"{len(rs)} runs of {'/'.join(methods)} with "
                         f"{sum(r.mTRE < 1 for r in rs)} sub-millimetre",
                         "at least 5 runs with both successes and failures")
    calibration = {**fit([signal_values(r) for r in rs], [r.mTRE < 1 for r in rs], signals), **_uncertainty_only(rs)}
    if _fittable(joint):
        calibration["joint"] = fit([signal_values(r) for r in joint], [r.mTRE < 1 for r in joint], signals)
    return calibration


def _fittable(rows: list[Row]) -> bool:
    """At least five runs, with both successes (sub-millimetre) and failures among them."""
    return len(rows) >= 5 and len({r.mTRE < 1 for r in rows}) == 2


def _fitted_runs(rows: list[Row], methods=CALIBRATION_METHODS, signals=DEFAULT_SIGNALS) -> list[Row]:
    """The runs of ``methods`` that carry every one of ``signals``: those a fit can use."""
    return [r for r in rows if r.method in methods and features(signal_values(r), signals) is not None]


def signal_values(row: Row) -> dict:
    """The confidence's inputs from a table row; tables written before the sds at the CT centre were
    recorded give those at the landmarks' centroid instead (a few cm away: nearly the same)."""
    inplane = row.centre_inplane_sd if row.centre_inplane_sd is not None else row.inplane_sd
    depth = row.centre_depth_sd if row.centre_depth_sd is not None else row.depth_sd
    return {"final_ncc": row.final_ncc, "cost": row.cost, "inplane_sd": inplane, "depth_sd": depth,
            "residual_shift": row.residual_shift}


def _uncertainty_only(rows: list[Row]) -> dict:
    """``{"uncertainty_scale": ...}`` from the registrations that worked (gross failures are the
    confidence's job), or ``{}`` with fewer than five."""
    scaled = [r for r in rows if r.depth_sd is not None and not r.diverged and r.mTRE < 5]
    if len(scaled) < 5:
        return {}
    return {"uncertainty_scale": {
        "depth": fit_scale([r.depth for r in scaled], [r.depth_sd for r in scaled], "depth"),
        "inplane": fit_scale([r.inplane for r in scaled], [r.inplane_sd for r in scaled], "inplane"),
        "cases": len(scaled)}}


def calibrate_model(model_path, ct_path, *, cases: int = 8, physics: str = "plain,random",
                    seed: int = CALIBRATION_SEED, size: int = 256, reference=REFERENCE_RUNS, device="cpu",
                    log=print) -> dict | None:
    """Calibrate a freshly trained model on its own CT: ``cases`` simulated X-rays registered from the
    regressor and from far starts, the confidence and the uncertainty scale fitted on them pooled with
    the ``reference`` runs (a cases.csv; None: its own alone) and written beside the model. The
    cases are deleted after.

    ``physics``: comma-separated presets (or ``random``) the cases are shared among, in turn. Plain
    X-rays beside random ones: the final NCC of a registration depends on the physics as much as on
    its error, and a fit that saw only random physics scored every plain X-ray 1.00, one 1.9 mm off
    among them. The X-rays have ``size`` pixels over the model's training field, as a C-arm gives
    them. Returns the calibration; when the runs hold no failures (or no successes) Platt scaling
    cannot be fitted, and only the uncertainty scale is written, which is said in the log and in the file.
    """
    from ..camera import Camera
    from ..checkpoint import read_checkpoint
    from ..io import read_ct
    from ..physics import physics_names
    from ..simulate import write_cases
    from .runner import evaluate

    names = physics_names(physics)
    parts = [(name, cases // len(names) + (k < cases % len(names)), seed + 1000 * k) for k, name in enumerate(names)]
    parts = [(name, n, part_seed) for name, n, part_seed in parts if n > 0]
    model_path = Path(model_path)
    log(f"calibrating on {cases} simulated held-out cases (physics {physics}, seed {seed}): "
        "about half a minute per case on two CPU cores")
    camera = Camera.from_json(read_checkpoint(model_path, read_ct(ct_path))["camera"], model_path)
    spacing = camera.pixel_spacing[0] * camera.cols / size
    rows = []
    with tempfile.TemporaryDirectory(prefix="sphericalreg-calibration-") as tmp:
        for name, n, part_seed in parts:
            folder = Path(tmp) / name
            write_cases(ct_path, folder / "cases", n, part_seed, size=size, sdd=camera.sdd,
                        pixel_spacing=spacing, physics=name, log=lambda m: None)
            result = evaluate(folder / "cases", {"main": model_path}, list(CALIBRATION_METHODS[::2]), folder / "eval",
                              device=device, log=lambda m, name=name: log(f"  {name}: {m}"))
            rows += result["rows"]
    source = (f"{cases} cases simulated at the end of training ("
              + ", ".join(f"{n} physics {name} seed {part_seed}" for name, n, part_seed in parts) + ")")
    others = [] if reference is None else _fitted_runs(read_rows(Path(reference)))
    try:
        calibration = fit_confidence(rows + others)
        joint = calibration.get("joint")
        if reference is not None:
            calibration["reference_runs"] = f"{len(others)} runs of {Path(reference).name}"
        own = len(_fitted_runs(rows))
        log(f"confidence fitted on {calibration['cases']} runs ({own} of them this model's), "
            f"{calibration['positives']} sub-millimetre" + ("" if joint is None else
                                                           f"; for several views on {joint['cases']} joint "
                                                           f"registrations of the reference runs"))
    except InputError as e:
        calibration = _uncertainty_only(rows + others)
        calibration["confidence"] = f"not fitted: {e.problem}"
        log(f"confidence not calibrated ({e.problem}); registrations report none until "
            "'sphericalreg evaluate --calibrate' is run on more cases")
    calibration["cases_dir"] = source
    write_json(calibration_path(model_path), calibration, overwrite=True)
    log(f"calibration written to {calibration_path(model_path)}")
    return calibration
