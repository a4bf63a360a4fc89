"""Which simulated X-rays `register` warns about as undewarped image-intensifier frames.

    python benchmarks/round_field_warning.py CASES [CASES ...] --model Resources/Models/chest_example.pt

Prints, per case, the iris and pincushion the simulator drew (case_XXX.truth.json) and whether the
Registrar's round-field warning fires, without registering.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from SphericalRegLib.io import read_case
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    registrar = None  # the cases share one CT: its attenuation per level is prepared once
    print("| case | iris | pincushion | warned |\n|---|---:|---:|---|")
    for folder in map(Path, args.cases):
        for case_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            case = read_case(case_dir)
            registrar = registrar or Registrar(load_model(args.model, case.ct), case.ct)
            drawn = json.loads((folder / f"{case_dir.name}.truth.json").read_text()).get("physics") or [{}]
            physics = drawn[0].get("physics", {})
            ctx = registrar.context(case.xray, case.camera, photometric=case.reading["photometric"])
            warned = bool(registrar._distortion_warnings(ctx))
            print(f"| {folder.name}/{case_dir.name} | {physics.get('iris', 0):.2f} | "
                  f"{physics.get('pincushion', 0):.3f} | {'yes' if warned else 'no'} |")


if __name__ == "__main__":
    main()
