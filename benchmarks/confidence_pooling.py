"""A freshly trained model's confidence: fitted on its own few end-of-training runs, on reference
runs of other CTs and models, or on both; scored on held-out cases of its CT (leave one CT out).

    python benchmarks/confidence_pooling.py SPEC.json

SPEC: ``{"CT name": {"own": [cases.csv, ...], "reference": [cases.csv, ...],
"test": {"preset": cases.csv, ...}}, ...}``. ``own``: the model's end-of-training calibration
runs (``calibrate_model``'s cases, kept); ``reference``: tuning runs of that CT, which enter the
fits of the *other* CTs only; ``test``: held-out report cases. Prints, per CT and design, over the
test runs of ``ours`` and ``ours-far``: AUROC for mTRE < 1 mm and for no gross failure, the gross
failures scored >= 0.3 (the highest score among them; each such failure: mTRE/mPE, score), and the median confidence of the
sub-millimetre runs (what a surgeon is shown when it worked).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from SphericalRegLib.confidence import predict
from SphericalRegLib.evaluation.calibration import CALIBRATION_METHODS, fit_confidence, signal_values
from SphericalRegLib.evaluation.rows import read_rows

from confidence_presets import auroc, gross

DESIGNS = {
    "own (NCC, cost, in-plane sd)": (("own",), ("log(1 - final NCC)", "log similarity cost", "log in-plane sd")),
    "own (NCC, in-plane sd, depth sd)": (("own",), ("log(1 - final NCC)", "log in-plane sd", "log depth sd")),
    "reference (NCC, in-plane sd)": (("reference",), ("log(1 - final NCC)", "log in-plane sd")),
    "reference (NCC, in-plane sd, depth sd)": (("reference",), ("log(1 - final NCC)", "log in-plane sd", "log depth sd")),
    "own + reference (NCC, in-plane sd)": (("own", "reference"), ("log(1 - final NCC)", "log in-plane sd")),
    "own + reference (NCC, in-plane sd, depth sd)": (("own", "reference"),
                                                     ("log(1 - final NCC)", "log in-plane sd", "log depth sd")),
    "own + reference (residual shift)": (("own", "reference"), ("log residual shift",)),
    "own + reference (NCC, residual shift)": (("own", "reference"), ("log(1 - final NCC)", "log residual shift")),
    "own + reference (NCC, in-plane sd, depth sd, residual shift)": (
        ("own", "reference"), ("log(1 - final NCC)", "log in-plane sd", "log depth sd", "log residual shift")),
}


def runs(paths) -> list:
    return [r for p in paths for r in read_rows(Path(p)) if r.method in CALIBRATION_METHODS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec")
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    print("| CT | design | fitted on (runs, sub-mm) | test runs | AUROC < 1 mm | AUROC not gross | gross >= 0.3 "
          "(highest) | median confidence, sub-mm runs |\n|---|---|---|---:|---:|---:|---|---:|")
    for ct, parts in spec.items():
        pools = {"own": runs(parts["own"]),
                 "reference": runs([p for other, o in spec.items() if other != ct for p in o["reference"]])}
        test = [r for path in parts["test"].values() for r in runs([path])]
        for design, (sources, signals) in DESIGNS.items():
            train = [r for s in sources for r in pools[s] if r.final_ncc is not None and not r.diverged]
            calibration = fit_confidence(train, signals=signals)
            scores = [0.0 if r.diverged else predict(calibration, signal_values(r)) for r in test]
            scored = [(s, r) for s, r in zip(scores, test) if s is not None]
            sub = [s for s, r in scored if r.mTRE < 1]
            bad = [s for s, r in scored if gross(r)]
            named = "; ".join(f"{r.case} {r.method} {r.mTRE:.1f}/{r.mPE:.1f} mm: {s:.2f}"
                              for s, r in scored if gross(r) and s >= 0.3)
            print(f"| {ct} | {design} | {calibration['cases']}, {calibration['positives']} | {len(scored)} | "
                  f"{auroc([s for s, _ in scored], [r.mTRE < 1 for _, r in scored]):.3f} | "
                  f"{auroc([s for s, _ in scored], [not gross(r) for _, r in scored]):.3f} | "
                  f"{sum(s >= 0.3 for s in bad)} of {len(bad)} ({max(bad, default=0):.2f}{'; ' + named if named else ''}) | "
                  f"{statistics.median(sub) if sub else float('nan'):.2f} |")


if __name__ == "__main__":
    main()
