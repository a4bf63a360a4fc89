"""Which signals make the confidence: fit Platt scaling on one evaluation table, rank another.

    python benchmarks/confidence_signals.py FIT/cases.csv HELD_OUT/cases.csv [--write MODEL.calibration.json]

Prints, per signal set, the AUROC on the held-out table for mTRE < 1 mm and for gross failures
(mTRE > 5 mm or mPE > 2 mm), and the confidence each gross failure got. ``--write`` puts the
default set's fit into a calibration file, keeping the file's uncertainty_scale.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from SphericalRegLib.confidence import DEFAULT_SIGNALS, predict
from SphericalRegLib.evaluation.calibration import CALIBRATION_METHODS, fit_confidence, signal_values
from SphericalRegLib.evaluation.rows import read_rows

from confidence_presets import auroc, gross  # the same script folder

SETS = [("final NCC", "log similarity cost"), ("log(1 - final NCC)", "log similarity cost"),
        ("log(1 - final NCC)", "log in-plane sd"), DEFAULT_SIGNALS]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("fit")
    parser.add_argument("held_out")
    parser.add_argument("--write")
    args = parser.parse_args()
    usable = lambda rows: [r for r in rows if r.method in CALIBRATION_METHODS and r.final_ncc is not None
                           and r.cost is not None and r.diverged is False]
    train, test = usable(read_rows(Path(args.fit))), usable(read_rows(Path(args.held_out)))
    print(f"fit on {len(train)} runs ({sum(r.mTRE < 1 for r in train)} sub-mm), held out {len(test)} runs "
          f"({sum(r.mTRE < 1 for r in test)} sub-mm, {sum(gross(r) for r in test)} gross)")
    for signals in SETS:
        cal = fit_confidence(train, signals=signals)
        p = [predict(cal, signal_values(r)) for r in test]
        worst = ", ".join(f"{r.case} {r.method} {r.mTRE:.1f} mm: {q:.2f}" for r, q in zip(test, p) if gross(r))
        print(f"{' + '.join(signals)}: AUROC {auroc(p, [r.mTRE < 1 for r in test]):.3f} (< 1 mm), "
              f"{auroc(p, [not gross(r) for r in test]):.3f} (gross); gross failures scored {worst or 'none'}")
    if args.write:
        path = Path(args.write)
        old = json.loads(path.read_text()) if path.exists() else {}
        cal = fit_confidence(train)
        cal["cases_dir"] = args.fit
        if "uncertainty_scale" in old:
            cal["uncertainty_scale"] = old["uncertainty_scale"]
        path.write_text(json.dumps(cal, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
