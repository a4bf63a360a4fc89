"""The cost landscape through a known pose: the learnt similarity and the intensity cost (NCC)
along each of the six axes of a pose offset about the isocentre.

This is how the paper argues its case (a similarity learnt on the hypersphere should be smooth
and wide, with its minimum at the truth), and how we check whether a trained model delivers it:
a curve whose minimum sits off the truth, or that rises again a few millimetres out, cannot
guide Levenberg-Marquardt from the regressor's start.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .camera import ISOCENTRE_FRACTION
from .poses import camera_frame_offset

__all__ = ["AXES", "Profiles", "twist_profiles", "capture_range", "plot_landscape"]

AXES = ("rx", "ry", "rz", "tx", "ty", "tz")
"""Rotations about the camera axes through the isocentre (degrees), then camera-frame translations (mm)."""


@dataclass
class Profiles:
    """offsets: ``(6, S)`` degrees (rx, ry, rz) and mm (tx, ty, tz); costs: name -> ``(6, S)``."""

    offsets: Tensor
    costs: dict[str, Tensor]

    def summary(self) -> dict:
        """Per cost and axis: where the minimum lies and the capture range around the truth."""
        out = {}
        for name, cost in self.costs.items():
            out[name] = {}
            for k, axis in enumerate(AXES):
                lo, hi = capture_range(self.offsets[k], cost[k])
                out[name][axis] = {"argmin": float(self.offsets[k, int(cost[k].argmin())]),
                                   "capture_lo": lo, "capture_hi": hi}
        return out


def axis_offsets(truth: Tensor, sdd: float, rot_deg: float, trans_mm: float, steps: int) -> tuple[Tensor, Tensor]:
    """``(6, S)`` offsets and the poses ``(6 * S, 4, 4)`` they give about ``truth`` (4, 4)."""
    t = torch.linspace(-1.0, 1.0, steps, dtype=torch.float64)
    offsets = (torch.stack([t * rot_deg] * 3 + [t * trans_mm] * 3) * 1e6).round() / 1e6 + 0.0  # exactly 0 at the truth
    angles = torch.zeros(6, steps, 3, dtype=torch.float64)
    shifts = torch.zeros(6, steps, 3, dtype=torch.float64)
    for k in range(3):
        angles[k, :, k] = torch.deg2rad(offsets[k])
        shifts[3 + k, :, k] = offsets[3 + k]
    D = camera_frame_offset(angles.reshape(-1, 3), shifts.reshape(-1, 3), ISOCENTRE_FRACTION * sdd)
    return offsets, D @ truth.to(torch.float64)


@torch.no_grad()
def twist_profiles(costs: dict, truth: Tensor, sdd: float, rot_deg: float = 15.0, trans_mm: float = 40.0,
                   steps: int = 21, chunk: int = 32) -> Profiles:
    """Each of ``costs`` (name -> ``poses (B, 4, 4) -> (B,)``) along the six axes through ``truth``."""
    offsets, poses = axis_offsets(truth, sdd, rot_deg, trans_mm, steps)
    values = {name: torch.cat([fn(part).double().cpu() for part in poses.split(chunk)]).reshape(6, steps)
              for name, fn in costs.items()}
    return Profiles(offsets, values)


def capture_range(offsets: Tensor, cost: Tensor) -> tuple[float, float]:
    """The interval about the truth (offset 0) over which ``cost`` falls monotonically towards it:
    where a descent method started on that axis reaches the truth. ``(S,) x 2 -> (lo, hi)``."""
    centre = int(offsets.abs().argmin())
    hi = centre
    while hi + 1 < len(cost) and cost[hi + 1] > cost[hi]:
        hi += 1
    lo = centre
    while lo - 1 >= 0 and cost[lo - 1] > cost[lo]:
        lo -= 1
    return float(offsets[lo]), float(offsets[hi])


def plot_landscape(path, profiles: Profiles, title: str = "") -> None:
    """The six axes side by side, each cost scaled to [0, 1] over its axis (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_write

    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for k, (ax, axis) in enumerate(zip(axes.flat, AXES)):
        x = profiles.offsets[k].numpy()
        for name, cost in profiles.costs.items():
            c = cost[k]
            scaled = (c - c.min()) / (c.max() - c.min()).clamp_min(1e-12)
            ax.plot(x, scaled.numpy(), label=name)
        ax.axvline(0.0, color="k", lw=0.8, ls="--")
        ax.set_xlabel(f"{axis} ({'deg' if k < 3 else 'mm'})")
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=8)
    fig.suptitle(title or "cost along each axis through the true pose (scaled to [0, 1] per axis)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
