"""The final pose's uncertainty from LM's own last linearisation against six fresh derivative passes.

    python benchmarks/uncertainty_reuse.py THREADS CASES [CASES ...]

Registers each case with the defaults (shipped model unless ``MODEL=path``), the reuse allowed
whatever LM's last Jacobian was, and computes the uncertainty at the final pose both ways: the
relative difference of each standard deviation, and whether LM's last Jacobian was exact or
Broyden-updated. One line per case; the largest at the end.
"""
import copy
import os
import sys
from pathlib import Path

import torch

from SphericalRegLib.confidence import load_calibration
from SphericalRegLib.io import read_case
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar

model_path = os.environ.get("MODEL", "Resources/Models/chest_example.pt")
torch.set_num_threads(int(sys.argv[1]))
original = Registrar._uncertainty
pairs = []


def both(self, ctx, level, pose, views, linearisation=None):
    out = original(self, ctx, level, pose, views, linearisation)
    if linearisation is not None:
        fresh = original(self, ctx, level, pose, copy.deepcopy(views), None)
        pairs.append((out[1], fresh[1]))
    return out


def any_linearisation(ctx, stages, pose):
    record = stages.get("intensity")
    if ctx.n_views > 1 or record is None or record.linearisation is None:
        return None
    return record.linearisation[0][None], record.linearisation[1][None]


Registrar._uncertainty = both
Registrar._final_linearisation = staticmethod(any_linearisation)
worst = {}
for folder in sys.argv[2:]:
    for case_dir in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        case = read_case(case_dir)
        registrar = Registrar(load_model(model_path, case.ct), case.ct, calibration=load_calibration(model_path))
        n = len(pairs)
        result = registrar.register(case.xray, case.camera, photometric=case.reading["photometric"])
        if len(pairs) == n:
            print(f"{case_dir}: no reuse (diverged {result.diverged})", flush=True)
            continue
        reused, fresh = pairs[-1]
        exact = result.stages["intensity"].linearisation[2]
        diffs = {k: abs(reused[k] - fresh[k]) / abs(fresh[k]) for k in fresh
                 if isinstance(fresh[k], float) and fresh[k]}
        for k, v in diffs.items():
            worst[k] = max(worst.get(k, 0.0), v)
        print(f"{case_dir}: exact {exact} " + " ".join(f"{k} {fresh[k]:.3g}->{reused[k]:.3g}" for k in diffs),
              flush=True)
print("largest relative difference:", {k: f"{v:.2e}" for k, v in worst.items()})
