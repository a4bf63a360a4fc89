"""Fitting a model's confidence on the rows of an evaluation of held-out cases."""

from __future__ import annotations

from ..confidence import fit
from ..errors import InputError
from ..register.uncertainty import fit_scale
from .rows import Row

__all__ = ["fit_confidence", "CALIBRATION_METHODS"]

CALIBRATION_METHODS = ("ours", "ours-init", "ours-far")


def fit_confidence(rows: list[Row], methods=CALIBRATION_METHODS) -> dict:
    """Platt scaling on every run of the main model: the signals describe the final pose, whatever its start."""
    rs = [r for r in rows if r.method in methods and r.final_ncc is not None and r.cost is not None]
    if len(rs) < 5 or len({r.mTRE < 1 for r in rs}) < 2:
        raise InputError("calibration", f"{len(rs)} runs of {'/'.join(methods)} with "
                         f"{sum(r.mTRE < 1 for r in rs)} sub-millimetre",
                         "at least 5 runs with both successes and failures")
    calibration = fit([r.final_ncc for r in rs], [r.cost for r in rs], [r.mTRE < 1 for r in rs])
    scaled = [r for r in rs if r.depth_sd is not None and not r.diverged and r.mTRE < 5]  # the spread of
    if len(scaled) >= 5:  # registrations that worked; gross failures are the confidence's job
        calibration["uncertainty_scale"] = {
            "depth": fit_scale([r.depth for r in scaled], [r.depth_sd for r in scaled], "depth"),
            "inplane": fit_scale([r.inplane for r in scaled], [r.inplane_sd for r in scaled], "inplane"),
            "cases": len(scaled)}
    return calibration
