"""Exports for a navigation system: the pose as an ITK transform file, the scene as one MRML
bundle (.mrb) that Slicer reopens, and the transform sent over OpenIGTLink (only where the
SlicerOpenIGTLink extension is installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import vtk

import slicer

from .nodes import input_error, matrix_of, scene_of

OPENIGTLINK_PORT = 18944
"""OpenIGTLink's registered port."""


def export_transform(transform_node, path, overwrite: bool = False) -> Path:
    """Write the node's ToParent matrix (world_from_camera) as an ITK transform file (.tfm, .txt,
    .h5) that Slicer loads back as the same transform; refuses to replace a file unless ``overwrite``."""
    from SphericalRegLib.io import write_itk_transform

    m = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToParent(m)
    return write_itk_transform(path, matrix_of(m), overwrite=overwrite)


def save_scene_bundle(path, scene=None, overwrite: bool = False) -> Path:
    """Save the whole scene (CT, X-ray, detector plane, beam, source, DRR, transform) as one MRML
    bundle (.mrb). In the application through ``slicer.util.saveScene`` (the "SceneFile" writer,
    which also stores a screenshot); elsewhere (PythonSlicer, slicer-core) through
    ``vtkMRMLScene.WriteToMRB``, the call both end in."""
    path = Path(path)
    if path.suffix.lower() != ".mrb":
        raise input_error(path, "is not a .mrb file name", "a scene bundle name ending in .mrb")
    if path.exists() and not overwrite:
        raise input_error(path, "already exists", "a new file name, or overwrite")
    scene = scene or slicer.mrmlScene
    app = getattr(slicer, "app", None)
    if app is not None and scene is slicer.mrmlScene and hasattr(slicer.util, "saveScene"):
        ok = slicer.util.saveScene(str(path))
    else:
        ok = scene.WriteToMRB(str(path))
    if not ok or not path.is_file():
        raise input_error(path, "could not be written", "a writable location for the scene bundle")
    return path


def openigtlink_available() -> bool:
    """Whether the SlicerOpenIGTLink extension (vtkMRMLIGTLConnectorNode) is installed."""
    return hasattr(slicer, "vtkMRMLIGTLConnectorNode")


def send_transform(transform_node, host: str = "localhost", port: int = OPENIGTLINK_PORT, connector=None):
    """Send the transform (world_from_camera) to a navigation system over OpenIGTLink.

    A client connector to ``host:port`` is made unless ``connector`` (a vtkMRMLIGTLConnectorNode the
    user set up in the OpenIGTLinkIF module) is given. The transform is registered as an outgoing
    node, so it is sent again whenever it changes (a new registration), and pushed now. Returns
    the connector. Raises when SlicerOpenIGTLink is not installed.
    """
    if not openigtlink_available():
        raise input_error("OpenIGTLink", "is not available", "the SlicerOpenIGTLink extension, from the Extensions Manager")
    scene = scene_of(transform_node)
    if connector is None:
        connector = scene.AddNewNodeByClass("vtkMRMLIGTLConnectorNode", scene.GenerateUniqueName("SphericalReg OpenIGTLink"))
        connector.SetTypeClient(host, int(port))
        connector.Start()
    connector.RegisterOutgoingMRMLNode(transform_node)
    connector.PushNode(transform_node)
    return connector


def default_bundle_name(xray_node: Optional[object]) -> str:
    name = xray_node.GetName() if xray_node is not None else "SphericalReg"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) + "-registration.mrb"
