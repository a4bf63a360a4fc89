"""Training curves as a picture: the losses, the regressor's held-out errors and the share of
similarity gradients pointing the right way, written next to each checkpoint.

Apart from the trainer because it is the only part that needs matplotlib, imported on first use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_history", "curves_path"]


def plot_history(history: dict, path) -> None:
    """Training and validation curves as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if history.get("step"):
        steps = np.asarray(history["step"])
        for key in ("loss", "direction", "value", "pose"):
            if key not in history:
                continue
            values = np.asarray(history[key], dtype=float)
            w = max(1, len(values) // 50)
            smooth = np.convolve(values, np.ones(w) / w, mode="valid")
            axes[0].plot(steps[w - 1:], smooth, label=key)
        axes[0].set_yscale("log")
        axes[0].set_xlabel("step")
        axes[0].set_title("training losses (running mean)")
        axes[0].legend()
    if history.get("val_step"):
        vs = history["val_step"]
        axes[1].plot(vs, history["val_reg_geodesic_mm"], label="geodesic (mm)")
        axes[1].plot(vs, history["val_reg_iso_mm"], label="isocentre (mm)")
        axes[1].plot(vs, history["val_reg_rot_deg"], label="rotation (deg)")
        axes[1].set_title("regressor, held-out poses")
        axes[1].set_xlabel("step")
        axes[1].legend()
        for key, label in (("grad_within30", "6D twist"), ("rot_within30", "rotation"),
                           ("tr_within30", "translation")):
            axes[2].plot(vs, history["val_" + key], label=label)
        axes[2].set_ylim(0, 1)
        axes[2].set_title("similarity gradients within 30 deg of g*")
        axes[2].set_xlabel("step")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves_path(out: Path) -> Path:
    """Where the curves of the checkpoint ``out`` go: ``model.pt`` -> ``model.curves.png`` beside it."""
    return out.with_name(out.stem + ".curves.png")
