"""Linear transforms as ITK files that 3D Slicer loads with the intended direction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor

from ..errors import InputError
from .files import atomic_write, refuse_existing, require_file
from .images import LPS_TO_RAS

__all__ = ["write_itk_transform", "read_itk_transform"]


def write_itk_transform(path: str | Path, matrix_ras, overwrite: bool = False) -> Path:
    """Save a 4x4 RAS matrix so that 3D Slicer loads it as a linear transform whose ToParent is it.

    ITK transform files hold the resampling ("FromParent") direction in LPS; Slicer converts
    with diag(-1, -1, 1) and inverts on load, so the file stores ``F inv(M) F``.
    """
    path = Path(path)
    refuse_existing(path, overwrite)
    M = np.asarray(matrix_ras.detach().cpu() if isinstance(matrix_ras, Tensor) else matrix_ras, dtype=np.float64)
    if M.shape != (4, 4) or not np.all(np.isfinite(M)) or not np.allclose(M[3], [0, 0, 0, 1]):
        raise InputError("matrix_ras", f"is not an affine 4x4 matrix (shape {list(M.shape)})", "[[A, t], [0, 0, 0, 1]]")
    F = LPS_TO_RAS
    L = F @ np.linalg.inv(M) @ F
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(L[:3, :3].ravel().tolist())
    tx.SetTranslation(L[:3, 3].tolist())
    atomic_write(path, lambda tmp: sitk.WriteTransform(tx, tmp))
    return path


def read_itk_transform(path: str | Path) -> Tensor:
    """The RAS ToParent matrix ``(4, 4)`` float64 that 3D Slicer would show for an ITK linear transform file."""
    path = Path(path)
    require_file(path, "an ITK transform file (.tfm, .txt, .h5)")
    try:
        tx = sitk.ReadTransform(str(path))
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1][:200]
        raise InputError(path, f"cannot be read as an ITK transform ({detail})", "a .tfm, .txt or .h5 transform") from None
    # sample the transform: works for any linear ITK type (affine, Euler, versor, composite of them)
    probe = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3.0, -7.0, 11.0]], dtype=np.float64) * 100
    try:
        out = np.array([tx.TransformPoint(p.tolist()) for p in probe])
    except RuntimeError as e:
        raise InputError(path, f"transform cannot be evaluated ({e})", "a linear transform") from None
    L = np.eye(4)
    L[:3, 3] = out[0]
    L[:3, :3] = (out[1:4] - out[0]).T / 100
    if not np.allclose(L[:3, :3] @ probe[4] + L[:3, 3], out[4], atol=1e-4):
        raise InputError(path, "holds a non-linear transform", "a linear (affine or rigid) transform")
    F = LPS_TO_RAS
    return torch.from_numpy(np.linalg.inv(F @ L @ F))
