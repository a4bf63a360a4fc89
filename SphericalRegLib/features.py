"""CT feature volumes for rendering: the attenuation itself plus SE(3)-equivariant learnt channels.

The learnt channels are O(3)-invariant scalar fields (irreps ``0e``) computed by a small e3nn
voxel CNN that carries vector (``1o``) and rank-2 (``2e``) features inside, gated as in e3nn.
Because the outputs are invariant fields, rotating (or mirroring) the CT moves its features with
it and leaves their values unchanged, so DRRs of the feature volume are consistent across
C-arm poses and patient orientations. Channel 0 is ``mu`` itself, so the physical DRR stays
available; the learnt channels are ``mu * softplus(h) / log 2``: non-negative, zero in air and
equal to ``mu`` at initialisation-like ``h = 0``, so their line integrals have the scale of the
physical DRR.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import Gate
from torch import Tensor, nn

from .errors import InputError
from .volume import MU_WATER

__all__ = ["VoxelConvolution", "EquivariantFeatures", "PlainFeatures"]


def _as_batch(mu: Tensor) -> tuple[Tensor, bool]:
    """``(1, I, J, K)`` or ``(B, 1, I, J, K)`` -> ``(B, 1, I, J, K)`` and whether a batch was given."""
    if mu.dim() == 4:
        return mu[None], False
    if mu.dim() == 5:
        return mu, True
    raise InputError("mu", f"has shape {tuple(mu.shape)}", "(1, I, J, K) or (B, 1, I, J, K)")


def _steps(spacing) -> tuple[float, float, float]:
    steps = tuple(float(s) for s in torch.as_tensor(spacing).reshape(-1).tolist())
    if len(steps) != 3 or not min(steps) > 0:
        raise InputError("spacing", f"is {steps}", "three positive voxel sizes in mm")
    return steps


class VoxelConvolution(nn.Module):
    """e3nn's voxel convolution (``e3nn.nn.models.v2104.voxel_convolution.Convolution``) with the
    voxel spacing given per call instead of at construction.

    The kernel is ``sum_b R_b(|x|) Y(x/|x|) (x) w_b`` over the voxel offsets ``x`` in mm that fall
    within ``radius_voxels * max(spacing)``, so an anisotropic grid gets a kernel of the same
    physical shape; the learnt weights do not depend on the grid. The radius is relative to the
    coarsest voxel: the network sees every CT at its working resolution with at least three taps
    per axis.
    """

    def __init__(self, irreps_in, irreps_out, lmax: int = 2, num_radial_basis: int = 3,
                 radius_voxels: float = 1.8):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.num_radial_basis = num_radial_basis
        self.radius_voxels = radius_voxels
        self.sc = o3.Linear(self.irreps_in, self.irreps_out)
        self.tp = o3.FullyConnectedTensorProduct(
            self.irreps_in, self.irreps_sh, self.irreps_out,
            shared_weights=False, compile_left_right=False, compile_right=True,
        )
        self.weight = nn.Parameter(torch.randn(num_radial_basis, self.tp.weight_numel))

    def kernel(self, steps: tuple[float, float, float], dtype, device) -> Tensor:
        """``(irreps_out.dim, irreps_in.dim, x, y, z)`` for voxels of size ``steps`` mm."""
        r = self.radius_voxels * max(steps)
        axes = [torch.arange(-math.floor(r / s), math.floor(r / s) + 1, dtype=dtype, device=device) * s
                for s in steps]
        lattice = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        emb = soft_one_hot_linspace(lattice.norm(dim=-1), start=0.0, end=r, number=self.num_radial_basis,
                                    basis="smooth_finite", cutoff=True)
        sh = o3.spherical_harmonics(self.irreps_sh, lattice, normalize=True, normalization="component")
        weight = emb @ self.weight.to(dtype) / lattice[..., 0].numel()
        kernel = self.tp.right(sh, weight)
        return torch.einsum("xyzio->oixyz", kernel)

    def forward(self, x: Tensor, steps: tuple[float, float, float]) -> Tensor:
        """``(B, irreps_in.dim, I, J, K) -> (B, irreps_out.dim, I, J, K)``, zero padding."""
        kernel = self.kernel(steps, x.dtype, x.device)
        pad = tuple(n // 2 for n in kernel.shape[2:])
        sc = self.sc(x.movedim(1, -1)).movedim(-1, 1)
        return sc + F.conv3d(x, kernel, padding=pad)


def _gated_irreps(scalars: int, vectors: int, tensors: int) -> Gate:
    gated = o3.Irreps(f"{vectors}x1o + {tensors}x2e").simplify()
    return Gate(
        f"{scalars}x0e", [F.silu],
        f"{gated.num_irreps}x0e", [torch.sigmoid],
        gated,
    )


class EquivariantFeatures(nn.Module):
    """``mu -> [mu, learnt invariant channels]`` by a gated e3nn voxel CNN (three convolutions).

    ``channels`` is the total output count C (channel 0 = mu, C - 1 learnt). The hidden layers
    carry ``scalars x 0e + vectors x 1o + tensors x 2e`` features; the defaults cost well under a
    second forward and backward at 64^3 on two CPU cores.
    """

    def __init__(self, channels: int = 3, scalars: int = 4, vectors: int = 2, tensors: int = 1,
                 lmax: int = 2, num_radial_basis: int = 3, radius_voxels: float = 1.8):
        super().__init__()
        if channels < 2:
            raise InputError("channels", f"is {channels}",
                             "at least 2 (mu plus learnt channels); PlainFeatures gives mu alone")
        self.channels = channels
        conv = dict(lmax=lmax, num_radial_basis=num_radial_basis, radius_voxels=radius_voxels)
        self.gate1 = _gated_irreps(scalars, vectors, tensors)
        self.gate2 = _gated_irreps(scalars, vectors, tensors)
        self.conv1 = VoxelConvolution("1x0e", self.gate1.irreps_in, **conv)
        self.conv2 = VoxelConvolution(self.gate1.irreps_out, self.gate2.irreps_in, **conv)
        self.conv3 = VoxelConvolution(self.gate2.irreps_out, f"{channels - 1}x0e", **conv)

    def forward(self, mu: Tensor, spacing) -> Tensor:
        """``mu (1, I, J, K)`` or ``(B, 1, I, J, K)`` in 1/mm, ``spacing (3,)`` mm along i, j, k
        -> ``(C, I, J, K)`` or ``(B, C, I, J, K)``."""
        x, batched = _as_batch(mu)
        x = x.to(self.conv1.weight.dtype)
        steps = _steps(spacing)
        h = x / MU_WATER
        h = self.gate1(self.conv1(h, steps).movedim(1, -1)).movedim(-1, 1)
        h = self.gate2(self.conv2(h, steps).movedim(1, -1)).movedim(-1, 1)
        h = self.conv3(h, steps)
        learnt = x * F.softplus(h) / math.log(2.0)
        out = torch.cat([x, learnt], dim=1)
        return out if batched else out[0]


class PlainFeatures(nn.Module):
    """The attenuation alone (C = 1): the ablation without the equivariant CNN."""

    channels = 1

    def forward(self, mu: Tensor, spacing) -> Tensor:
        """Same interface as :class:`EquivariantFeatures`; returns ``mu`` as ``(1, I, J, K)`` or ``(B, 1, I, J, K)``."""
        x, batched = _as_batch(mu)
        _steps(spacing)
        return x if batched else x[0]
