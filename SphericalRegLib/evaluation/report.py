"""The tables and plots of an evaluation: results.md, results.csv, cases.csv, info.json, curves.json,
the mTRE CDF and the convergence of the learnt stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..io import atomic_write, write_csv, write_json
from ..metrics import SUMMARY_COLUMNS, summarise
from .rows import Row, write_rows

__all__ = ["report", "summary_rows"]


def summary_rows(rows: list[Row], methods) -> list[dict]:
    """One summary row of the conventions per method that has rows."""
    summary = []
    for name in methods:
        rs = [r for r in rows if r.method == name]
        if rs:
            summary.append(summarise(name, [r.mTRE for r in rs], [r.mPE for r in rs], [r.depth for r in rs],
                                     [r.inplane for r in rs], [r.seconds for r in rs],
                                     failures=sum(r.diverged for r in rs)))
    return summary


def report(out: Path, rows: list[Row], curves: dict, info: dict) -> dict:
    """Write every table and plot of ``rows`` into ``out``; returns rows, summary and info."""
    summary = summary_rows(rows, info["methods"])
    write_rows(out / "cases.csv", rows)
    write_csv(out / "results.csv", SUMMARY_COLUMNS, summary)
    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(markdown_table(summary, info)))
    write_json(out / "info.json", info, overwrite=True)
    atomic_write(out / "curves.json", lambda tmp: Path(tmp).write_text(json.dumps(curves)))
    plot_cdf(out / "cdf.png", rows, info["methods"])
    plot_convergence(out / "convergence.png", curves)
    return {"rows": rows, "summary": summary, "info": info}


def _fmt(v, pct=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def markdown_table(summary: list[dict], info: dict) -> str:
    lines = [
        "| method | cases | SMSR | median mTRE | 75% | 95% | mean +- std | SMSR-2D | median mPE | median depth err | "
        "median in-plane err | median time (s) | diverged |",
        "|" + "---|" * 13,
    ]
    for s in summary:
        lines.append(
            f"| {s['method']} | {s['cases']} | {_fmt(s['SMSR'], True)} | {_fmt(s['median_mTRE'])} | "
            f"{_fmt(s['p75_mTRE'])} | {_fmt(s['p95_mTRE'])} | {_fmt(s['mean_mTRE'])} +- {_fmt(s['std_mTRE'])} | "
            f"{_fmt(s['SMSR_2D'], True)} | {_fmt(s['median_mPE'])} | {_fmt(s['median_depth_err'])} | "
            f"{_fmt(s['median_inplane_err'])} | {_fmt(s['median_seconds'])} | {s['failures']} |")
    lines += ["", "Errors in mm. " + f"Hardware: {info['hardware']}. Cases: {info['cases']} from {info['cases_dir']}."]
    if info.get("baseline") and "diffpose-ncc" in info.get("methods", ()):
        lines.append("Intensity baseline (diffpose-ncc): "
                     + ", ".join(f"{k} {v}" for k, v in info["baseline"].items()) + ".")
    for m, why in info["skipped"].items():
        lines.append(f"Not run: {m}: {why}.")
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def plot_cdf(path: Path, rows: list[Row], names) -> None:
    """The share of cases under each mTRE, per method (log scale, 1 mm marked)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name in names:
        e = sorted(r.mTRE for r in rows if r.method == name)
        if e:
            ax.step(e, [(i + 1) / len(e) for i in range(len(e))], where="post", label=name)
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("mTRE (mm)")
    ax.set_ylabel("share of cases")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(plt, fig, path)


def plot_convergence(path: Path, curves: dict) -> None:
    """Median relative cost and median mTRE over iterations of each method's optimising stage."""
    plt = _pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for name, runs in curves.items():
        n = max(len(r["cost"]) for r in runs)

        def median_curve(key, relative):
            out = []
            for k in range(n):
                vals = [r[key][min(k, len(r[key]) - 1)] / (r[key][0] if relative and r[key][0] else 1) for r in runs]
                out.append(float(torch.tensor(vals).median()))
            return out

        ax[0].plot(median_curve("cost", True), label=name)
        ax[1].plot(median_curve("mTRE", False), label=name)
    ax[0].set_ylabel("cost / initial cost (median)")
    ax[1].set_ylabel("mTRE (mm, median)")
    ax[1].set_yscale("log")
    for a in ax:
        a.set_xlabel("iteration")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    _save(plt, fig, path)
