"""The two-view table from the per-case result.json of evaluation folders, also of runs still going.

    python benchmarks/multiview_table.py CASES EVAL [EVAL ...]

For every case with both an ``ours-1view`` and an ``ours`` result: the summary row of each, the
paired depth errors, how often the stated (calibrated) depth sd covers the error, and the depth sd
of view 0 alone against the joint one. The cases were written by
``sphericalreg simulate --views 2`` and registered by
``sphericalreg evaluate CASES --methods ours-1view,ours``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

from SphericalRegLib.camera import Camera
from SphericalRegLib.evaluation.rows import errors
from SphericalRegLib.io import read_truth
from SphericalRegLib.metrics import summarise


def main() -> None:
    cases, evals = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    found = {}
    for folder in evals:
        for path in folder.glob("*/case_*/result.json"):
            found.setdefault(path.parent.name, {})[path.parent.parent.name] = json.loads(path.read_text())
    paired = sorted(name for name, runs in found.items() if {"ours", "ours-1view"} <= set(runs))
    rows = {"ours-1view": [], "ours": []}
    for name in paired:
        truth, landmarks = read_truth(cases / name)
        camera = Camera.load(cases / name / "geometry.json")
        for method in rows:
            r = found[name][method]
            e = errors(torch.tensor(r["camera_from_world"], dtype=torch.float64), truth, landmarks, camera)
            rows[method].append({**e, "seconds": r["seconds"], "diverged": r["diverged"], "confidence": r["confidence"],
                                 "uncertainty": r["uncertainty"], "per_view": r.get("per_view")})
    print(f"{len(paired)} cases with both methods")
    print("| method | cases | SMSR | median mTRE | 75% | 95% | median mPE | median depth err | median in-plane err "
          "| median time (s) | diverged |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for method, rs in rows.items():
        s = summarise(method, [r["mTRE"] for r in rs], [r["mPE"] for r in rs], [r["depth"] for r in rs],
                      [r["inplane"] for r in rs], [r["seconds"] for r in rs], sum(r["diverged"] for r in rs))
        print(f"| {method} | {s['cases']} | {s['SMSR']:.1%} | {s['median_mTRE']:.3f} | {s['p75_mTRE']:.3f} | "
              f"{s['p95_mTRE']:.3f} | {s['median_mPE']:.3f} | {s['median_depth_err']:.3f} | "
              f"{s['median_inplane_err']:.3f} | {s['median_seconds']:.1f} | {s['failures']} |")
    for method, rs in rows.items():
        ok = [r for r in rs if r["uncertainty"]]
        within = [sum(r["depth"] <= k * r["uncertainty"]["depth_sd_mm"] for r in ok) for k in (1, 2)]
        print(f"{method}: depth error within 1 / 2 stated sd in {within[0]}/{len(ok)} / {within[1]}/{len(ok)}; "
              f"median stated depth sd {statistics.median(r['uncertainty']['depth_sd_mm'] for r in ok):.3f} mm")
    joint = [r for r in rows["ours"] if r["per_view"] and r["uncertainty"]]
    if joint:
        alone = statistics.median(r["per_view"][0]["uncertainty"]["depth_sd_mm"] for r in joint)
        both = statistics.median(r["uncertainty"]["depth_sd_mm"] for r in joint)
        print(f"depth sd at the CT centre (median): view 0 alone {alone:.3f} mm, both views {both:.3f} mm")
    worse = sum(b["mTRE"] > a["mTRE"] for a, b in zip(rows["ours-1view"], rows["ours"]))
    print(f"the joint result is worse than view 0's alone in {worse}/{len(paired)} cases; "
          f"time ratio (median of per-case ratios) "
          f"{statistics.median(b['seconds'] / a['seconds'] for a, b in zip(rows['ours-1view'], rows['ours'])):.2f}")
    gross = [(n, round(r["mTRE"], 2), r["confidence"]) for n, r in zip(paired, rows["ours"]) if r["mTRE"] > 1]
    print("joint results over 1 mm (case, mTRE, confidence):", gross or "none")


if __name__ == "__main__":
    main()
