"""What the reader's field misses cost: each case registered with the simulator's true exposed field
(shutters and iris, from the truth file) ANDed into the field the reader found, as the default
pipeline would otherwise register it. Compare with the same cases run by benchmarks/intensity_ab.py.

    python benchmarks/field_oracle.py THREADS OUT.jsonl CASE [CASE ...]
"""
import json
import sys
import time
import warnings
from pathlib import Path

import torch

from SphericalRegLib.confidence import load_calibration
from SphericalRegLib.evaluation.rows import errors
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar

sys.path.insert(0, str(Path(__file__).resolve().parent))
from field_detection import use_true_field  # noqa: E402

M = "Resources/Models/chest_example.pt"


def main():
    torch.set_num_threads(int(sys.argv[1]))
    warnings.simplefilter("ignore")
    out, registrar = open(sys.argv[2], "a"), None
    for case_dir in map(Path, sys.argv[3:]):
        meta = json.loads((case_dir.parent / f"{case_dir.name}.truth.json").read_text())["physics"][0]
        case = read_case(case_dir)
        truth, landmarks = read_truth(case_dir)
        use_true_field(meta, torch.as_tensor(case.xray).shape)
        registrar = registrar or Registrar(load_model(M, case.ct), case.ct, None, load_calibration(M))
        t0 = time.perf_counter()
        result = registrar.register(case.xray, case.camera, **case.reading)
        err = errors(result.camera_from_world.to(torch.float64), truth, landmarks, case.camera)
        row = dict(case=f"{case_dir.parent.name}_{case_dir.name}", variant="true_field", mtre=err["mTRE"],
                   depth=err["depth"], inplane=err["inplane"], confidence=result.confidence,
                   seconds=time.perf_counter() - t0)
        out.write(json.dumps(row) + "\n")
        out.flush()
        print(row, flush=True)


if __name__ == "__main__":
    main()
