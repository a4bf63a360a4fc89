"""Evaluation: several methods on the same simulated cases, one honest table (the conventions'
metrics), its plots, and the confidence calibration fitted on held-out runs."""

from .calibration import fit_confidence
from .methods import DERIVED, METHODS, Method
from .rows import Row
from .runner import evaluate, merge

__all__ = ["evaluate", "merge", "fit_confidence", "Method", "METHODS", "DERIVED", "Row"]
