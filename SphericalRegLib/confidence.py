"""Confidence that a registration is sub-millimetre: Platt scaling of two per-case signals
(the final NCC of the line-integral DRR with the X-ray, and the log of the learnt-similarity
cost), fitted on held-out simulated cases whose truth is known."""

from __future__ import annotations

import math
from pathlib import Path

import torch

__all__ = ["features", "fit", "predict", "calibration_path", "load_calibration"]


def calibration_path(model_path) -> Path:
    """Where the confidence calibration of a model lives: beside it, so calibrating never rewrites the model."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".calibration.json")


def load_calibration(model_path) -> dict | None:
    """The calibration beside ``model_path``, or None when the model has none."""
    from .io import read_json

    path = calibration_path(model_path)
    if not path.exists():
        return None
    return read_json(path, "a calibration written by 'sphericalreg evaluate --calibrate'")


def features(ncc_final: float, cost: float) -> list[float]:
    return [float(ncc_final), math.log(max(float(cost), 1e-12))]


def predict(calibration: dict, ncc_final: float, cost: float) -> float:
    """Probability in [0, 1] that mTRE < 1 mm."""
    f = torch.tensor(features(ncc_final, cost), dtype=torch.float64)
    mean = torch.tensor(calibration["mean"], dtype=torch.float64)
    std = torch.tensor(calibration["std"], dtype=torch.float64)
    z = calibration["bias"] + torch.dot(torch.tensor(calibration["weights"], dtype=torch.float64), (f - mean) / std)
    return float(torch.sigmoid(z))


def fit(ncc_final, cost, success, l2: float = 1e-2, iters: int = 500) -> dict:
    """Logistic regression (L2-regularised, standardised inputs) of ``success`` on the two signals.

    Returns the calibration dictionary :func:`predict` reads, with the number of cases used.
    """
    X = torch.tensor([features(a, b) for a, b in zip(ncc_final, cost)], dtype=torch.float64)
    y = torch.as_tensor(success, dtype=torch.float64)
    mean, std = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = (X - mean) / std
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(Z @ w + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return {"weights": w.detach().tolist(), "bias": float(b.detach()), "mean": mean.tolist(), "std": std.tolist(),
            "cases": int(len(y)), "positives": int(y.sum()), "signals": ["final NCC", "log similarity cost"]}
