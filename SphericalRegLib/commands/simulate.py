"""``sphericalreg simulate``: simulated X-ray cases of a CT with ground truth."""

from __future__ import annotations

import math

from ..errors import InputError
from ..simulate import PHOTONS, write_cases
from . import flags_for_fields

FLAGS = {"xray_ct": "--xray-ct", "n": "--n", "views": "--views", "physics": "--physics", "xray_format": "--format",
         "ct": "--ct", "photons": "--photons", "camera (sdd, size, pixel_spacing)": "--sdd/--size/--pixel-spacing"}


def add_arguments(parser) -> None:
    parser.add_argument("--ct", required=True, help="CT file (.nii.gz, .nrrd, .mha) or DICOM folder, in HU")
    parser.add_argument("--n", type=int, required=True, help="number of cases")
    parser.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    parser.add_argument("--seed", type=int, required=True, help="seed of poses, landmarks and noise")
    parser.add_argument("--size", type=int, default=256, help="detector rows = cols (default 256)")
    parser.add_argument("--sdd", type=float, default=1020.0, help="source-to-detector distance in mm (default 1020)")
    parser.add_argument("--pixel-spacing", type=float, default=None,
                        help="detector pixel spacing in mm (default: the CT's central region fills the field)")
    parser.add_argument("--photons", type=float, default=PHOTONS, help=f"photons per pixel in air (default {PHOTONS:g})")
    parser.add_argument("--landmarks", type=int, default=16, help="landmarks per case, in bone (default 16)")
    parser.add_argument("--format", choices=("png", "npy"), default="png", help="X-ray file: 16-bit png or npy")
    parser.add_argument("--physics", default="plain",
                        help="X-ray physics: plain (default: the simulator of the results so far), a preset of "
                             "docs/physics.md, or random (every parameter drawn per view)")
    parser.add_argument("--views", type=int, default=1,
                        help="X-rays per case (default 1); further views are the C-arm turned by a 60-90 deg orbit "
                             "and up to 10 deg angulation, in view_1/ ... (conventions)")
    parser.add_argument("--xray-ct", default=None,
                        help="render the X-rays from this CT when --ct is a crop of it (same world coordinates): a "
                             "patient's X-ray shows the body past a narrow CT's field; the cases get --ct")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")


def main(args) -> int:
    if not (math.isfinite(args.photons) and args.photons > 0):
        raise InputError("--photons", f"is {args.photons}", "a positive number of photons per pixel")
    if args.physics != "plain" and args.photons != PHOTONS:
        raise InputError("--photons", f"is given with --physics {args.physics}",
                         "--photons only with --physics plain; the other presets set their own dose")
    with flags_for_fields(FLAGS):
        write_cases(args.ct, args.out, args.n, args.seed, args.size, args.sdd, args.pixel_spacing, args.landmarks,
                    args.photons, args.format, args.overwrite, args.views,
                    args.physics, xray_ct=args.xray_ct)
    return 0
