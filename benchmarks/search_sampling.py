"""The translation search from the regressor's start at fractions of the renderer's samples per ray:
which candidate it keeps, its mTRE and its time, per case.

    python benchmarks/search_sampling.py CASES [CASES ...]

One thread. A fraction changes the search only where the kept candidate differs from full sampling's.
"""
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from SphericalRegLib.evaluation.rows import errors
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar, RegisterOptions
from SphericalRegLib.register.stages import initial_pose, translation_search

torch.set_num_threads(1)
MODEL = "Resources/Models/chest_example.pt"
FRACTIONS = (1.0, 0.5, 0.25)
registrars = {}
for folder in map(Path, sys.argv[1:]):
    for case_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        case = read_case(case_dir)
        truth, landmarks = read_truth(case_dir)
        line, kept = [], []
        for fraction in FRACTIONS:
            if fraction not in registrars:
                options = RegisterOptions()
                options.search_level = replace(options.search_level, ray_samples=fraction)
                registrars[fraction] = Registrar(load_model(MODEL, case.ct), case.ct, options)
            ctx = registrars[fraction].context(case.xray, case.camera)
            start = initial_pose(ctx).pose
            t0 = time.perf_counter()
            record = translation_search(ctx, {"initial": start})
            seconds = time.perf_counter() - t0
            kept.append(record.pose)
            mtre = errors(record.pose, truth, landmarks, case.camera)["mTRE"]
            line.append(f"x{fraction}: {mtre:6.1f} mm {seconds:4.2f} s {'same' if torch.allclose(record.pose, kept[0]) else 'OTHER'}")
        print(folder.name, case_dir.name, " | ".join(line), flush=True)
