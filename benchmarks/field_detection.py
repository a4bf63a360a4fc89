"""How well the reader finds the exposed field of simulated X-rays: the share of the pixels it keeps
(exposed field and unclipped, full resolution) that lie in the simulator's shutter or iris shadow, and
the share of the true field it drops. Frames with image-intensifier distortion are skipped (their
field is warped, the truth's rectangle would not fit).

    python benchmarks/field_detection.py FOLDER [FOLDER ...]

A frame counts as a miss when more than 2% of the pixels kept are shadow: those pixels compare the
blades' flat shadow with the DRR's anatomy and pull the pose.
"""
import argparse
import json
import warnings
from pathlib import Path

import torch

import SphericalRegLib.xray as xray
from SphericalRegLib.io import read_case
from SphericalRegLib.xray import _read, describe


def true_field(meta: dict, rows: int, cols: int) -> torch.Tensor:
    """The simulator's exposed field ``(rows, cols)`` bool from a truth file's physics entry."""
    p = meta["physics"]
    field = torch.ones(rows, cols, dtype=torch.bool)
    if meta.get("shutters_px"):
        top, bottom, left, right = meta["shutters_px"]
        field[:top], field[rows - bottom:], field[:, :left], field[:, cols - right:] = False, False, False, False
    if p["iris"] > 0:
        v, u = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                              indexing="ij")
        r = ((u - (cols - 1) / 2) ** 2 + (v - (rows - 1) / 2) ** 2).sqrt()
        field &= r <= p["iris"] * min(rows, cols) / 2 - 0.5
    return field


def use_true_field(meta: dict | None, shape) -> None:
    """From now on the reader's exposed field is ANDed with the simulator's true one (``meta``: a truth
    file's physics entry for a frame of ``shape``, rows and cols; the rest of the shadow reads as 0), or,
    with ``meta`` None, found by the reader alone again. The field is view 0's: single-view cases only."""
    if meta is None:
        xray._read = _read
        return
    field = true_field(meta, *shape)

    def with_true_field(image, photometric, air, dark, encoding):
        L, found, unclipped = _read(image, photometric, air, dark, encoding)
        return torch.where(field, L, torch.zeros_like(L)), found & field, unclipped
    xray._read = with_true_field


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    misses, n = 0, 0
    print("| case | shutters (px) | iris | kept pixels in shadow | true field dropped |\n|---|---|---:|---:|---:|")
    for folder in map(Path, args.folders):
        for case_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            truth = json.loads((case_dir.parent / f"{case_dir.name}.truth.json").read_text())
            meta = (truth.get("physics") or [None])[0]
            if meta is None or meta["physics"]["pincushion"] > 0 or meta["physics"]["s_distortion"] > 0:
                continue
            image = torch.as_tensor(read_case(case_dir).xray, dtype=torch.float64)
            encoding = describe(image, meta["photometric"])["encoding"]
            _, field, unclipped = _read(image, meta["photometric"], None, 0.0, encoding)
            kept, truth_field = field & unclipped, true_field(meta, *image.shape)
            shadow = float((kept & ~truth_field).sum() / kept.sum().clamp_min(1))
            dropped = float((truth_field & ~kept).sum() / truth_field.sum())
            misses += shadow > 0.02
            n += 1
            print(f"| {folder.name}/{case_dir.name} | {meta.get('shutters_px') or '-'} | {meta['physics']['iris']:.2f} | "
                  f"{shadow:.1%}{' **miss**' if shadow > 0.02 else ''} | {dropped:.1%} |", flush=True)
    print(f"\n{misses} of {n} frames keep more than 2% shadow.")


if __name__ == "__main__":
    main()
