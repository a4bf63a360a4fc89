"""``sphericalreg evaluate``: several methods on the same simulated cases, one table."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..confidence import calibration_path
from ..evaluation import DERIVED, METHODS, evaluate, fit_confidence, merge
from ..io import write_json
from ..devices import resolve_device
from . import flags_for_fields, set_threads

FLAGS = {"methods": "--methods", "device": "--device", "calibration": "--calibrate"}


def add_arguments(p) -> None:
    p.add_argument("cases", nargs="?", help="folder of case folders and their <case>.truth.json (sphericalreg simulate)")
    p.add_argument("--model", help="the main model (its metric, similarity space and features as trained); "
                   "needed by every method but diffpose-ncc")
    p.add_argument("--ablation", action="append", default=[], metavar="KEY=MODEL",
                   help="models for ablations: se3=, euclidean=, hyperbolic=, plain= (repeatable)")
    p.add_argument("--methods", default="ours,ours-learnt,ours-init,ours-gd,regressor,ours-no-intensity,diffpose-ncc",
                   help=f"comma-separated, from: {', '.join([*METHODS, *DERIVED])}")
    p.add_argument("--out", required=True, help="output folder for tables, plots and per-case results")
    p.add_argument("--limit", type=int, help="only the first N cases")
    p.add_argument("--shard", default="0/1", metavar="K/N", help="every N-th case from the K-th (parallel runs)")
    p.add_argument("--merge", nargs="+", metavar="DIR", help="instead of running: merge these evaluation folders")
    p.add_argument("--baseline-iterations", type=int, default=150)
    p.add_argument("--calibrate", action="store_true",
                   help="fit the confidence on these (held-out!) cases and write MODEL.calibration.json")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--baseline-size", type=int, default=96, help="image rows = cols the intensity baseline renders")
    p.add_argument("--baseline-spacing", type=float, default=2.0, help="CT voxel size (mm) the baseline renders")


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        k, n = -1, 0
    if not 0 <= k < n:
        raise InputError("--shard", f"is {text!r}", "K/N with 0 <= K < N")
    return k, n


def _models(args) -> dict[str, Path]:
    models = {"main": Path(args.model)} if args.model else {}
    for item in args.ablation:
        key, _, path = item.partition("=")
        if not path:
            raise InputError("--ablation", f"'{item}'", "KEY=MODEL.pt")
        models[key] = Path(path)
    for key, path in models.items():
        if not path.exists():
            raise InputError(path, "model file not found", f"a model for '{key}' made with 'sphericalreg train'")
    return models


def main(args) -> int:
    set_threads(args.threads)
    if args.calibrate:
        _calibration_target(args)  # refuse before the run, not after it
    with flags_for_fields(FLAGS):
        if args.merge:
            result = merge(args.merge, args.out, overwrite=args.overwrite)
        else:
            if not args.cases:
                raise InputError("cases", "missing", "a folder of simulated cases (or --merge DIR ...)")
            methods = [m.strip() for m in args.methods.split(",") if m.strip()]
            for parent in dict.fromkeys(DERIVED[m][0] for m in methods if m in DERIVED):
                if parent not in methods:  # a derived row comes from a stage of its parent's run
                    methods.insert(0, parent)
            result = evaluate(args.cases, _models(args), methods, args.out, limit=args.limit,
                              shard=_shard(args.shard), overwrite=args.overwrite, device=resolve_device(args.device),
                              baseline_kwargs={"iterations": args.baseline_iterations,
                                               "image_size": args.baseline_size,
                                               "spacing_mm": args.baseline_spacing})
        print((Path(args.out) / "results.md").read_text())
        if args.calibrate:
            _write_calibration(result["rows"], args)
    return 0


def _calibration_target(args) -> Path:
    if not args.model:
        raise InputError("--calibrate", "needs --model", "the model whose confidence to calibrate")
    target = calibration_path(args.model)
    if target.exists() and not args.overwrite:
        raise InputError(target, "already exists", "--overwrite to replace the calibration")
    return target


def _write_calibration(rows, args) -> None:
    target = _calibration_target(args)
    cal = fit_confidence(rows)
    cal["cases_dir"] = str(args.cases or " + ".join(args.merge))
    write_json(target, cal, overwrite=True)
    print(f"confidence calibration ({cal['cases']} runs, {cal['positives']} sub-mm) written to {target}")
