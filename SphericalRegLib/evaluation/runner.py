"""Run methods on simulated cases (``evaluate``) and put several runs back into one table (``merge``).

Every method starts where the conventions say: ours from its regressor (or, as ``ours-init``, from
the case's init.json, the peers' starting pose), the DiffPose-style peer from init.json. Two rows
come free from ``ours``' stages: the regressor alone and the learnt similarity without the
intensity stage. Per case and method, the answer is written as ``result.json`` under ``out``.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import time
from pathlib import Path

import torch

from ..errors import InputError
from ..io import read_case, read_json, read_truth, write_json
from ..metrics import mtre
from ..register import RegistrationResult
from .methods import DERIVED, METHODS, Method, far_start
from .report import report
from .rows import Row, read_rows

__all__ = ["evaluate", "merge", "case_folders"]


def _hardware() -> str:
    try:
        model = subprocess.run(["lscpu"], capture_output=True, encoding="utf-8", errors="replace").stdout
        name = next((l.split(":", 1)[1].strip() for l in model.splitlines() if l.startswith("Model name")), "")
    except OSError:
        name = platform.processor()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{name or platform.machine()}, {torch.get_num_threads()} torch threads{gpu}"


class _Runner:
    """Prepares each (model, CT) once and runs every method on a case the same way."""

    def __init__(self, models: dict, baseline_kwargs: dict, device="cpu"):
        self.models = models
        self.baseline_kwargs = baseline_kwargs
        self.device = device
        self._prepared = {}

    def _key(self, ct):
        from ..checkpoint import ct_fingerprint

        return json.dumps(ct_fingerprint(ct), sort_keys=True)

    def _registrar(self, method: Method, ct):
        from ..confidence import load_calibration
        from ..model import load_model
        from ..register import Registrar, RegisterOptions

        key = (method.model, method.optimizer, method.learnt_stage, method.refine, self._key(ct))
        if key not in self._prepared:
            path = self.models[method.model]
            options = RegisterOptions(optimizer=method.optimizer, learnt_stage=method.learnt_stage, refine=method.refine)
            self._prepared[key] = Registrar(load_model(path, ct, self.device), ct, options, load_calibration(path))
        return self._prepared[key]

    def _baseline(self, ct):
        from ..baselines import DiffPoseNCC

        key = ("baseline", self._key(ct))
        if key not in self._prepared:
            self._prepared[key] = DiffPoseNCC(**self.baseline_kwargs, device=self.device).prepare(ct)
        return self._prepared[key]

    def run(self, method: Method, case, init) -> RegistrationResult:
        if method.model is not None:
            return self._registrar(method, case.ct).register(case.xray, case.camera, init, **case.reading,
                                                             other_views=case.views[1:method.views])
        record = self._baseline(case.ct).register(case.xray, case.camera, init, case.reading["photometric"])
        return RegistrationResult(camera_from_world=record.pose, seconds=record.seconds, similarity=math.nan,
                                  iterations=record.iterations, confidence=None, diverged=record.diverged,
                                  camera=case.camera, stages={"optimizer": record})


def case_folders(cases_dir: Path) -> list[Path]:
    """The case folders under ``cases_dir`` that have a ``<case>.truth.json`` beside them."""
    cases = sorted(p for p in cases_dir.iterdir() if p.is_dir() and (p.parent / f"{p.name}.truth.json").exists())
    if not cases:
        raise InputError(cases_dir, "holds no case folders with a <case>.truth.json beside them",
                         "the output of 'sphericalreg simulate'")
    return cases


def _start(method: Method, name: str, case, folder: Path):
    if not method.needs_init:
        return None
    if case.init is None:
        raise InputError(folder / "init.json", "not found", f"a starting pose for method '{name}'")
    return far_start(folder.name, case.init, case.camera) if method.init == "far" else case.init


def evaluate(cases_dir, models: dict, methods, out, *, limit=None, shard=(0, 1), overwrite=False,
             baseline_kwargs=None, device="cpu", log=print) -> dict:
    """Run ``methods`` on every case folder under ``cases_dir``; write tables and plots to ``out``.

    ``shard=(k, n)`` takes every n-th case from the k-th, so n processes share the work; :func:`merge`
    puts their outputs back into one table."""
    cases_dir, out = Path(cases_dir), Path(out)
    cases = case_folders(cases_dir)
    cases = cases[:limit] if limit else cases
    cases = cases[shard[0]::shard[1]]
    unknown = [m for m in methods if m not in METHODS and m not in DERIVED]
    if unknown:
        raise InputError("methods", f"unknown {unknown}", ", ".join([*METHODS, *DERIVED]))
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
        for name in runnable:
            method = METHODS[name]
            result = runner.run(method, case, _start(method, name, case, folder))
            write_json(out / name / folder.name / "result.json", result.to_json(), overwrite=True)
            for derived, (parent, stage) in DERIVED.items():
                if parent == name and stage in result.stages and derived in methods:
                    rows.append(Row.from_stage(derived, folder.name, result.stages[stage], truth, landmarks,
                                               result.camera))
            row = Row.from_result(name, folder.name, result, truth, landmarks)
            rows.append(row)
            curve = result.stages.get("similarity") or result.stages.get("optimizer")
            if curve is not None and curve.poses:
                curves.setdefault(name, []).append(
                    {"cost": curve.cost, "mTRE": [float(mtre(p, truth, landmarks)) for p in curve.poses]})
            log(f"[{i + 1}/{len(cases)}] {folder.name} {name}: mTRE {row.mTRE:.2f} mm, {row.seconds:.1f} s"
                + (f", confidence {row.confidence:.2f}" if row.confidence is not None else ""))
    names = [m for m in methods if m in runnable or m in DERIVED]
    info = {"cases_dir": str(cases_dir), "cases": len(cases), "models": {k: str(v) for k, v in models.items()},
            "hardware": _hardware(), "device": str(device), "baseline": baseline_kwargs or {}, "skipped": skipped,
            "wall_seconds": time.perf_counter() - t_start, "methods": names}
    return report(out, rows, curves, info)


def merge(inputs, out, overwrite=False) -> dict:
    """One table from several evaluation folders (shards or method groups) of the same cases."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(out, "is not empty", "a new output folder, or --overwrite")
    rows, curves, infos = [], {}, []
    for folder in map(Path, inputs):
        if not (folder / "cases.csv").exists():
            raise InputError(folder, "holds no cases.csv", "an output folder of 'sphericalreg evaluate'")
        own = read_rows(folder / "cases.csv")
        rows += own
        if (folder / "curves.json").exists():  # absent in folders written before curves were saved
            for name, runs in read_json(folder / "curves.json", "curves of 'sphericalreg evaluate'").items():
                curves.setdefault(name, []).extend(runs)
        info = read_json(folder / "info.json", "the info.json of 'sphericalreg evaluate'")
        info.setdefault("methods", list(dict.fromkeys(r.method for r in own)))
        infos.append(info)
    out.mkdir(parents=True, exist_ok=True)
    methods = list(dict.fromkeys(m for i in infos for m in i["methods"]))
    info = {"cases_dir": " + ".join(sorted({i["cases_dir"] for i in infos})),
            "cases": len({r.case for r in rows}), "models": {k: v for i in infos for k, v in i["models"].items()},
            "hardware": infos[0]["hardware"], "skipped": {k: v for i in infos for k, v in i["skipped"].items()},
            "wall_seconds": sum(i["wall_seconds"] for i in infos), "methods": methods,
            "baseline": next((i["baseline"] for i in infos if "diffpose-ncc" in i["methods"] and i.get("baseline")),
                             {}),
            "merged_from": [str(p) for p in inputs]}
    return report(out, rows, curves, info)
