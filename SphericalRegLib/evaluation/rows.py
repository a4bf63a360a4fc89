"""One table row per (method, case): typed, and the same through cases.csv and back."""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from torch import Tensor

from ..camera import Camera
from ..errors import InputError
from ..io import write_csv
from ..metrics import centroid_errors, mpe, mtre
from ..register import RegistrationResult, StageRecord
from ..register.uncertainty import point_standard_deviations

__all__ = ["Row", "errors", "read_rows", "write_rows"]


def errors(pose: Tensor, truth: Tensor, landmarks: Tensor, camera: Camera) -> dict[str, float]:
    """mTRE, mPE (on ``camera``'s detector), and the landmarks' centroid error along the central ray
    (depth) and across it (in-plane), in mm."""
    depth, inplane = centroid_errors(pose, truth, landmarks)
    return {"mTRE": float(mtre(pose, truth, landmarks)), "mPE": float(mpe(pose, truth, landmarks, camera)),
            "depth": float(depth), "inplane": float(inplane)}


@dataclass
class Row:
    """A method's answer on one case and its errors (mm); confidence, final_ncc and cost are None
    where the method has none (peers, rows derived from a stage). depth_sd, inplane_sd: the raw
    Gauss-Newton sds at the landmarks' centroid (what the uncertainty scale is fitted on);
    centre_inplane_sd, centre_depth_sd: the raw sds at the CT centre; residual_shift: the median patch
    shift (mm on the detector; signals of the confidence, as the final NCC), the largest view's for a
    joint registration: the registrar shows the lowest view's confidence. cost: the
    learnt cost the confidence reads (``RegistrationResult.similarity``), also where the learnt
    stage was skipped: the calibration of a model whose stage is skipped is fitted on it too."""

    method: str
    case: str
    seconds: float
    iterations: int
    confidence: float | None
    diverged: bool
    final_ncc: float | None
    cost: float | None
    mTRE: float
    mPE: float
    depth: float
    inplane: float
    depth_sd: float | None = None
    inplane_sd: float | None = None
    views: int | None = None
    centre_inplane_sd: float | None = None
    centre_depth_sd: float | None = None
    residual_shift: float | None = None

    @classmethod
    def from_result(cls, method: str, case: str, result: RegistrationResult, truth, landmarks) -> "Row":
        sds = {}
        if result.covariance is not None:  # raw (uncalibrated) sds at the landmarks' centroid
            sd = point_standard_deviations(result.camera_from_world, result.covariance, landmarks.mean(0))
            sds = {"depth_sd": sd["depth_sd_mm"], "inplane_sd": sd["inplane_sd_mm"]}
        if result.uncertainty is not None:
            sds["centre_inplane_sd"] = result.uncertainty["raw_inplane_sd_mm"]
            sds["centre_depth_sd"] = result.uncertainty["raw_depth_sd_mm"]
        return cls(method, case, result.seconds, result.iterations, result.confidence, result.diverged,
                   result.final_ncc, result.similarity if math.isfinite(result.similarity) else None,
                   **errors(result.camera_from_world, truth, landmarks, result.camera), **sds,
                   views=max(1, len(result.views)), residual_shift=_largest_shift(result))

    @classmethod
    def from_stage(cls, method: str, case: str, stage: StageRecord, truth, landmarks, camera: Camera) -> "Row":
        """A row for one stage's answer, as if the pipeline had stopped there."""
        return cls(method, case, stage.seconds, stage.iterations, None, False, None, None,
                   **errors(stage.pose, truth, landmarks, camera))

    @classmethod
    def from_csv(cls, record: dict[str, str], source) -> "Row":
        values = {}
        for f in fields(cls):
            text = record.get(f.name)
            if text is None and f.default is None:  # a column added later: absent in older tables
                continue
            if text is None:
                raise InputError(source, f"has no column {f.name!r}", "a cases.csv written by 'sphericalreg evaluate'")
            values[f.name] = _parse(text, f.type, f.name, source)
        return cls(**values)


def _parse(text: str, kind: str, name: str, source):
    optional = "None" in kind
    if optional and text in ("", "None"):
        return None
    try:
        if kind.startswith("bool"):
            if text not in ("True", "False"):
                raise ValueError(text)
            return text == "True"
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise InputError(source, f"column {name!r} holds {text!r}", f"a {kind.split()[0]}") from None
    return text


def write_rows(path: Path, rows: list[Row]) -> None:
    write_csv(path, [f.name for f in fields(Row)], [asdict(r) for r in rows])


def _largest_shift(result: RegistrationResult) -> float | None:
    shifts = [v.residual_shift_mm for v in result.views]
    if len(shifts) < 2 or None in shifts:
        return result.residual_shift_mm
    return max(shifts)


def read_rows(path: Path) -> list[Row]:
    with open(path, newline="") as f:
        return [Row.from_csv(r, path) for r in csv.DictReader(f)]

