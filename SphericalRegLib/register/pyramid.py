"""The X-ray at each image size the stages ask for, made once per size."""

from __future__ import annotations

import torch
from torch import Tensor

from ..camera import Camera
from ..xray import preprocess, preprocess_for_camera

__all__ = ["XrayPyramid"]


class XrayPyramid:
    """Line integrals of one X-ray on square grids, cached per size.

    image: (rows, cols) detector intensities (air bright; see :func:`~SphericalRegLib.xray.preprocess`)
    or, with ``line_integrals``, -log(I/I0) already; camera: its :class:`Camera`; encoding: how its
    values relate to line integrals (:data:`~SphericalRegLib.xray.ENCODINGS`, or "auto": from the
    pixels). The renderers of the intensity stage take squares, so every level is ``n x n`` of the
    same detector; the networks take the X-ray in the intrinsics they were trained for (:meth:`in_camera`).
    """

    def __init__(self, image: Tensor, camera: Camera, photometric: str = "MONOCHROME2",
                 line_integrals: bool = False, device="cpu", encoding: str = "auto"):
        self.image = torch.as_tensor(image)
        self.camera = camera
        self.photometric = photometric
        self.line_integrals = line_integrals
        self.encoding = encoding
        self.device = device
        self._levels: dict[int, tuple[Tensor, Camera, Tensor]] = {}
        self._warped: dict[Camera, tuple[Tensor, Camera, Tensor]] = {}

    def level(self, size: int) -> tuple[Tensor, Camera, Tensor]:
        """``(x, camera, valid)``: line integrals ``(1, 1, size, size)`` float32 on the device, the
        camera of that grid and the mask ``(size, size)`` of pixels inside the exposed field."""
        if size not in self._levels:
            x, cam, valid = preprocess(self.image, self.camera, (size, size), photometric=self.photometric,
                                       line_integrals=self.line_integrals, encoding=self.encoding)
            self._levels[size] = x.to(self.device).float()[None, None], cam, valid
        return self._levels[size]

    def in_camera(self, target: Camera) -> tuple[Tensor, Camera, Tensor]:
        """``(x, target, valid)`` like :meth:`level`, but in ``target``'s intrinsics (a model's
        training camera): the X-ray as that C-arm would have imaged it from the same source."""
        if target not in self._warped:
            x, valid = preprocess_for_camera(self.image, self.camera, target, self.photometric, self.line_integrals,
                                             self.encoding)
            self._warped[target] = x.to(self.device).float()[None, None], target, valid
        return self._warped[target]
