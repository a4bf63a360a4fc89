"""Is a missed registration a biased cost or an optimiser stopped short? The cost of the search
level and of each intensity level at the truth and at the registration's result.

    python benchmarks/cost_at_truth.py CASES EVALUATION/ours [--model M]

CASES: a folder of simulated cases; EVALUATION/ours: the `ours` folder that `sphericalreg evaluate`
wrote for them (one result.json per case). Where the truth costs less than the result at the finest
level, the minimum was there to be found (docs/results.md, eleventh session).
"""
import sys, json
from pathlib import Path
import torch
from SphericalRegLib.io import read_case, read_truth, read_pose
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar
torch.set_num_threads(1)
M = sys.argv[sys.argv.index("--model") + 1] if "--model" in sys.argv else "Resources/Models/chest_example.pt"
cases, results = Path(sys.argv[1]), Path(sys.argv[2])
reg = None
for cd in sorted(p for p in cases.iterdir() if p.is_dir()):
    case = read_case(cd); truth, _ = read_truth(cd)
    res = read_pose(results / cd.name / "result.json").to(torch.float64)
    reg = reg or Registrar(load_model(M, case.ct), case.ct)
    ctx = reg.context(case.xray, case.camera, photometric=case.reading["photometric"])
    P = torch.stack([truth.to(torch.float64), res])
    out = []
    with torch.no_grad():
        for lv in (reg.options.search_level, *reg.options.refine_levels):
            c = 0.5 * ctx.intensity_residual(lv)(P).pow(2).sum(-1)
            out.append(f"{lv.image_size}px truth {float(c[0]):.4f} result {float(c[1]):.4f}")
    print(cd.name, " | ".join(out), flush=True)
