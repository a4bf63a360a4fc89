"""Classic intensity similarities of 2D/3D registration, on batched images ``(B, C, H, W)``.

They serve the optional final refinement stage and the DiffPose/xvr-style peers; every one
returns a similarity in [-1, 1] per image (higher is better), so costs are ``1 - similarity``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ncc", "patch_ncc", "multiscale_ncc", "gradient_ncc", "sobel", "standardise", "quadratic_match"]

_EPS = 1e-8


def standardise(x: Tensor, dims, mask: Tensor | None = None) -> Tensor:
    if mask is None:
        mu = x.mean(dims, keepdim=True)
        sd = x.var(dims, keepdim=True, unbiased=False).add(_EPS).sqrt()
        return (x - mu) / sd
    w = mask.to(x.dtype)
    n = w.sum(dims, keepdim=True).clamp_min(1)
    mu = (x * w).sum(dims, keepdim=True) / n
    sd = (((x - mu) ** 2) * w).sum(dims, keepdim=True).div(n).add(_EPS).sqrt()
    return (x - mu) / sd * w


def ncc(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """Global normalised cross-correlation ``(B, C, H, W) x 2 -> (B,)``; ``mask`` (B|1, 1, H, W) excludes pixels."""
    dims = (1, 2, 3)
    za, zb = standardise(a, dims, mask), standardise(b, dims, mask)
    if mask is None:
        return (za * zb).mean(dims)
    n = mask.to(a.dtype).expand_as(a).sum(dims).clamp_min(1)
    return (za * zb).sum(dims) / n


def patch_ncc(a: Tensor, b: Tensor, patch: int) -> Tensor:
    """Mean NCC over non-overlapping ``patch x patch`` tiles, ``-> (B,)``: local contrast counts."""
    B, C, H, W = a.shape
    h, w = (H // patch) * patch, (W // patch) * patch

    def tiles(x):
        x = x[..., :h, :w].reshape(B, C, h // patch, patch, w // patch, patch)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C * patch * patch)

    ta, tb = tiles(a), tiles(b)
    za, zb = standardise(ta, -1), standardise(tb, -1)
    return (za * zb).mean(-1).mean(-1)


def multiscale_ncc(a: Tensor, b: Tensor, patches=(None, 13), weights=(0.5, 0.5)) -> Tensor:
    """DiffPose's multiscale NCC: a weighted sum of global (``None``) and patch NCCs, ``-> (B,)``."""
    total = 0.0
    for p, w in zip(patches, weights):
        total = total + w * (ncc(a, b) if p is None else patch_ncc(a, b, p))
    return total


def sobel(x: Tensor) -> Tensor:
    """Horizontal and vertical Sobel derivatives stacked as channels, ``(B, C, H, W) -> (B, 2C, H, W)``."""
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=x.dtype, device=x.device)
    kernels = torch.stack([k, k.T])[:, None].repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels, groups=x.shape[1])


def gradient_ncc(a: Tensor, b: Tensor, patch: int | None = None) -> Tensor:
    """NCC of image gradients (edges), ``-> (B,)``: insensitive to smooth intensity differences."""
    ga, gb = sobel(a), sobel(b)
    return ncc(ga, gb) if patch is None else patch_ncc(ga, gb, patch)


def quadratic_match(target: Tensor, source: Tensor, mask: Tensor | None = None) -> Tensor:
    """``source`` (B, C, H, W) replaced by its least-squares quadratic ``a + b s + c s^2`` fitted to
    ``target`` (B, C, H, W) over ``mask`` (B or 1, 1, H, W; None: every pixel), one fit per image.

    NCC forgives a linear map between the DRR's line integrals and the X-ray's log intensities, but
    beam hardening, scatter and a fluoroscope's export curve compress thick paths: the map bends.
    The fit is differentiable, so LM's Jacobians see it; ``s`` is standardised first to keep the
    3 x 3 normal equations well conditioned. At the finest level it helped on tuning X-rays and not
    on report ones, so it is an option, not the default (docs/results.md, thirty-second session)."""
    dtype = torch.promote_types(target.dtype, source.dtype)
    t, s = target.to(dtype).flatten(1), source.to(dtype).flatten(1)
    w = torch.ones_like(t) if mask is None else mask.expand_as(source).to(dtype).flatten(1)
    z = standardise(s, 1, w)  # 0 where masked: those pixels are weighted out of the fit and of every NCC
    basis = torch.stack([torch.ones_like(z), z, z * z], -1)  # (B, N, 3)
    normal = torch.einsum("bni,bn,bnj->bij", basis, w, basis) + 1e-6 * torch.eye(3, dtype=dtype, device=t.device)
    coef = torch.linalg.solve(normal, torch.einsum("bni,bn,bn->bi", basis, w, t))
    return (basis @ coef[..., None])[..., 0].reshape(source.shape)
