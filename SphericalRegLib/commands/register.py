"""``sphericalreg register``: register the X-ray of a case folder to its CT and write the outputs."""

from __future__ import annotations

import sys

from ..alignment import describe as describe_shift
from ..devices import resolve_device
from ..register import RegisterOptions, register_case
from ..register.uncertainty import describe as describe_uncertainty
from . import flags_for_fields, set_threads

FLAGS = {"optimizer": "--optimizer", "learnt_stage": "--learnt-stage", "iterations": "--iterations",
         "device": "--device", "views": "--views",
         "relative_rotation_sd_deg": "--relative-sd", "distortion": "--distortion",
         "fit_distortion_rounds": "--fit-distortion-rounds",
         "residual_distortion_rounds": "--residual-distortion-rounds",
         "other_start_levels": "--other-start-levels"}


def add_arguments(p) -> None:
    p.add_argument("case", help="case folder (ct, xray, geometry.json[, init.json]) as in the conventions")
    p.add_argument("--model", required=True, help="model file written by 'sphericalreg train'")
    p.add_argument("--init", action="store_true", help="start from the case's init.json instead of the regressor")
    p.add_argument("--views", type=int, default=None,
                   help="register the first N views of a multi-view case jointly (default: all it holds)")
    p.add_argument("--relative-sd", type=float, default=0.0, metavar="DEG",
                   help="how well the further views' camera_from_reference is known (1 sd, deg): above 0 it is "
                        "refined as positioner angles about the isocentre and reported per view (default 0: exact)")
    p.add_argument("--distortion", default=None, metavar="K,S",
                   help="an image-intensifier C-arm's distortion from its dewarp calibration: pincushion and S "
                        "rotation (rad) at the detector's corners (docs/physics.md); omit for a flat panel or a "
                        "dewarped frame")
    p.add_argument("--fit-distortion-rounds", type=int, default=RegisterOptions.fit_distortion_rounds, metavar="N",
                   help="with several views and no --distortion: rounds of each view's image-intensifier distortion "
                        "fitted at the joint pose, then the pose again; 0 takes every frame as undistorted "
                        f"(default {RegisterOptions.fit_distortion_rounds}; a fit of none leaves the pose as it was)")
    p.add_argument("--residual-distortion-rounds", type=int, default=RegisterOptions.residual_distortion_rounds,
                   metavar="N", help="with one view and no --distortion: rounds of the image-intensifier warp that the "
                   "final DRR's patch shifts show, undone where it is clear, then the pose again; 0 takes the frame as "
                   f"undistorted, though a warp it shows is still warned about (default {RegisterOptions.residual_distortion_rounds}; "
                   "a frame with no clear warp is left as it was)")
    p.add_argument("--encoding", default=None, choices=["auto", "intensity", "processed", "processed-linear"],
                   help="how the X-ray's values relate to line integrals: raw detector counts, a processed export "
                        "of a log LUT or of a linear one (default: a DICOM's Pixel Intensity Relationship, else "
                        "auto: the pixels tell raw from processed, the CT tells the LUT)")
    p.add_argument("--out", help="output folder (default: the case folder)")
    p.add_argument("--optimizer", default="lm", choices=["lm", "gd", "adam", "none"],
                   help="the learnt-similarity stage's method; none skips the stage")
    p.add_argument("--learnt-stage", default="auto", choices=["auto", "always"],
                   help="auto: run the learnt-similarity stage only if the model's validation says its similarity "
                        "learnt; always: run it anyway (default auto)")
    p.add_argument("--iterations", type=int, default=RegisterOptions.iterations)
    p.add_argument("--other-start-levels", type=int, default=RegisterOptions.other_start_levels, metavar="N",
                   help="when the learnt stage ran and its answer and the initial pose lie in different basins, "
                        "both run the first N intensity levels and the lower cost goes on; 0: the translation "
                        f"search's pick alone (default {RegisterOptions.other_start_levels})")
    p.add_argument("--no-refine", action="store_true", help="skip the final intensity (NCC) stage")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def main(args) -> int:
    set_threads(args.threads)
    with flags_for_fields(FLAGS):
        options = RegisterOptions(optimizer=args.optimizer, learnt_stage=args.learnt_stage, iterations=args.iterations,
                                  refine=not args.no_refine, other_start_levels=args.other_start_levels,
                                  relative_rotation_sd_deg=args.relative_sd,
                                  fit_distortion_rounds=args.fit_distortion_rounds,
                                  residual_distortion_rounds=args.residual_distortion_rounds,
                                  distortion=None if args.distortion is None else args.distortion.split(","))
        device = resolve_device(args.device)
    last = {"stage": None}

    def progress(stage, fraction):
        if stage != last["stage"]:
            print(f"[sphericalreg] {stage} ...", flush=True)
            last["stage"] = stage
        print(f"PROGRESS {stage} {fraction:.3f}", flush=True)

    with flags_for_fields(FLAGS):
        result, paths = register_case(args.case, args.model, out=args.out, use_init=args.init, options=options,
                                      views=args.views, overwrite=args.overwrite, progress=progress, device=device,
                                      encoding=args.encoding)
    conf = "n/a (uncalibrated model)" if result.confidence is None else f"{result.confidence:.2f}"
    print(f"registered in {result.seconds:.1f} s, {result.iterations} iterations, confidence {conf}"
          + (" - DIVERGED, do not use this pose" if result.diverged else ""))
    if len(result.views) > 1:
        print(f"{len(result.views)} views registered jointly: "
              + "; ".join(f"{v.name} NCC {v.final_ncc:.2f}" + ("" if v.residual_shift_mm is None else
                                                                 f", residual shift {v.residual_shift_mm:.2f} mm")
                          for v in result.views)
              + " (the confidence is the lowest view's)")
        for view in result.views:
            if view.relative is not None:
                print(f"  {view.name}: relative pose refined by {view.relative['rotation_deg']:.2f} deg "
                      f"({view.relative['centre_shift_mm']:.2f} mm at the CT centre)")
    if result.distortion is not None:
        how = "first" if options.distortion is not None else "by the warp read off it"
        print(f"X-ray undistorted {how}: " + "pincushion {pincushion:.3f}, S {s_distortion:.3f} rad".format(
            **result.distortion))
    if result.uncertainty is not None:
        print(describe_uncertainty(result.uncertainty))
    if result.residual_shift_mm is not None:
        print(describe_shift(result.residual_shift_mm))
        for view in result.views if len(result.views) > 1 else ():
            if view.uncertainty is not None:
                print(f"  {view.name} alone: " + describe_uncertainty(view.uncertainty))
    for warning in result.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 3 if result.diverged else 0
