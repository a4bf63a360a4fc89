"""What registration returns: one record per stage and the result that gathers them."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..camera import Camera
from ..optimize import OptimizeResult

__all__ = ["StageRecord", "ViewResult", "RegistrationResult"]


@dataclass
class StageRecord:
    """One stage of a registration, or one peer's whole run.

    pose: the stage's answer, camera_from_world (4, 4) float64 on the CPU; seconds: its wall
    time; iterations: optimiser iterations (0 for a search); cost, poses: the optimiser's history
    (``cost[0]``/``poses[0]`` at the stage's start); converged, diverged: the optimiser's verdict;
    kept: for a stage whose answer may be discarded (the learnt similarity), whether it was;
    source: where an initial pose came from (``regressor`` or ``given``), which start a search or
    an intensity stage moved; candidates: a search's best pose about each start; linearisation: LM's
    residual (M,) and Jacobian (M, 6) at ``pose`` and whether that Jacobian is exact there (the
    final pose's uncertainty reuses them instead of six more derivative passes).
    """

    pose: Tensor
    seconds: float
    iterations: int = 0
    cost: list[float] = field(default_factory=list)
    poses: list[Tensor] = field(default_factory=list)
    converged: bool | None = None
    diverged: bool = False
    kept: bool | None = None
    source: str | None = None
    candidates: dict[str, Tensor] = field(default_factory=dict, repr=False)
    linearisation: tuple[Tensor, Tensor, bool] | None = field(default=None, repr=False)

    @classmethod
    def from_optimizer(cls, res: OptimizeResult, seconds: float, element: int = 0) -> "StageRecord":
        """Element ``element`` of a batched :class:`~SphericalRegLib.optimize.OptimizeResult`."""
        linearisation = None
        if res.jacobian is not None:
            linearisation = (res.residual[element].detach(), res.jacobian[element].detach(), bool(res.exact[element]))
        return cls(pose=res.pose[element].detach().cpu(), seconds=seconds, iterations=int(res.iterations[element]),
                   cost=[float(h["cost"][element]) for h in res.history],
                   poses=[h["pose"][element].detach().cpu() for h in res.history],
                   converged=bool(res.converged[element]), diverged=bool(res.diverged[element]),
                   linearisation=linearisation)

    def then(self, other: "StageRecord") -> "StageRecord":
        """This stage continued by ``other`` (the next level of the same stage): one history."""
        return StageRecord(pose=other.pose, seconds=self.seconds + other.seconds,
                           iterations=self.iterations + other.iterations,
                           cost=self.cost + other.cost[1:], poses=self.poses + other.poses[1:],
                           converged=other.converged, diverged=self.diverged or other.diverged,
                           kept=other.kept, source=other.source, candidates=other.candidates,
                           linearisation=other.linearisation)

    def to_json(self) -> dict:
        """The summary result.json keeps: time, iterations, cost history and the verdicts."""
        out = {"seconds": self.seconds, "iterations": self.iterations}
        if self.cost:
            out["cost"] = self.cost
        for key in ("converged", "kept", "source"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.diverged:
            out["diverged"] = True
        return out


@dataclass
class ViewResult:
    """One view's share of a registration: its name and camera, its pose
    (``camera_from_reference @ camera_from_world``), the final DRR and X-ray of the last
    intensity level, their NCC and residual patch shift (mm on the detector,
    :func:`~SphericalRegLib.alignment.residual_shift_mm`), the confidence they give, and the uncertainty (mm, at the CT centre,
    along this view's central ray and in its detector plane) this view alone would leave: view 0's
    beside the joint figure shows what the further views add."""

    name: str
    camera: Camera
    camera_from_world: Tensor
    final_ncc: float | None = None
    confidence: float | None = None
    uncertainty: dict | None = None
    drr: Tensor | None = None
    xray: Tensor | None = None
    residual_shift_mm: float | None = None
    misaligned: bool = False
    """The residual shift says the pose is wrong in this view (:func:`~SphericalRegLib.alignment.misaligned`)."""
    relative: dict | None = None
    """When the relative pose was refined: the refined ``camera_from_reference``, its rotation (deg)
    from the given one and the CT centre's shift (mm) in this view."""
    distortion: dict | None = None
    """When it was fitted at the joint pose: this view's image-intensifier distortion (``pincushion``,
    ``s_distortion``), undone before the last intensity level; ``drr`` and ``xray`` are undistorted."""

    def to_json(self) -> dict:
        out = {"name": self.name, "camera_from_world": self.camera_from_world.tolist(), "final_ncc": self.final_ncc,
               "residual_shift_mm": self.residual_shift_mm, "misaligned": self.misaligned,
               "confidence": self.confidence, "uncertainty": self.uncertainty}
        if self.relative is not None:
            out["relative_pose_refined"] = self.relative
        if self.distortion is not None:
            out["distortion"] = self.distortion
        return out


@dataclass
class RegistrationResult:
    """camera_from_world (4, 4) float64 in the conventions' frames; similarity: the learnt cost at
    the learnt stage's answer (or at the final pose when that stage did not run); confidence in
    [0, 1], or None when the model carries no calibration; final_ncc: NCC of the final DRR with
    the X-ray; residual_shift_mm: the median shift (mm on the detector) its patches still want
    (:func:`~SphericalRegLib.alignment.residual_shift_mm`); drr, xray: the images of the last intensity level, for review (None for a peer that
    renders its own); ``stages`` holds each stage's record; ``warnings`` what the user must know
    before trusting the pose (a model that did not learn, for one), ``notes`` what ran and why
    (a stage skipped, for one); covariance: ``(6, 6)`` of the
    final pose's left twist (rad, mm), and uncertainty: the standard deviations (mm) it gives the
    CT centre along the central ray and in the detector plane (None without an intensity stage).
    views: one :class:`ViewResult` per view registered (empty for a peer, which uses view 0);
    with several, ``camera_from_world``, uncertainty and covariance are the joint answer (view 0's
    pose), ``drr``/``xray``/``final_ncc`` are view 0's and ``confidence`` is the lowest view's.
    distortion: the image intensifier's distortion undone before the intensity stage
    (``pincushion``, ``s_distortion``): the one given, or one view's read off its residual patch
    shifts (a note says so); None when neither (several views' fitted ones are in ``views``);
    photometric: view 0's polarity as registered."""

    camera_from_world: Tensor
    seconds: float
    similarity: float
    iterations: int
    confidence: float | None
    diverged: bool
    camera: Camera
    drr: Tensor | None = None
    xray: Tensor | None = None
    final_ncc: float | None = None
    residual_shift_mm: float | None = None
    stages: dict[str, StageRecord] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    covariance: Tensor | None = None
    uncertainty: dict | None = None
    views: list[ViewResult] = field(default_factory=list)
    distortion: dict | None = None
    photometric: str | None = None

    def to_json(self) -> dict:
        """result.json of the conventions, with each stage's summary (and each view's, for several)."""
        out = {
            "camera_from_world": self.camera_from_world.tolist(),
            "seconds": self.seconds,
            "similarity": self.similarity,
            "confidence": self.confidence,
            "iterations": self.iterations,
            "diverged": self.diverged,
            "final_ncc": self.final_ncc,
            "residual_shift_mm": self.residual_shift_mm,
            "stages": {name: stage.to_json() for name, stage in self.stages.items()},
            "warnings": self.warnings,
            "notes": self.notes,
            "uncertainty": self.uncertainty,
            "views": max(1, len(self.views)),
        }
        if self.distortion is not None:
            out["distortion"] = self.distortion
        if self.photometric is not None:
            out["photometric"] = self.photometric
        if len(self.views) > 1:
            out["per_view"] = [v.to_json() for v in self.views]
        return out
