"""The main job: register one X-ray to its CT with a trained model.

Stages: X-ray preprocessing (line integrals at the model's image size), an initial pose from the
regressor (or a given one), Levenberg-Marquardt on the learnt spherical similarity, and an
optional intensity stage: Levenberg-Marquardt on patch and global NCC of intensities and edges of
line-integral DRRs, coarse to fine. ``Registrar`` does the one-time per-CT preparation so that many
X-rays of the same CT register without repeating it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .camera import Camera, project
from .errors import InputError
from .geometry import perturb_left, se3_inverse, transform_points
from .intensity import sobel, standardise
from .model import ModelBundle, load_model, resolve_device
from .optimize import adam, gradient_descent, least_squares_cost, levenberg_marquardt
from .render import Renderer
from .volume import Volume, hu_to_mu

__all__ = ["RegisterOptions", "RegistrationResult", "Registrar", "Cancelled", "register_case"]


class Cancelled(RuntimeError):
    """Raised when the caller's cancel flag is set between iterations."""


@dataclass(frozen=True)
class IntensityLevel:
    """One level of the intensity stage: CT voxels (mm), image size (px), NCC patch (px), the
    residual form of :func:`ncc_residual` and LM's iteration cap."""

    spacing_mm: float
    image_size: int
    patch: int
    form: str
    iterations: int


@dataclass
class RegisterOptions:
    """How to register. ``optimizer`` picks the learnt-similarity stage's method (the ablation of
    LM against first-order methods); ``refine`` switches the final intensity stage."""

    optimizer: str = "lm"  # lm | gd | adam | none
    iterations: int = 20
    gd_iterations: int = 100
    # gradient-descent rates for the learnt cost (rad and mm per unit gradient), the best of a
    # sweep on held-out cases (docs/results.md); 1e-2 / 5.0 left the trust region at once
    lr_rot: float = 3e-6
    lr_trans: float = 1.5
    refine: bool = True
    refine_levels: tuple = (
        IntensityLevel(spacing_mm=3.0, image_size=64, patch=8, form="ncc", iterations=12),
        IntensityLevel(spacing_mm=2.0, image_size=128, patch=16, form="difference", iterations=12),
    )
    max_rotation_deg: float = 45.0
    max_translation_mm: float = 200.0
    # coarse search over camera-frame translations before the intensity levels (0 switches it off)
    search_step_mm: float = 15.0
    search_steps: tuple = (4, 4, 2)  # grid half-widths along camera x, y, z, in steps
    search_level: IntensityLevel = IntensityLevel(spacing_mm=6.0, image_size=32, patch=8, form="ncc", iterations=0)

    def __post_init__(self):
        if self.optimizer not in ("lm", "gd", "adam", "none"):
            raise InputError("--optimizer", f"is {self.optimizer!r}", "lm, gd, adam or none")
        if not self.refine_levels:
            raise InputError("refine_levels", "is empty", "at least one intensity level (it also renders the result)")


@dataclass
class RegistrationResult:
    """camera_from_world (4, 4) float64 in the conventions' frames; confidence in [0, 1] or None
    when the model carries no calibration; ``stages`` holds each stage's pose, cost history and time."""

    camera_from_world: Tensor
    seconds: float
    similarity: float
    iterations: int
    confidence: float | None
    diverged: bool
    drr: Tensor
    xray: Tensor
    camera: Camera
    stages: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "camera_from_world": self.camera_from_world.tolist(),
            "seconds": self.seconds,
            "similarity": self.similarity,
            "confidence": self.confidence,
            "iterations": self.iterations,
            "diverged": self.diverged,
            "stages": {k: {kk: vv for kk, vv in v.items() if kk in ("seconds", "iterations", "cost", "converged")}
                       for k, v in self.stages.items()},
        }


def ncc_residual(patch: int, form: str = "difference"):
    """The LM residual of patch NCC on intensities and on edges (Sobel), ``(B, 1, H, W) x 2 -> (B, M)``.

    ``0.5 ||r||^2`` is the mean of four costs either way: ``1 - NCC`` over patches and over the whole
    image, of intensities and of edges. ``form="difference"``: the entries are differences of
    standardised pixels; they vanish linearly at a perfect match, as Gauss-Newton's model assumes,
    so LM converges fast near the optimum, but its linear model has a small capture range.
    ``form="ncc"``: one entry ``sqrt(2 (1 - NCC))`` per patch; a few smooth entries that carry LM
    far from the optimum, but quadratic at it, where LM stalls. Coarse levels use the second, fine
    levels the first.
    """
    if form not in ("difference", "ncc"):
        raise ValueError(f"form must be 'difference' or 'ncc', not {form!r}")

    def tiles(x: Tensor, h: int, w: int) -> Tensor:
        B, c = x.shape[:2]
        x = x[..., :h, :w].reshape(B, c, h // patch, patch, w // patch, patch)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(B, -1, c * patch * patch)

    def residual(a: Tensor, b: Tensor) -> Tensor:
        H, W = a.shape[-2:]
        h, w = (H // patch) * patch, (W // patch) * patch
        parts = []
        for fa, fb in ((a, b), (sobel(a), sobel(b))):
            ta, tb = tiles(fa, h, w), tiles(fb, h, w)
            n_tiles, n = ta.shape[1], ta.shape[2]
            local = (standardise(ta, -1) - standardise(tb, -1)) / math.sqrt(n * n_tiles)
            whole = (standardise(fa, (1, 2, 3)) - standardise(fb, (1, 2, 3))) / math.sqrt(fa[0].numel())
            if form == "ncc":  # the norm of each group of differences: sqrt(2 (1 - NCC)) per patch
                local = local.pow(2).sum(-1).clamp_min(1e-12).sqrt()
                whole = whole.flatten(1).pow(2).sum(-1, keepdim=True).clamp_min(1e-12).sqrt()
            parts += [local.flatten(1), whole.flatten(1)]
        return torch.cat(parts, dim=-1) / 2

    return residual


def _prepare(image: Tensor, camera: Camera, size: int, photometric: str, line_integrals: bool):
    """Line integrals on a ``size x size`` grid and the matching camera (the networks take squares)."""
    from .xray import preprocess, resample

    image = torch.as_tensor(image)
    if line_integrals:
        x, cam = resample(image.float(), camera, size, size)
        return x, cam, torch.ones_like(x, dtype=torch.bool)
    return preprocess(image, camera, (size, size), photometric=photometric)


class Registrar:
    """A model and its CT prepared once; :meth:`register` then handles any number of X-rays.

    Work runs on the model's device (``load_model(..., device=)``); results come back on the CPU.
    """

    def __init__(self, model: ModelBundle, ct: Volume, options: RegisterOptions | None = None,
                 calibration: dict | None = None):
        self.model = model
        self.ct = ct
        self.options = options or RegisterOptions()
        self.calibration = calibration
        self.device = model.mu.device
        self.levels = {}
        for level in (self.options.search_level, *self.options.refine_levels):
            if level.spacing_mm not in self.levels:
                coarse = ct.with_spacing(level.spacing_mm)
                mu = hu_to_mu(coarse.data.to(self.device))[None].float()
                self.levels[level.spacing_mm] = Volume(mu, coarse.ijk_to_ras)

    def _renderer(self, camera: Camera, volume: Volume, n_samples: int | None = None) -> Renderer:
        return Renderer(camera, volume.ijk_to_ras, volume.shape[-3:], n_samples).to(self.device)

    def _check_cancel(self, cancel):
        if cancel is not None and cancel.is_set():
            raise Cancelled("registration cancelled")

    def register(self, image: Tensor, camera: Camera, init: Tensor | None = None, *,
                 photometric: str = "MONOCHROME2", line_integrals: bool = False,
                 progress=None, cancel=None) -> RegistrationResult:
        """Register ``image`` (rows, cols) seen by ``camera``.

        ``image`` holds detector intensities (air bright; MONOCHROME1 inverted) unless
        ``line_integrals`` says it already holds -log(I/I0); ``init``
        (4, 4) skips the regressor. ``progress(stage, fraction)`` is called as work advances;
        ``cancel`` is anything with ``is_set()``.
        """
        opt, model = self.options, self.model
        report = progress or (lambda stage, fraction: None)
        start = time.perf_counter()
        size = model.config.image_size
        prepared = {}

        def prepare(n: int):
            """Line integrals at ``n x n`` and their camera, computed once per size."""
            if n not in prepared:
                x, cam, valid = _prepare(image, camera, n, photometric, line_integrals)
                prepared[n] = x.to(self.device), cam, valid
            return prepared[n]

        x_small, cam_small, _ = prepare(size)
        x_small = x_small.float()[None, None]
        stages: dict = {}

        with torch.no_grad():
            zx = model.similarity.embed_xray(x_small)
            t0 = time.perf_counter()
            pose = (model.regressor(x_small)[0].double() if init is None
                    else torch.as_tensor(init, dtype=torch.float64, device=self.device))
            stages["initial"] = {"pose": pose.cpu(), "seconds": time.perf_counter() - t0, "iterations": 0,
                                 "source": "regressor" if init is None else "given"}
        report("initial", 1.0)
        self._check_cancel(cancel)

        feature_renderer = self._renderer(cam_small, model.feature_volume, model.config.n_samples)
        features = model.feature_volume.data.float()

        def residual_fn(T: Tensor) -> Tensor:
            return model.similarity.residual(zx, model.similarity.embed_drr(feature_renderer(features, T)))

        bounds = dict(max_rotation=math.radians(opt.max_rotation_deg), max_translation=opt.max_translation_mm)
        pose0 = starts = pose[None]
        diverged = False
        similarity_value = math.nan

        def callback_for(stage, total):
            def callback(k, entry):
                report(stage, min(1.0, k / max(1, total)))
                return cancel is not None and cancel.is_set()
            return callback

        if opt.optimizer != "none":
            t0 = time.perf_counter()
            if opt.optimizer == "lm":
                res = levenberg_marquardt(residual_fn, pose0, max_iters=opt.iterations,
                                          callback=callback_for("similarity", opt.iterations), **bounds)
            else:
                method = gradient_descent if opt.optimizer == "gd" else adam
                res = method(least_squares_cost(residual_fn), pose0, iters=opt.gd_iterations, lr_rot=opt.lr_rot,
                             lr_trans=opt.lr_trans, callback=callback_for("similarity", opt.gd_iterations), **bounds)
            self._check_cancel(cancel)
            similarity_value = float(res.cost[0])
            stages["similarity"] = {"pose": res.pose[0].detach().cpu(), "seconds": time.perf_counter() - t0,
                                    "iterations": int(res.iterations[0]), "cost": [float(h["cost"][0]) for h in res.history],
                                    "poses": [h["pose"][0].cpu() for h in res.history],
                                    "converged": bool(res.converged[0])}
            # An independent check before trusting the learnt stage: the translation search looks
            # around both its start and its result and keeps the pose that images the X-ray best
            # (coarse NCC, and it records "kept"); without a search, the result must beat the start.
            learnt = res.pose.detach()
            if not bool(res.diverged[0]) and opt.refine and opt.search_step_mm > 0:
                starts = torch.cat([pose0, learnt])
            else:
                kept = not bool(res.diverged[0])
                if kept and opt.refine:
                    x, cam, _ = prepare(opt.search_level.image_size)
                    before, after = self._coarse_cost(torch.cat([pose0, learnt]), x.float()[None, None], cam)
                    kept = bool(after < before)
                stages["similarity"]["kept"] = kept
                if kept:
                    pose0 = starts = learnt
                else:
                    diverged = not opt.refine

        if opt.refine and not diverged and opt.search_step_mm > 0:
            t0 = time.perf_counter()
            x, cam, _ = prepare(opt.search_level.image_size)
            pose0, origin = self._search_translation(starts, x.float()[None, None], cam)
            if len(starts) > 1:
                stages["similarity"]["kept"] = origin == 1
            stages["search"] = {"pose": pose0[0].cpu(), "seconds": time.perf_counter() - t0, "iterations": 0}
            report("search", 1.0)

        if opt.refine and not diverged:
            t0 = time.perf_counter()
            history, iterations, converged = [], 0, False
            for k, level in enumerate(opt.refine_levels):
                x, cam, _ = prepare(level.image_size)
                mu = self.levels[level.spacing_mm]
                level_renderer = self._renderer(cam, mu)
                residual = ncc_residual(level.patch, level.form)
                x = x.float()[None, None]
                res = levenberg_marquardt(
                    lambda T: residual(x.expand(len(T), -1, -1, -1), level_renderer(mu.data, T)), pose0,
                    max_iters=level.iterations, callback=callback_for(f"intensity {k + 1}", level.iterations),
                    **bounds)
                self._check_cancel(cancel)
                diverged = diverged or bool(res.diverged[0])
                pose0 = res.pose.detach()
                history += res.history if not history else res.history[1:]
                iterations += int(res.iterations[0])
                converged = bool(res.converged[0])
                if diverged:
                    break
            stages["intensity"] = {"pose": pose0[0].cpu(), "seconds": time.perf_counter() - t0,
                                   "iterations": iterations, "cost": [float(h["cost"][0]) for h in history],
                                   "poses": [h["pose"][0].cpu() for h in history], "converged": converged}

        # the last level's images show the result and give the confidence its NCC, refined or not
        final_level = opt.refine_levels[-1]
        x_fine, cam_fine, _ = prepare(final_level.image_size)
        x_fine = x_fine.float()[None, None]
        fine = self.levels[final_level.spacing_mm]
        fine_renderer = self._renderer(cam_fine, fine)
        with torch.no_grad():
            drr = fine_renderer(fine.data, pose0)[0, 0]
            ncc_final = float((standardise(drr[None, None], (1, 2, 3)) *
                               standardise(x_fine, (1, 2, 3))).mean())
            if math.isnan(similarity_value):
                similarity_value = float(0.5 * residual_fn(pose0).pow(2).sum())
        final = pose0[0].cpu()
        diverged = diverged or not torch.isfinite(final).all() or not self._plausible(final, cam_fine)
        confidence = self._confidence(ncc_final, similarity_value, diverged)
        seconds = time.perf_counter() - start
        iterations = sum(int(s.get("iterations", 0)) for s in stages.values())
        return RegistrationResult(camera_from_world=final, seconds=seconds, similarity=similarity_value,
                                  iterations=iterations, confidence=confidence, diverged=diverged, drr=drr.cpu(),
                                  xray=x_fine[0, 0].cpu(), camera=cam_fine,
                                  stages={**stages, "final": {"ncc": ncc_final}})

    @torch.no_grad()
    def _search_translation(self, poses: Tensor, x: Tensor, camera: Camera, chunk: int = 64) -> tuple[Tensor, int]:
        """The best of a grid of camera-frame translations about each of ``poses`` (P, 4, 4) by
        coarse NCC: ``-> (1, 4, 4)`` and the index of the pose it moved.

        A regressor's largest errors are translations, and a Gauss-Newton stage cannot recover
        shifts of many pixels; a brute-force look at a few hundred tiny DRRs can, in well under a second.
        """
        opt = self.options
        axes = [torch.arange(-n, n + 1, dtype=poses.dtype, device=poses.device) * opt.search_step_mm
                for n in opt.search_steps]
        shifts = torch.cartesian_prod(*axes)
        xi = torch.cat([torch.zeros_like(shifts), shifts], dim=-1)
        candidates = torch.cat([perturb_left(xi, p.expand(len(xi), 4, 4)) for p in poses])
        best = int(self._coarse_cost(candidates, x, camera, chunk).argmin())
        return candidates[best:best + 1], best // len(xi)

    @torch.no_grad()
    def _coarse_cost(self, poses: Tensor, x: Tensor, camera: Camera, chunk: int = 64) -> Tensor:
        """Mean ``1 - NCC`` (patches and whole, intensities and edges) of tiny DRRs at ``poses`` (B, 4, 4)."""
        level = self.options.search_level
        mu = self.levels[level.spacing_mm]
        renderer = self._renderer(camera, mu)
        residual = ncc_residual(level.patch, "ncc")
        return torch.cat([0.5 * residual(x.expand(len(part), -1, -1, -1), renderer(mu.data, part)).pow(2).sum(-1)
                          for part in poses.split(chunk)])

    def _plausible(self, pose: Tensor, camera: Camera) -> bool:
        """The CT centre must lie in front of the source and project onto the detector."""
        c = transform_points(pose, self.ct.centre[None].to(pose))[0]
        if not (0 < float(c[2]) < camera.sdd):
            return False
        u, v = project(self.ct.centre[None].to(pose), pose, camera)[0].tolist()
        return -0.5 * camera.cols <= u <= 1.5 * camera.cols and -0.5 * camera.rows <= v <= 1.5 * camera.rows

    def _confidence(self, ncc_final: float, cost: float, diverged: bool) -> float | None:
        """Platt-scaled probability of a sub-millimetre result, from the model's calibration."""
        if diverged:
            return 0.0
        if not self.calibration:
            return None
        from .confidence import predict

        return predict(self.calibration, ncc_final, cost)


def calibration_path(model_path) -> Path:
    """Where the confidence calibration of a model lives: beside it, so calibrating never rewrites the model."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".calibration.json")


def load_calibration(model_path) -> dict | None:
    path = calibration_path(model_path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(path, f"is not valid JSON ({e})", "a calibration written by sphericalreg evaluate") from None


def save_overlay(path: Path, result: RegistrationResult) -> None:
    """X-ray, DRR at the result, and their edge overlay side by side (PNG), for a human check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = standardise(result.xray[None, None].float(), (1, 2, 3))[0, 0]
    d = standardise(result.drr[None, None].float(), (1, 2, 3))[0, 0]
    edges = sobel(d[None, None])[0].norm(dim=0)
    alpha = (edges / edges.max().clamp_min(1e-6)).clamp(0, 1).numpy()
    x, d, edges = x.numpy(), d.numpy(), edges.numpy()
    fig, ax = plt.subplots(1, 3, figsize=(12, 4.4))
    ax[0].imshow(x, cmap="gray")
    ax[0].set_title("X-ray (line integrals)")
    ax[1].imshow(d, cmap="gray")
    ax[1].set_title("DRR at the result")
    ax[2].imshow(x, cmap="gray")
    ax[2].imshow(edges, cmap="autumn", alpha=alpha)
    conf = "n/a" if result.confidence is None else f"{result.confidence:.2f}"
    ax[2].set_title(f"DRR edges over X-ray (confidence {conf})")
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(out: Path, result: RegistrationResult, overwrite: bool = False, overlay: bool = True) -> dict:
    """result.json, transform.json, the ITK transform for 3D Slicer and the overlay PNG in ``out``."""
    from .io import write_itk_transform, write_json

    out.mkdir(parents=True, exist_ok=True)
    paths = {"result": out / "result.json", "transform": out / "transform.json",
             "itk": out / "world_from_camera.tfm", "overlay": out / "overlay.png"}
    if not overwrite:
        existing = [str(p) for k, p in paths.items() if p.exists() and (overlay or k != "overlay")]
        if existing:
            raise InputError(existing[0], "already exists", "a fresh output folder, or --overwrite")
    write_json(paths["result"], result.to_json(), overwrite=overwrite)
    world_from_camera = se3_inverse(result.camera_from_world)
    write_json(paths["transform"], {
        "camera_from_world": result.camera_from_world.tolist(),
        "world_from_camera": world_from_camera.tolist(),
        "frames": "world = CT RAS mm; camera = source at origin, +z to the detector, +x columns, +y rows",
    }, overwrite=overwrite)
    write_itk_transform(paths["itk"], world_from_camera, overwrite=overwrite)
    if overlay:
        save_overlay(paths["overlay"], result)
    return paths


def register_case(folder, model_path, *, out=None, use_init: bool = False, options: RegisterOptions | None = None,
                  overwrite: bool = False, progress=None, cancel=None, device="cpu") -> tuple[RegistrationResult, dict]:
    """Register a case folder of the conventions and write its outputs (to ``out``, default the folder)."""
    from .io import read_case

    case = read_case(folder)
    if use_init and case.init is None:
        raise InputError(Path(folder) / "init.json", "not found", "an init.json when --init is given")
    model = load_model(model_path, case.ct, device)
    registrar = Registrar(model, case.ct, options, load_calibration(model_path))
    result = registrar.register(case.xray, case.camera, case.init if use_init else None,
                                photometric=case.meta.get("photometric", "MONOCHROME2"),
                                progress=progress, cancel=cancel)
    paths = write_outputs(Path(out or folder), result, overwrite=overwrite)
    return result, paths


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("case", help="case folder (ct, xray, geometry.json[, init.json]) as in the conventions")
    p.add_argument("--model", required=True, help="model file written by 'sphericalreg train'")
    p.add_argument("--init", action="store_true", help="start from the case's init.json instead of the regressor")
    p.add_argument("--out", help="output folder (default: the case folder)")
    p.add_argument("--optimizer", default="lm", choices=["lm", "gd", "adam", "none"])
    p.add_argument("--iterations", type=int, default=RegisterOptions.iterations)
    p.add_argument("--no-refine", action="store_true", help="skip the final intensity (NCC) stage")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def main(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    options = RegisterOptions(optimizer=args.optimizer, iterations=args.iterations, refine=not args.no_refine)
    last = {"stage": None}

    def progress(stage, fraction):
        if stage != last["stage"]:
            print(f"[sphericalreg] {stage} ...", flush=True)
            last["stage"] = stage
        print(f"PROGRESS {stage} {fraction:.3f}", flush=True)

    result, paths = register_case(args.case, args.model, out=args.out, use_init=args.init, options=options,
                                  overwrite=args.overwrite, progress=progress, device=resolve_device(args.device))
    conf = "n/a (uncalibrated model)" if result.confidence is None else f"{result.confidence:.2f}"
    print(f"registered in {result.seconds:.1f} s, {result.iterations} iterations, confidence {conf}"
          + (" - DIVERGED, do not use this pose" if result.diverged else ""))
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 3 if result.diverged else 0
