"""Where a registration's time goes, iteration by iteration: every LM stage's cost, whether the step
was accepted, the damping and the seconds the iteration took, then the stages' totals.

    python benchmarks/lm_trace.py CASE [--threads N] [--model M] [--variant V]

``--variant``: the options of one of ``intensity_ab.py``'s variants (default ``base``, the
defaults); ``previous`` is the code before the thirteenth session (exact Jacobians, no step
doubling, the search at the renderer's full sampling).
"""
import argparse
import time

import torch
from intensity_ab import options

from SphericalRegLib.confidence import load_calibration
from SphericalRegLib.io import read_case
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar
from SphericalRegLib.register import stages

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("case")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--model", default="Resources/Models/chest_example.pt")
p.add_argument("--variant", default="base")
args = p.parse_args()
torch.set_num_threads(args.threads)

case = read_case(args.case)
registrar = Registrar(load_model(args.model, case.ct), case.ct, options(args.variant), load_calibration(args.model))
levenberg_marquardt = stages.levenberg_marquardt


def traced(residual_fn, pose0, **kwargs):
    inner, last = kwargs.get("callback"), [time.perf_counter()]

    def callback(k, entry):
        now = time.perf_counter()
        print(f"  {k:2d} cost {float(entry['cost'][0]):.7g} {'accepted' if bool(entry['accepted'][0]) else 'rejected'}"
              f" damping {float(entry['damping'][0]):.2e} {now - last[0]:.3f} s", flush=True)
        last[0] = now
        return inner(k, entry) if inner else None

    kwargs["callback"] = callback
    result = levenberg_marquardt(residual_fn, pose0, **kwargs)
    print(f" LM: {int(result.iterations[0])} iterations, converged {bool(result.converged[0])}", flush=True)
    return result


stages.levenberg_marquardt = traced
t0 = time.perf_counter()
result = registrar.register(case.xray, case.camera, None, photometric=case.reading["photometric"])
total = time.perf_counter() - t0
parts = {name: round(stage.seconds, 2) for name, stage in result.stages.items()}
print(f"total {total:.2f} s: {parts}, the rest (final images, uncertainty, confidence) "
      f"{total - sum(parts.values()):.2f} s")
