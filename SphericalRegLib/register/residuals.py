"""The intensity stage's residual: patch and global NCC of intensities and of edges."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InputError
from ..intensity import sobel, standardise

__all__ = ["ncc_residual", "FORMS"]

FORMS = ("difference", "ncc")


def ncc_residual(patch: int, form: str = "difference"):
    """The LM residual of patch NCC on intensities and on edges (Sobel), ``(B, 1, H, W) x 2 -> (B, M)``.

    ``0.5 ||r||^2`` is the mean of four costs either way: ``1 - NCC`` over patches and over the whole
    image, of intensities and of edges. ``form="difference"``: the entries are differences of
    standardised pixels; they vanish linearly at a perfect match, as Gauss-Newton's model assumes,
    so LM converges fast near the optimum, but its linear model has a small capture range.
    ``form="ncc"``: one entry ``sqrt(2 (1 - NCC))`` per patch; a few smooth entries that carry LM
    far from the optimum, but quadratic at it, where LM stalls. Coarse levels use the second, fine
    levels the first.
    """
    if form not in FORMS:
        raise InputError("form", f"is {form!r}", " or ".join(FORMS))

    def tiles(x: Tensor, h: int, w: int) -> Tensor:
        B, c = x.shape[:2]
        x = x[..., :h, :w].reshape(B, c, h // patch, patch, w // patch, patch)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(B, -1, c * patch * patch)

    def residual(a: Tensor, b: Tensor) -> Tensor:
        H, W = a.shape[-2:]
        h, w = (H // patch) * patch, (W // patch) * patch
        parts = []
        for fa, fb in ((a, b), (sobel(a), sobel(b))):
            ta, tb = tiles(fa, h, w), tiles(fb, h, w)
            n_tiles, n = ta.shape[1], ta.shape[2]
            local = (standardise(ta, -1) - standardise(tb, -1)) / math.sqrt(n * n_tiles)
            whole = (standardise(fa, (1, 2, 3)) - standardise(fb, (1, 2, 3))) / math.sqrt(fa[0].numel())
            if form == "ncc":  # the norm of each group of differences: sqrt(2 (1 - NCC)) per patch
                local = local.pow(2).sum(-1).clamp_min(1e-12).sqrt()
                whole = whole.flatten(1).pow(2).sum(-1, keepdim=True).clamp_min(1e-12).sqrt()
            parts += [local.flatten(1), whole.flatten(1)]
        return torch.cat(parts, dim=-1) / 2

    return residual
