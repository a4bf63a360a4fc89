"""The confidence and the pose uncertainty on X-ray physics the calibration never saw.

    python benchmarks/confidence_presets.py random=EVAL/random/cases.csv hard=EVAL/hard/cases.csv ... \
        [--calibration MODEL.calibration.json] [--fit plain hard [--signals S,S] [--write MODEL.calibration.json]]
        [--plot docs/figures/reliability.png]

Each argument is ``PRESET=cases.csv`` (an ``sphericalreg evaluate`` table). Without ``--fit`` the
calibration file's Platt fit scores every row (as ``register`` would); with ``--fit P ...`` the
confidence is refitted on those presets' rows and scored on the others only. Prints, over the
scored rows of the methods that carry a confidence: AUROC for mTRE < 1 mm and for no gross
failure (mTRE > 5 mm or mPE > 2 mm), the gross failures scored >= 0.3, a reliability table
(predicted against observed sub-millimetre share per confidence bin) and the share of depth and
in-plane errors within 1 and 2 calibrated sds (the file's ``uncertainty_scale`` times the raw sds),
over the runs that are not gross failures (what a local, Gauss-Newton sd can describe) and over all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from SphericalRegLib.confidence import predict
from SphericalRegLib.evaluation.calibration import CALIBRATION_METHODS, fit_confidence, signal_values
from SphericalRegLib.evaluation.rows import read_rows

BINS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0001)


def auroc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def gross(row) -> bool:
    return row.mTRE > 5 or row.mPE > 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="+", metavar="PRESET=cases.csv")
    parser.add_argument("--calibration", default="Resources/Models/chest_example.calibration.json")
    parser.add_argument("--fit", nargs="*", default=[], metavar="PRESET")
    parser.add_argument("--signals", help="with --fit: comma-separated signal names (default: the library's)")
    parser.add_argument("--plot", help="write a reliability plot (png)")
    parser.add_argument("--write", help="with --fit: write the refitted confidence into this calibration file "
                                        "(its uncertainty_scale kept)")
    args = parser.parse_args()
    calibration = json.loads(Path(args.calibration).read_text())
    rows = []
    for spec in args.tables:
        preset, _, path = spec.partition("=")
        rows += [(preset, r) for r in read_rows(Path(path)) if r.method in CALIBRATION_METHODS]
    if args.fit:
        train = [r for p, r in rows if p in args.fit and r.final_ncc is not None and r.cost is not None
                 and not r.diverged]
        refit = fit_confidence(train, **({"signals": tuple(x.strip() for x in args.signals.split(","))}
                                         if args.signals else {}))
        refit.pop("uncertainty_scale", None)  # the file's own, as --write promises
        calibration = {**calibration, **refit}
        sources = [spec for spec in args.tables if spec.partition("=")[0] in args.fit]
        calibration["cases_dir"] = f"{len(train)} runs: " + ", ".join(sources)
        print(f"refitted on {len(train)} runs of {', '.join(args.fit)} ({sum(r.mTRE < 1 for r in train)} sub-mm)")
        if args.write:
            Path(args.write).write_text(json.dumps(calibration, indent=2) + "\n")
            print(f"wrote {args.write}")
    scored = [(p, r) for p, r in rows if p not in args.fit]
    # a diverged run says so and carries no confidence: it counts as scored 0
    conf = [0.0 if r.diverged or r.final_ncc is None else predict(calibration, signal_values(r)) for _, r in scored]
    presets = sorted({p for p, _ in scored})
    print(f"scored {len(scored)} runs of {', '.join(presets)}: {sum(r.mTRE < 1 for _, r in scored)} sub-mm, "
          f"{sum(gross(r) for _, r in scored)} gross, {sum(r.diverged for _, r in scored)} diverged")
    for name, subset in [("all", presets)] + [(p, [p]) for p in presets]:
        idx = [i for i, (p, _) in enumerate(scored) if p in subset]
        c, rs = [conf[i] for i in idx], [scored[i][1] for i in idx]
        confident_gross = [f"{r.case} {r.method} {r.mTRE:.1f} mm: {q:.2f}" for r, q in zip(rs, c) if gross(r) and q >= 0.3]
        print(f"| {name} | {len(rs)} | {auroc(c, [r.mTRE < 1 for r in rs]):.3f} | "
              f"{auroc(c, [not gross(r) for r in rs]):.3f} | {len(confident_gross)} of {sum(gross(r) for r in rs)}"
              f"{' (' + '; '.join(confident_gross) + ')' if confident_gross else ''} |")
    print("\n| confidence | runs | mean predicted | observed sub-mm |\n|---|---:|---:|---:|")
    points = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        inside = [(q, r) for q, (_, r) in zip(conf, scored) if lo <= q < hi]
        if inside:
            mean = sum(q for q, _ in inside) / len(inside)
            observed = sum(r.mTRE < 1 for _, r in inside) / len(inside)
            points.append((mean, observed, len(inside)))
            print(f"| {lo:.1f}-{min(hi, 1):.1f} | {len(inside)} | {mean:.2f} | {observed:.2f} |")
    scale = calibration.get("uncertainty_scale")
    for label, subset in (("not gross", [r for _, r in scored if not gross(r)]), ("all", [r for _, r in scored])):
        if not scale:
            break
        within = {k: [0, 0, 0] for k in ("depth", "inplane")}
        for r in subset:
            for k in within:
                sd = getattr(r, f"{k}_sd")
                if sd is None or r.diverged:
                    continue
                err, s = getattr(r, k), sd * scale[k]
                within[k][0] += 1
                within[k][1] += err <= s
                within[k][2] += err <= 2 * s
        for k, (n, one, two) in within.items():
            if n:
                print(f"{label}: {k} error within 1 sd: {one}/{n} ({one / n:.0%}); within 2 sd: {two}/{n} "
                      f"({two / n:.0%}) (a Gaussian: 68%, 95%)")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-")
        for x, y, n in points:
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
        ax.set(xlabel="confidence", ylabel="observed share with mTRE < 1 mm", xlim=(0, 1), ylim=(0, 1),
               title=f"{len(scored)} runs of {len(presets)} held-out sets")
        ax.title.set_fontsize(10)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
