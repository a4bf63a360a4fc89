"""Where a registration's time goes, iteration by iteration: every LM stage's cost, whether the step
was accepted, the damping and the seconds the iteration took, then the stages' totals.

    python benchmarks/lm_trace.py CASE_OR_FOLDER [...] [--threads N] [--model M] [--variant V] [--out OUT.jsonl]

``--variant``: the options of one of ``intensity_ab.py``'s variants (default ``base``, the
defaults); ``previous`` is the code before the thirteenth session (exact Jacobians, no step
doubling, the search at the renderer's full sampling). ``--out``: one JSON line per case with every
LM call (``cap``, its iteration cap, tells the levels apart) and per iteration its seconds, whether
it was accepted, the damping, the cost and the landmarks' mean displacement (mm) to the call's final
pose, to the registration's answer and to the truth: how far a level ends from where the next one
does, and how many seconds it spends on its last millimetres.
"""
import argparse
import json
import time
from pathlib import Path

import torch
from intensity_ab import options

from SphericalRegLib.confidence import load_calibration
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.metrics import mtre
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar
from SphericalRegLib.register import stages

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("cases", nargs="+", help="case folders, or folders of them")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--model", default="Resources/Models/chest_example.pt")
p.add_argument("--variant", default="base")
p.add_argument("--out", default=None)
args = p.parse_args()
torch.set_num_threads(args.threads)

levenberg_marquardt = stages.levenberg_marquardt
calls = []


def traced(residual_fn, pose0, **kwargs):
    inner, times = kwargs.get("callback"), [time.perf_counter()]

    def callback(k, entry):
        times.append(time.perf_counter())
        if args.out is None:
            print(f"  {k:2d} cost {float(entry['cost'][0]):.7g} "
                  f"{'accepted' if bool(entry['accepted'][0]) else 'rejected'} damping "
                  f"{float(entry['damping'][0]):.2e} {times[-1] - times[-2]:.3f} s", flush=True)
        return inner(k, entry) if inner else None

    kwargs["callback"] = callback
    result = levenberg_marquardt(residual_fn, pose0, **kwargs)
    calls.append((kwargs.get("max_iters"), result, times))
    if args.out is None:
        print(f" LM: {int(result.iterations[0])} iterations, converged {bool(result.converged[0])}", flush=True)
    return result


def record(case_dir: Path, answer: torch.Tensor) -> dict:
    """The calls' iterations with each pose's distance to the call's end, the answer and the truth."""
    truth, landmarks = read_truth(case_dir)
    truth, landmarks = truth.to(torch.float64), landmarks.to(torch.float64)
    rows = []
    for cap, result, times in calls:
        end = result.pose[0].to(torch.float64)
        its = []
        for k, entry in enumerate(result.history[1:], 1):
            P = entry["pose"][0].to(torch.float64)
            its.append(dict(seconds=round(times[k] - times[k - 1], 3), accepted=bool(entry["accepted"][0]),
                            damping=float(entry["damping"][0]), cost=float(entry["cost"][0]),
                            to_end=float(mtre(P, end, landmarks)), to_answer=float(mtre(P, answer, landmarks)),
                            to_truth=float(mtre(P, truth, landmarks))))
        rows.append(dict(cap=cap, iterations=its))
    return dict(mtre=float(mtre(answer, truth, landmarks)), calls=rows)


stages.levenberg_marquardt = traced
folders = [Path(c) for c in args.cases]
case_dirs = [f for f in folders if any(f.glob("xray.*"))]
case_dirs += [c for f in folders if f not in case_dirs for c in sorted(f.iterdir()) if c.is_dir()]
registrar = None
out = open(args.out, "a") if args.out else None
for case_dir in case_dirs:
    case = read_case(case_dir)
    registrar = registrar or Registrar(load_model(args.model, case.ct), case.ct, options(args.variant),
                                       load_calibration(args.model))
    calls.clear()
    t0 = time.perf_counter()
    result = registrar.register(case.xray, case.camera, None, **case.reading, other_views=case.views[1:])
    total = time.perf_counter() - t0
    parts = {name: round(stage.seconds, 2) for name, stage in result.stages.items()}
    print(f"{case_dir}: total {total:.2f} s: {parts}, the rest (final images, uncertainty, confidence) "
          f"{total - sum(parts.values()):.2f} s", flush=True)
    if out is not None:
        row = dict(folder=case_dir.parent.name, case=case_dir.name, variant=args.variant, seconds=round(total, 2),
                   **record(case_dir, result.camera_from_world.to(torch.float64)))
        out.write(json.dumps(row) + "\n")
        out.flush()
