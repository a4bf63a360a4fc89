"""``sphericalreg landscape``: the learnt cost and NCC along the six axes through a case's true pose."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from . import flags_for_fields, set_threads

FLAGS = {"device": "--device"}


def add_arguments(p) -> None:
    p.add_argument("case", help="a simulated case folder with its <case>.truth.json beside it")
    p.add_argument("--model", required=True, help="model file written by 'sphericalreg train'")
    p.add_argument("--out", required=True, help="the PNG to write (a .json with the curves goes beside it)")
    p.add_argument("--rotation", type=float, default=15.0, help="half range of the rotation axes, degrees")
    p.add_argument("--translation", type=float, default=40.0, help="half range of the translation axes, mm")
    p.add_argument("--steps", type=int, default=21, help="points along each axis (default 21)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def main(args) -> int:
    from ..devices import resolve_device
    from ..io import read_case, read_truth, write_json
    from ..landscape import plot_landscape, twist_profiles
    from ..model import load_model
    from ..register import Registrar
    from ..register.stages import learnt_residual

    set_threads(args.threads)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(out, "already exists", "a new file name, or --overwrite")
    if args.steps < 3:
        raise InputError("--steps", f"is {args.steps}", "at least 3")
    with flags_for_fields(FLAGS):
        device = resolve_device(args.device)
    case = read_case(args.case)
    truth, _ = read_truth(args.case)
    registrar = Registrar(load_model(args.model, case.ct, device), case.ct)
    ctx = registrar.context(case.xray, case.camera, photometric=case.reading["photometric"])
    learnt = learnt_residual(ctx)
    ncc = ctx.intensity_residual(registrar.options.refine_levels[0], "ncc")
    costs = {"learnt similarity": lambda T: 0.5 * learnt(T).pow(2).sum(-1),
             "1 - NCC (intensity stage)": lambda T: 0.5 * ncc(T).pow(2).sum(-1)}
    profiles = twist_profiles(costs, truth.to(device), case.camera.sdd, args.rotation, args.translation, args.steps)
    plot_landscape(out, profiles, f"{Path(args.case).name}: cost through the true pose")
    summary = profiles.summary()
    write_json(out.with_suffix(".json"), {"case": str(args.case), "model": str(args.model),
                                          "offsets": profiles.offsets, "costs": profiles.costs,
                                          "summary": summary}, overwrite=args.overwrite)
    for name, axes in summary.items():
        ranges = ", ".join(f"{a} [{v['capture_lo']:g}, {v['capture_hi']:g}]" for a, v in axes.items())
        print(f"{name}: capture range {ranges}")
    print(f"landscape: {out}")
    return 0
