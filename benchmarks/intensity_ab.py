"""The default pipeline from the regressor against variants of its later stages, case by case.

    python benchmarks/intensity_ab.py THREADS VARIANTS OUT.jsonl CASES [CASES ...]
    python benchmarks/intensity_ab.py summary OUT.jsonl [OUT.jsonl ...]

VARIANTS, comma-separated, each a ``+``-joined list of changes to the current defaults:
``base`` (none); ``learnt`` (the learnt-similarity stage whatever the model's validation says, the
default before the fourteenth session); ``previous`` (LM, search and learnt stage as before the
thirteenth session: exact Jacobians, no step doubling, full ray sampling in the search, the learnt
stage run); ``old`` (the eleventh session's
stopping rule undone: both levels capped at 12, LM's strict 1e-8 test; ``previous+old`` is the code
before it); ``exact``, ``broyden``, ``ext``, ``bext`` (the intensity levels with exact Jacobians
and no doubling, Broyden updates only, doubling only, both); ``learntb`` (the learnt stage with
Broyden updates, now the default); ``itersN`` (the finest level capped at N); ``levelsF`` and
``searchF`` (the intensity levels or the search sample rays at F times the renderer's default);
``fixedreading`` (a processed export always read as a log LUT's, as before the fourteenth session);
``fixdepth`` / ``freedepth`` (the learnt stage kept off the central ray, the default since the
fifteenth session, or free to move along it); ``nolearnt`` (no learnt stage); ``freshunc`` (the final
uncertainty from six fresh derivative passes, not LM's last exact Jacobian); ``onestart`` (the intensity
stage from the search's pick alone, not also from the other start, as before the sixteenth session);
``unsearched`` (without a learnt stage, the initial pose as it was before the search is the other
start: ``RegisterOptions.unsearched_start``);
``truefield`` (the simulator's exposed
field, from the truth file, ANDed into the one the reader found: what a perfect field finder would
give, as benchmarks/field_oracle.py); ``quad`` (every intensity level compares the X-ray with the
DRR's least-squares quadratic in its own line integrals: beam hardening and scatter compress thick
paths; ``finequad`` only the finest level, ``linearfine`` the finest level linear again);
``coarseN`` (the first intensity level capped at N); ``extensionsN`` (LM may double a step up to N
times at every intensity level);
``nielsen`` / ``simple`` (LM's damping rule at every intensity level); ``edges`` / ``fineedges`` (NCC of
edges alone, at every intensity level or the finest); ``robustC`` / ``finerobustC`` (each patch's cost
under Cauchy's loss of scale C, at every intensity level or the finest); ``otherlevelsN`` (both starts through the
first N intensity levels before the lower cost goes on); ``searchzN`` (the translation search's
half-width along the camera's z axis, the depth, set to N steps); ``nosearch`` (no translation
search); ``finepatchN`` (the finest level's NCC patches N px wide); ``metalW`` / ``metalWfP`` (``metal0``: off, the default before the thirty-fourth session; every intensity
level leaves out X-ray pixels that stand out locally, within W mm, more than the DRR's anatomy does:
``IntensityLevel.metal_width_mm``; P/100 times the DRR's 99th percentile, one factor per process); ``fitdistN`` (N rounds of each view's distortion fitted at the joint
pose, several views only); ``resdistN[.L]`` (one view: N rounds of the warp its residual patch
shifts show, undone, and the last L intensity levels again); ``init`` (start from
the case's init.json, not the regressor); ``truth`` (start from the true pose: does the intensity
stage stay there?). The model is the shipped one unless ``MODEL=path`` is set in the environment, and
``SHARD=K/N`` runs every N-th case from the K-th.
One JSON line per case and variant: mTRE, depth and in-plane error of the landmarks' centroid,
confidence, final NCC and intensity cost, seconds, each stage's [seconds, iterations], whether the
linear-LUT reading was chosen, the distortion undone (the one given, or each view's fitted). Cases with
several views are registered jointly.
"""
import os, sys, json, time
from dataclasses import replace
from pathlib import Path
import torch
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.model import load_model
from SphericalRegLib.confidence import load_calibration
from SphericalRegLib.register import Registrar, RegisterOptions
from SphericalRegLib.evaluation.rows import errors
from SphericalRegLib.xray import describe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from field_detection import use_true_field  # noqa: E402

M = os.environ.get("MODEL", "Resources/Models/chest_example.pt")


def options(v):
    """The RegisterOptions of one VARIANT (see the module's docstring)."""
    o = RegisterOptions()
    lv = list(o.refine_levels)
    for part in v.split("+"):
        if part == "old":
            lv = [replace(l, cost_tol=1e-8, iterations=12) for l in lv]
        elif part in ("broyden", "ext", "bext", "exact"):
            lv = [replace(l, broyden=part in ("broyden", "bext"), extensions=3 if "ext" in part else 0) for l in lv]
        elif part.startswith("otherlevels"):
            o.other_start_levels = int(part[11:])
        elif part == "unsearched":
            o.unsearched_start = True
        elif part == "onestart":
            o.other_start_levels = 0
        elif part.startswith("iters"):
            lv[-1] = replace(lv[-1], iterations=int(part[5:]))
        elif part.startswith("extensions"):
            lv = [replace(l, extensions=int(part[10:])) for l in lv]
        elif part.startswith("coarse"):
            lv[0] = replace(lv[0], iterations=int(part[6:]))
        elif part in ("edges", "fineedges"):
            lv = [replace(l, terms=("edges",)) if part == "edges" or k == len(lv) - 1 else l for k, l in enumerate(lv)]
        elif part.startswith("finerobust"):
            lv[-1] = replace(lv[-1], robust=float(part[10:]))
        elif part.startswith("robust"):
            lv = [replace(l, robust=float(part[6:])) for l in lv]
        elif part in ("nielsen", "simple"):
            lv = [replace(l, damping_rule=part) for l in lv]
        elif part == "learntb":
            o.learnt_broyden = True
        elif part == "learnt":
            o.learnt_stage = "always"
        elif part == "previous":  # the twelfth session's code
            lv = [replace(l, broyden=False, extensions=0) for l in lv]
            o.search_level = replace(o.search_level, ray_samples=1.0)
            o.learnt_broyden = False
            o.learnt_stage = "always"
        elif part.startswith("levels"):
            lv = [replace(l, ray_samples=float(part[6:])) for l in lv]
        elif part.startswith("metal"):  # metalW or metalWfP: local outliers W mm wide, factor P/100
            width, _, factor = part[5:].partition("f")
            if factor:
                import SphericalRegLib.register.residuals as residuals
                residuals.LOCAL_OUTLIER_FACTOR = int(factor) / 100
            lv = [replace(l, metal_width_mm=float(width)) for l in lv]
        elif part.startswith("finepatch"):
            lv[-1] = replace(lv[-1], patch=int(part[9:]))
        elif part.startswith("resdist"):  # resdistN or resdistN.L: N rounds over the last L levels
            rounds, _, levels = part[7:].partition(".")
            o.residual_distortion_rounds, o.residual_distortion_levels = int(rounds), int(levels or 1)
        elif part.startswith("fitdist"):
            o.fit_distortion_rounds = int(part[7:])
        elif part == "truefield":
            pass  # main() ANDs the simulator's true exposed field into the reader's
        elif part in ("quad", "finequad", "linearfine"):
            model = "linear" if part == "linearfine" else "quadratic"
            lv = [replace(l, drr_model=model) if part == "quad" or k == len(lv) - 1 else l for k, l in enumerate(lv)]
        elif part == "nosearch":
            o.search_step_mm = 0.0
        elif part.startswith("searchz"):
            o.search_steps = (*o.search_steps[:2], int(part[7:]))
        elif part.startswith("search"):
            o.search_level = replace(o.search_level, ray_samples=float(part[6:]))
        elif part in ("fixdepth", "freedepth"):
            o.learnt_moves_depth = part == "freedepth"
        elif part == "nolearnt":
            o.optimizer = "none"
        elif part in ("fixedreading", "init", "truth", "freshunc"):
            pass  # main() passes the pixels' encoding, which skips the choice, or the case's init
        elif part != "base":
            raise SystemExit(f"unknown variant {part!r}: base, learnt, old, exact, broyden, ext, bext, learntb, "
                             "previous, itersN, levelsF, searchF, fixedreading, fixdepth, freedepth, nolearnt, init, "
                             "freshunc, onestart, unsearched, otherlevelsN, coarseN, extensionsN, nielsen, simple, edges, fineedges, "
                             "robustC, finerobustC, quad, finequad, linearfine, truefield, nosearch, searchzN, finepatchN, metalW[fP], fitdistN, resdistN[.L] or truth")
    o.refine_levels = tuple(lv)
    return o


def sign_test(gained: int, lost: int) -> float:
    """Two-sided exact sign test (McNemar's for paired outcomes): the chance of a split at least this
    uneven between ``gained`` and ``lost`` if a variant changed nothing but which cases land where."""
    from math import comb
    n = gained + lost
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, k) for k in range(min(gained, lost) + 1)) / 2 ** n)


def summary(paths):
    """Per variant, over the cases every variant ran: sub-millimetre, under 2 mm, median and p95 mTRE,
    gross failures (mTRE > 5 mm) with the highest confidence among them, median seconds, and the
    median of per-case time ratios against the first variant. Against the first variant, paired: the
    cases that became sub-millimetre and those that stopped being so, with the sign test's p, and
    the cases more than 1 mm better and worse. On 16-24 cases a gain of 3-4 sub-millimetre cases is
    often p > 0.1: under random physics a fresh noise draw alone moves single cases by tens of mm."""
    import numpy as np
    rows = [json.loads(line) for p in paths for line in open(p)]
    by = {}
    for r in rows:
        by.setdefault(r["variant"], {})[(r["folder"], r["case"])] = r
    common = set.intersection(*(set(v) for v in by.values()))
    first = next(iter(by))
    print(f"{len(common)} cases in common")
    for v, cases in by.items():
        rs = [cases[k] for k in sorted(common)]
        m = np.array([r["mtre"] for r in rs])
        gross = [r["confidence"] or 0.0 for r in rs if r["mtre"] > 5]
        ratio = np.median([cases[k]["seconds"] / by[first][k]["seconds"] for k in common])
        print(f"{v:32s} sub-mm {int((m < 1).sum()):3d} <2mm {int((m < 2).sum()):3d} median {np.median(m):6.2f} "
              f"p95 {np.percentile(m, 95):6.1f} gross {len(gross)} (max conf {max(gross, default=0):.3f}) "
              f"median s {np.median([r['seconds'] for r in rs]):5.2f} time ratio {ratio:.2f}")
        if v != first:
            m0 = np.array([by[first][k]["mtre"] for k in sorted(common)])
            gained, lost = int(((m < 1) & (m0 >= 1)).sum()), int(((m >= 1) & (m0 < 1)).sum())
            print(f"{'':32s} against {first}: sub-mm +{gained} -{lost} (sign test p {sign_test(gained, lost):.2f}), "
                  f"> 1 mm better {int((m < m0 - 1).sum())} / worse {int((m > m0 + 1).sum())}")


def main():
    if sys.argv[1] == "summary":
        return summary(sys.argv[2:])
    torch.set_num_threads(int(sys.argv[1]))
    variants = sys.argv[2].split(",")
    out = open(sys.argv[3], "a")
    regs = {}
    for folder in map(Path, sys.argv[4:]):
        dirs = sorted(p for p in folder.iterdir() if p.is_dir())
        if "SHARD" in os.environ:  # K/N: every N-th case from the K-th
            k, n = map(int, os.environ["SHARD"].split("/"))
            dirs = dirs[k::n]
        for case_dir in dirs:
            case = read_case(case_dir); truth, lm = read_truth(case_dir)
            for v in variants:
                if v not in regs:
                    regs[v] = Registrar(load_model(M, case.ct), case.ct, options(v), load_calibration(M))
                    if "freshunc" in v.split("+"):  # the uncertainty's own Jacobian, as before the sixteenth session
                        regs[v]._final_linearisation = lambda ctx, stages, pose: None
                t0 = time.perf_counter()
                reading = dict(case.reading)
                if "fixedreading" in v:  # the pixels' encoding, which skips the CT's LUT check
                    reading["encoding"] = describe(case.xray, reading["photometric"])["encoding"]
                use_true_field(json.loads((case_dir.parent / f"{case_dir.name}.truth.json").read_text())["physics"][0]
                               if "truefield" in v.split("+") else None, torch.as_tensor(case.xray).shape)
                start = case.init if "init" in v.split("+") else truth if "truth" in v.split("+") else None
                r = regs[v].register(case.xray, case.camera, start, **reading, other_views=case.views[1:])
                dt = time.perf_counter() - t0
                err = errors(r.camera_from_world.to(torch.float64), truth, lm, case.camera)
                row = dict(folder=folder.name, case=case_dir.name, variant=v, mtre=err["mTRE"], depth=err["depth"],
                           inplane=err["inplane"], confidence=r.confidence, diverged=r.diverged, seconds=dt,
                           final_ncc=r.final_ncc, cost=r.stages["intensity"].cost[-1] if "intensity" in r.stages else None,
                           stages={k: [round(st.seconds, 3), st.iterations] for k, st in r.stages.items()},
                           linear=any("linear-LUT" in n for n in r.notes),
                           distortion=r.distortion or [v.distortion for v in r.views if v.distortion is not None] or None)
                out.write(json.dumps(row) + "\n"); out.flush()
                print(f"{folder.name} {case_dir.name} {v:5s} mTRE {err['mTRE']:7.2f} depth {err['depth']:6.2f} "
                      f"conf {r.confidence} {dt:.1f}s", flush=True)


if __name__ == "__main__":
    main()
