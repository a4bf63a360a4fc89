"""The confidence of joint registrations of several views: fitted on tuning evaluations, replayed on
report ones as the registrar would score them, and written as the ``joint`` part of a model's
calibration (:func:`SphericalRegLib.confidence.for_views`).

    python benchmarks/joint_calibration.py --fit EVAL [EVAL ...] --report EVAL [EVAL ...] \\
        [--signals "log residual shift"] [--write MODEL.calibration.json --source TEXT]

EVAL: a folder written by ``sphericalreg evaluate CASES --methods ours`` on cases of several views
(its ``cases.csv`` and ``ours/<case>/result.json``). The registrar scores every view with the joint
part and shows the lowest; a fit monotone in its signals gives the lowest score to the view whose
signals are worst, so each run is fitted on its worst view's (largest residual shift, lowest NCC,
widest sds). Printed per set: runs, sub-mm runs, AUROC for mTRE < 1 mm and for no gross failure
(mTRE > 5 mm or mPE > 2 mm), the highest score of a gross failure and of one over 5 mm, and the
scores of the sub-millimetre runs and of those 1-2 mm off.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from SphericalRegLib.confidence import DEFAULT_SIGNALS, confidence_values, fit, score
from SphericalRegLib.evaluation.rows import read_rows

from confidence_presets import auroc, gross


def joint_runs(folder: Path) -> list[tuple]:
    """``(row, [values of each view], the joint uncertainty)`` for every run of ``ours`` in an
    evaluation folder."""
    runs = []
    for row in read_rows(folder / "cases.csv"):
        if row.method != "ours":
            continue
        result = json.loads((folder / "ours" / row.case / "result.json").read_text())
        views = result.get("per_view") or []
        if len(views) < 2:
            continue
        runs.append((row, [confidence_values(v["final_ncc"], result["similarity"], v["uncertainty"],
                                             v["residual_shift_mm"], v.get("misaligned", False)) for v in views],
                     result["uncertainty"]))
    return runs


WORST = {"final_ncc": min, "cost": max, "inplane_sd": max, "depth_sd": max, "residual_shift": max}
"""How each raw value the signals read gets worse: every signal is monotone in one of them
(:data:`SphericalRegLib.confidence.BETTER_WHEN`)."""


def worst_view(values: list[dict]) -> dict:
    """Each raw value's worst over the views; None where a view lacks it."""
    worst = {}
    for key, pick in WORST.items():
        seen = [v.get(key) for v in values]
        worst[key] = None if None in seen else pick(seen)
    return worst


def fit_joint(runs, signals) -> dict:
    """A joint part fitted on the worst view of every run that did not diverge."""
    kept = [(row, worst_view(values)) for row, values, _ in runs if not row.diverged]
    return fit([v for _, v in kept], [row.mTRE < 1 for row, _ in kept], signals=signals)


def shown(calibration: dict, row, values: list[dict], uncertainty: dict | None) -> float:
    """What the registrar shows: 0 when diverged, else the lowest view's
    :func:`~SphericalRegLib.confidence.score` with the joint uncertainty (a view's ``misaligned``
    flag is in result.json's per-view entries; runs from before it have none)."""
    if row.diverged:
        return 0.0
    return min(score(calibration, v, uncertainty) for v in values)


def describe(name: str, calibration: dict, runs) -> None:
    scores = [shown(calibration, *run) for run in runs]
    rows = [row for row, _, _ in runs]
    sub = [f"{s:.2f}" for r, s in zip(rows, scores) if r.mTRE < 1]
    near = [f"{r.mTRE:.2f} mm: {s:.2f}" for r, s in zip(rows, scores) if 1 <= r.mTRE < 2]
    gross_scores = [s for r, s in zip(rows, scores) if gross(r)]
    far_scores = [s for r, s in zip(rows, scores) if r.mTRE > 5]
    print(f"| {name} | {len(rows)} | {sum(r.mTRE < 1 for r in rows)} "
          f"| {auroc(scores, [r.mTRE < 1 for r in rows]):.2f} | {auroc(scores, [not gross(r) for r in rows]):.2f} "
          f"| {len(gross_scores)}, highest {max(gross_scores, default=float('nan')):.2f} "
          f"| {len(far_scores)}, highest {max(far_scores, default=float('nan')):.3f} "
          f"| {', '.join(sorted(sub)) or '-'} | {'; '.join(near) or '-'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", nargs="+", required=True, metavar="EVAL")
    parser.add_argument("--report", nargs="*", default=[], metavar="EVAL")
    parser.add_argument("--signals", default=",".join(DEFAULT_SIGNALS), help="comma-separated signal names")
    parser.add_argument("--write", help="merge the joint part into this calibration file (the rest kept)")
    parser.add_argument("--source", default="", help="with --write: how the joint part was fitted")
    args = parser.parse_args()
    signals = tuple(s.strip() for s in args.signals.split(","))
    tuning = [run for folder in args.fit for run in joint_runs(Path(folder))]
    calibration = fit_joint(tuning, signals)
    print(f"joint part on {', '.join(signals)}: {calibration['cases']} tuning runs, {calibration['positives']} sub-mm; "
          f"weights {[round(w, 3) for w in calibration['weights']]}, bias {calibration['bias']:.3f}")
    print("| set | runs | sub-mm | AUROC < 1 mm | AUROC not gross | gross failures, highest score "
          "| of them > 5 mm, highest score | scores of sub-mm runs | 1-2 mm runs: score |\n"
          "|---|---:|---:|---:|---:|---|---|---|---|")
    describe("tuning (in-sample)", calibration, tuning)
    report = [run for folder in args.report for run in joint_runs(Path(folder))]
    if report:
        describe(f"report ({', '.join(args.report)})", calibration, report)
    if args.write:
        path = Path(args.write)
        whole = json.loads(path.read_text())
        whole["joint"] = {**calibration, "source": args.source}
        path.write_text(json.dumps(whole, indent=2) + "\n")
        print(f"joint part written into {path}")


if __name__ == "__main__":
    main()
