"""Is the pose uncertainty calibrated under X-ray physics other than plain, and would a patch-clustered
(sandwich) covariance make it so? Each case is registered as a user would (shipped model, from the
regressor); at the final pose the finest level's residual r (M,) and twist Jacobian J (M, 6) give

* the Gauss-Newton covariance registration reports now, ``s^2 (J^T J)^-1`` with ``s^2`` the mean
  squared residual: as if the M pixel residuals were independent;
* the cluster-robust one, ``(J^T J)^-1 (sum_c g_c g_c^T) (J^T J)^-1`` with ``g_c = J_c^T r_c`` the pull
  of NCC patch c (each patch's local entries and the whole-image entries of its pixels): neighbouring
  pixels' residuals are not independent, and where the physics differs from the DRR's the patches
  pull the pose different ways, which the first one cannot see.

    python benchmarks/uncertainty_sandwich.py THREADS OUT.jsonl CASES [CASES ...]   (SHARD=K/N: every N-th case)
    python benchmarks/uncertainty_sandwich.py summary TUNE.jsonl[,TUNE2.jsonl] REPORT.jsonl [...]

``summary`` fits each estimator's depth and in-plane scale on the first (comma-separated) files, as
the calibration does (median of (error / sd)^2 against a Gaussian's, registrations within 5 mm), and
gives the share of errors within 1 and 2 scaled sds in every file, by folder. One view only.

    python benchmarks/uncertainty_sandwich.py scales TUNE.csv[,TUNE2.csv] REPORT.csv [...]

``scales`` reads ``sphericalreg evaluate``'s cases.csv (the reported Gauss-Newton sds at the CT centre
and the residual shift) and compares a constant scale with one that grows with the residual shift,
``a (shift / 0.3 mm)^b`` (b by likelihood on the tuning rows, a by the median rule), by their
coverage on every file.
"""
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from SphericalRegLib.confidence import load_calibration
from SphericalRegLib.evaluation.rows import errors, read_rows
from SphericalRegLib.io import read_case, read_truth
from SphericalRegLib.model import load_model
from SphericalRegLib.register import Registrar, RegisterOptions
from SphericalRegLib.register.uncertainty import covariance, fit_scale, point_standard_deviations, twist_jacobian

M = os.environ.get("MODEL", "Resources/Models/chest_example.pt")
CAPTURED = {}


def patch_ids(level, H: int, W: int) -> torch.Tensor:
    """``(M,)`` the NCC patch of every entry of ``level``'s residual ("difference" form): the layout of
    :func:`~SphericalRegLib.register.residuals.ncc_residual`, per term its patch entries (tile by tile)
    then its whole-image entries (channel, row, column)."""
    p = level.patch
    th, tw = H // p, W // p
    rows = torch.arange(H).div(p, rounding_mode="floor").clamp_max(th - 1)
    cols = torch.arange(W).div(p, rounding_mode="floor").clamp_max(tw - 1)
    pixel_tile = (rows[:, None] * tw + cols[None, :]).flatten()
    ids = []
    for term in level.terms:
        c = 1 if term == "intensities" else 2
        ids.append(torch.arange(th * tw).repeat_interleave(c * p * p))
        ids.append(pixel_tile.repeat(c))
    return torch.cat(ids)


def sandwich(r: torch.Tensor, J: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``(6, 6)`` cluster-robust covariance of the twist from ``r`` (M,), ``J`` (M, 6) and cluster ``ids`` (M,)."""
    r, J = r.double(), J.double()
    pulls = torch.zeros(int(ids.max()) + 1, 6, dtype=torch.float64).index_add_(0, ids, J * r[:, None])
    n = int((pulls.abs().sum(1) > 0).sum())
    bread = torch.linalg.inv(J.T @ J)
    return bread @ (pulls.T @ pulls) @ bread * (n / max(1, n - 6))


def capture():
    plain = Registrar._uncertainty

    def wrapped(self, ctx, level, pose, views, linearisation=None):
        T = pose.to(self.device, torch.float64)[None]
        r, J = linearisation if linearisation is not None else twist_jacobian(ctx.intensity_residual(level), T)
        r, J = r[0].cpu(), J[0].cpu()
        H = W = level.image_size
        ids = patch_ids(level, H, W)
        assert ids.numel() == r.numel(), (ids.numel(), r.numel())
        for name, cov in (("gn", covariance(r, J)), ("sandwich", sandwich(r, J, ids))):
            CAPTURED[name] = point_standard_deviations(pose.cpu(), cov, self.ct.centre)
        return plain(self, ctx, level, pose, views, linearisation)
    Registrar._uncertainty = wrapped


def run(threads: int, out_path: str, folders):
    torch.set_num_threads(threads)
    capture()
    out = open(out_path, "a")
    reg = None
    for folder in map(Path, folders):
        dirs = sorted(p for p in folder.iterdir() if p.is_dir())
        if "SHARD" in os.environ:  # K/N: every N-th case from the K-th
            k, n = map(int, os.environ["SHARD"].split("/"))
            dirs = dirs[k::n]
        for case_dir in dirs:
            case = read_case(case_dir)
            truth, lm = read_truth(case_dir)
            if reg is None:
                reg = Registrar(load_model(M, case.ct), case.ct, RegisterOptions(), load_calibration(M))
            CAPTURED.clear()
            t0 = time.perf_counter()
            r = reg.register(case.xray, case.camera, None, **case.reading)
            err = errors(r.camera_from_world.to(torch.float64), truth, lm, case.camera)
            row = dict(folder=folder.name, case=case_dir.name, mtre=err["mTRE"], depth=err["depth"], inplane=err["inplane"],
                       diverged=r.diverged, seconds=time.perf_counter() - t0,
                       reported=r.uncertainty and {k: r.uncertainty[k] for k in ("raw_depth_sd_mm", "raw_inplane_sd_mm")},
                       **{k: v for k, v in CAPTURED.items()})
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"{folder.name} {case_dir.name} mTRE {err['mTRE']:.2f} depth {err['depth']:.2f} "
                  + " ".join(f"{k} {v['depth_sd_mm']:.3f}/{v['inplane_sd_mm']:.3f}" for k, v in CAPTURED.items()), flush=True)


def summary(tune: str, reports):
    rows = lambda p: [json.loads(line) for f in p.split(",") for line in open(f)]
    fit = [r for r in rows(tune) if not r["diverged"] and r["mtre"] < 5 and "gn" in r]
    for est in ("gn", "sandwich"):
        scale = {kind: fit_scale([r[kind] for r in fit], [r[est][key] for r in fit], kind)
                 for kind, key in (("depth", "depth_sd_mm"), ("inplane", "inplane_sd_mm"))}
        print(f"{est}: scales fitted on {len(fit)} tuning runs: depth {scale['depth']:.2f}, in-plane {scale['inplane']:.2f}")
        for p in [tune, *reports]:
            by = {}
            for r in rows(p):
                if not r["diverged"] and r["mtre"] < 5 and est in r:
                    by.setdefault(r["folder"], []).append(r)
            for folder, rs in by.items():
                line = []
                for kind, key in (("depth", "depth_sd_mm"), ("inplane", "inplane_sd_mm")):
                    z = torch.tensor([r[kind] / (scale[kind] * r[est][key]) for r in rs])
                    line.append(f"{kind} within 1 / 2 sd {float((z <= 1).double().mean()):.0%} / {float((z <= 2).double().mean()):.0%}")
                med = torch.tensor([scale["depth"] * r[est]["depth_sd_mm"] for r in rs]).median()
                print(f"   {folder:12s} ({len(rs)} within 5 mm): " + "; ".join(line) + f"; median depth sd {float(med):.2f} mm")


def csv_rows(paths: str) -> list[dict]:
    """The registrations within 5 mm that did not diverge, from comma-separated cases.csv files."""
    return [{"depth": r.depth, "inplane": r.inplane, "shift": r.residual_shift,
             "sd_depth": r.centre_depth_sd, "sd_inplane": r.centre_inplane_sd}
            for path in paths.split(",") for r in read_rows(Path(path))
            if r.method == "ours" and not r.diverged and r.centre_depth_sd is not None and r.mTRE <= 5]


def scales(tune: str, reports):
    fit = csv_rows(tune)

    def sds(rows, kind, a, b):
        return [a * r["sd_" + kind] * (r["shift"] / 0.3) ** b for r in rows]

    def scale(kind, b):
        return fit_scale([r[kind] for r in fit], sds(fit, kind, 1.0, b), kind)

    def nll(kind, b):  # Gaussian (depth, 1 dof) or Rayleigh (in-plane, 2 dof) negative log-likelihood, clipped
        dof = 1 if kind == "depth" else 2
        return sum(dof * math.log(sd) + min(25.0, (r[kind] / sd) ** 2) / 2
                   for r, sd in zip(fit, sds(fit, kind, scale(kind, b), b))) / len(fit)

    for kind in ("depth", "inplane"):
        b = min((k / 10 for k in range(31)), key=lambda b: nll(kind, b))
        print(f"{kind}: {len(fit)} tuning runs; constant {scale(kind, 0.0):.2f}; growing with the shift: "
              f"a {scale(kind, b):.2f}, b {b:.1f}")
        for path in reports:
            rows = csv_rows(path)
            for bb in sorted({0.0, b}):
                z = [r[kind] / sd for r, sd in zip(rows, sds(rows, kind, scale(kind, bb), bb))]
                print(f"   {path}: b {bb:.1f}: within 1 / 2 sd {sum(x <= 1 for x in z)} / {sum(x <= 2 for x in z)} "
                      f"of {len(z)}")


if __name__ == "__main__":
    if sys.argv[1] == "scales":
        scales(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "summary":
        summary(sys.argv[2], sys.argv[3:])
    else:
        run(int(sys.argv[1]), sys.argv[2], sys.argv[3:])
