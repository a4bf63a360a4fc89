"""The review display: the X-ray in the background of the slice views, the DRR (or its difference
from the X-ray, or its edges) in the foreground.

Changing the opacity only changes the composite nodes' foreground opacity: the views keep their
zoom and pan, and no volume is made or removed. The views are fitted once, when a new result is
shown. The image helpers are the library's (``intensity.standardise``, ``intensity.sobel``), the
same the overlay PNG of ``sphericalreg register`` uses.
"""

from __future__ import annotations

import numpy as np

import slicer

from .nodes import create_drr_node, scene_of

COMPARE_MODES = ("drr", "difference", "edges")


def _standardised(image):
    import torch
    from SphericalRegLib.intensity import standardise

    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None]
    return standardise(x, (1, 2, 3))


def difference_image(xray, drr) -> np.ndarray:
    """X-ray minus DRR after each is standardised; the X-ray (detector intensities, bone dark) is
    negated first so that bone is bright in both."""
    return (_standardised(-np.asarray(xray, np.float32)) - _standardised(drr))[0, 0].numpy()


def edge_image(image) -> np.ndarray:
    """Sobel gradient magnitude of the standardised image: the DRR's bone edges to lay over the X-ray."""
    from SphericalRegLib.intensity import sobel

    return sobel(_standardised(image))[0].norm(dim=0).numpy()


def comparison_node(xray_node, drr_node, mode: str, node=None):
    """The foreground for ``mode``: the DRR itself, or a difference/edge volume on the X-ray's grid,
    written into ``node`` when given (so a mode change updates one volume, never adds another)."""
    if mode not in COMPARE_MODES:
        raise ValueError(f"compare mode {mode!r} is not one of {COMPARE_MODES}")
    if mode == "drr":
        return drr_node
    from .nodes import xray_image_from_node

    xray, drr = xray_image_from_node(xray_node), xray_image_from_node(drr_node)
    image = edge_image(drr) if mode == "edges" else difference_image(xray, drr)
    name = f"{xray_node.GetName()} vs DRR"
    node = create_drr_node(xray_node, image, name, node=node)
    if node.GetName() != name:  # the one comparison volume, now on another view's X-ray
        node.SetName(scene_of(xray_node).GenerateUniqueName(name))
    return node


def _composites(scene):
    return [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]


def show_overlay(xray_node, foreground_node, opacity: float = 0.5, fit: bool = False) -> None:
    """X-ray in the background, ``foreground_node`` in the foreground of every slice view.

    ``fit`` (a new result) also fits and aligns the views to the X-ray in the application; without
    it the user's zoom and pan are kept.
    """
    scene = scene_of(xray_node)
    for composite in _composites(scene):
        composite.SetBackgroundVolumeID(xray_node.GetID())
        composite.SetForegroundVolumeID(foreground_node.GetID() if foreground_node else None)
        composite.SetForegroundOpacity(float(opacity))
    app = getattr(slicer, "app", None)
    if fit and app is not None and app.layoutManager() is not None:
        slicer.util.setSliceViewerLayers(background=xray_node, foreground=foreground_node,
                                         foregroundOpacity=float(opacity), fit=True, rotateToVolumePlane=True)


def set_overlay_opacity(scene, opacity: float) -> None:
    """Only the foreground opacity of every slice view: nothing else changes."""
    for composite in _composites(scene or slicer.mrmlScene):
        composite.SetForegroundOpacity(float(opacity))
