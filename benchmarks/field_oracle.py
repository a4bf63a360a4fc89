"""What the reader's field misses cost: each case registered with the simulator's true exposed field
(shutters and iris, from the truth file) ANDed into the field the reader found, as the default
pipeline would otherwise register it. Compare with the same cases run by benchmarks/intensity_ab.py.

    python benchmarks/field_oracle.py THREADS OUT.jsonl CASE [CASE ...]

``START=truth`` in the environment registers from the true pose with no translation search: where
the cost's minimum lies once the field is right, whatever the regressor does.
"""
import os
import json
import sys
import time
import warnings
from pathlib import Path

import torch

import SphericalRegLib.xray as xray
from SphericalRegLib.confidence import load_calibration
from SphericalRegLib.evaluation.rows import errors
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar, RegisterOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from field_detection import true_field  # noqa: E402

M = "Resources/Models/chest_example.pt"


def main():
    torch.set_num_threads(int(sys.argv[1]))
    warnings.simplefilter("ignore")
    read, truth_field = xray._read, {}

    def with_true_field(image, photometric, air, dark, encoding):
        L, field, unclipped = read(image, photometric, air, dark, encoding)
        return torch.where(truth_field["now"], L, torch.zeros_like(L)), field & truth_field["now"], unclipped

    xray._read = with_true_field
    out, registrar = open(sys.argv[2], "a"), None
    for case_dir in map(Path, sys.argv[3:]):
        meta = json.loads((case_dir.parent / f"{case_dir.name}.truth.json").read_text())["physics"][0]
        case = read_case(case_dir)
        truth, landmarks = read_truth(case_dir)
        truth_field["now"] = true_field(meta, *torch.as_tensor(case.xray).shape)
        from_truth = os.environ.get("START") == "truth"
        options = RegisterOptions(search_step_mm=0.0) if from_truth else None
        registrar = registrar or Registrar(load_model(M, case.ct), case.ct, options, load_calibration(M))
        t0 = time.perf_counter()
        result = registrar.register(case.xray, case.camera, truth if from_truth else None, **case.reading)
        err = errors(result.camera_from_world.to(torch.float64), truth, landmarks, case.camera)
        row = dict(case=f"{case_dir.parent.name}_{case_dir.name}", variant="true_field" + ("+truth" if from_truth else ""), mtre=err["mTRE"],
                   depth=err["depth"], inplane=err["inplane"], confidence=result.confidence,
                   seconds=time.perf_counter() - t0)
        out.write(json.dumps(row) + "\n")
        out.flush()
        print(row, flush=True)


if __name__ == "__main__":
    main()
