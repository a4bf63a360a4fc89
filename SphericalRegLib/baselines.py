"""Peers measured on the same cases: a DiffPose-style intensity registration built on DiffDRR
alone (its Siddon renderer, multiscale NCC, Adam on the pose from the given starting pose)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from .camera import Camera
from .diffdrr_bridge import siddon_line_integrals, make_diffdrr
from .intensity import multiscale_ncc
from .optimize import adam
from .register import StageRecord, XrayPyramid
from .volume import Volume, hu_to_mu

__all__ = ["DiffPoseNCC"]


@dataclass
class DiffPoseNCC:
    """DiffPose's refinement: 1 - multiscale NCC (global and 13 px patches, 0.5/0.5), Adam with
    lr 7.5e-3 rad / 7.5 mm and a per-iteration decay, on DRRs from DiffDRR's Siddon renderer.

    ``spacing_mm`` and ``image_size`` set the CT and image resolution it renders at: the paper ran
    on a GPU; on a CPU the same algorithm has to render coarser to finish in comparable time.
    """

    iterations: int = 150
    image_size: int = 96
    spacing_mm: float = 2.0
    lr_rot: float = 7.5e-3
    lr_trans: float = 7.5
    decay: float = 0.98
    device: str = "cpu"

    def prepare(self, ct: Volume) -> "DiffPoseNCC":
        coarse = ct.with_spacing(self.spacing_mm)
        self._mu = Volume(hu_to_mu(coarse.data.float()), coarse.ijk_to_ras)
        self._drr = {}
        return self

    def register(self, image: Tensor, camera: Camera, init: Tensor, photometric: str = "MONOCHROME2") -> StageRecord:
        """``image`` (rows, cols) detector intensities on ``camera``, from ``init`` (4, 4): the
        same record as each of our stages."""
        start = time.perf_counter()
        target, cam, _ = XrayPyramid(image, camera, photometric, device=self.device).level(self.image_size)
        if cam not in self._drr:
            self._drr[cam] = make_diffdrr(self._mu, cam).to(self.device)
        drr = self._drr[cam]

        def cost(T):
            img = siddon_line_integrals(self._mu, T, cam, drr=drr)[:, None]
            return 1 - multiscale_ncc(target.expand(len(T), -1, -1, -1), img)

        pose = torch.as_tensor(init, dtype=torch.float64, device=self.device)[None]
        res = adam(cost, pose, iters=self.iterations, lr_rot=self.lr_rot, lr_trans=self.lr_trans,
                   lr_decay=self.decay)
        return StageRecord.from_optimizer(res, time.perf_counter() - start)
