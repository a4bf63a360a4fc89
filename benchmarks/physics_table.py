"""The table of docs/results.md, "X-ray physics", from runs/phys_eval/*/cases.csv
(benchmarks/physics_benchmark.sh): per run folder and method, SMSR (mTRE < 1 mm), median and p95
mTRE, gross failures (mTRE > 5 mm or mPE > 2 mm) with their confidence.

    .venv/bin/python benchmarks/physics_table.py [runs/phys_eval]
"""

import csv
import sys
from pathlib import Path

import numpy as np


def main(root="runs/phys_eval"):
    print("| run | method | cases | SMSR | median mTRE | p95 mTRE | gross failures (confidence) | diverged |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    groups = {}  # <preset>_b (cases 3-5, benchmarks/physics_benchmark.sh second) joins <preset>
    for path in sorted(Path(root).glob("*/cases.csv")):
        name = path.parent.name
        key = name.replace("_b_", "_").removesuffix("_b") if "_b" in name else name
        groups.setdefault(key, []).extend(csv.DictReader(open(path)))
    for name, rows in sorted(groups.items()):
        for method in dict.fromkeys(r["method"] for r in rows):
            rs = [r for r in rows if r["method"] == method]
            e = np.array([float(r["mTRE"]) for r in rs])
            gross = [r for r in rs if float(r["mTRE"]) > 5 or float(r["mPE"]) > 2]
            conf = ", ".join(f"{float(r['confidence']):.2f}" if r["confidence"] else "-" for r in gross)
            diverged = sum(r["diverged"] == "True" for r in rs)
            print(f"| {name} | {method} | {len(rs)} | {100 * np.mean(e < 1):.0f}% | {np.median(e):.2f} | "
                  f"{np.percentile(e, 95):.1f} | {len(gross)}{f' ({conf})' if gross else ''} | {diverged} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
