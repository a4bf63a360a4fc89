"""The module's parameter node: what the panel's widgets are bound to (``parameterNodeWrapper``).

Only the application has ``slicer.parameterNodeWrapper`` (Slicer 5.2 and later); importing this
module elsewhere raises ImportError, and nothing else in the logic package imports it at load
time. Annotations are evaluated by the wrapper, so they use only what Python 3.9 evaluates
(``typing.Annotated``, no ``X | None``), and this file has no ``from __future__ import annotations``.
"""

from pathlib import Path
from typing import Annotated

from slicer import vtkMRMLLinearTransformNode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper, parameterPack

DEVICES = ("auto", "cpu", "cuda")


def default_model_path() -> Path:
    """The shipped example model: <qt-scripted-modules>/Resources/Models in an installed extension,
    <repository>/Resources/Models in a source tree; the empty path when neither has it. (The
    path line edit is bound to a pathlib.Path, so a default of Path() would show ".")"""
    here = Path(__file__).resolve().parent
    for root in (here.parent, here.parent.parent):
        model = root / "Resources" / "Models" / "chest_example.pt"
        if model.is_file():
            return model
    return Path("")
COMPARE_MODES = ("drr", "difference", "edges")


@parameterPack
class XrayGeometry:
    """The C-arm geometry of the X-ray, as in geometry.json (principal point in pixels)."""

    sdd: Annotated[float, WithinRange(1.0, 5000.0)] = 1020.0
    pixelSpacingU: Annotated[float, WithinRange(0.001, 10.0)] = 0.2
    pixelSpacingV: Annotated[float, WithinRange(0.001, 10.0)] = 0.2
    principalPointU: Annotated[float, WithinRange(-10000.0, 20000.0)] = 0.0
    principalPointV: Annotated[float, WithinRange(-10000.0, 20000.0)] = 0.0


@parameterNodeWrapper
class SphericalRegParameterNode:
    ctVolume: vtkMRMLScalarVolumeNode
    xrayVolume: vtkMRMLScalarVolumeNode
    outputTransform: vtkMRMLLinearTransformNode
    modelPath: Path = default_model_path()
    geometry: XrayGeometry
    # an image-intensifier C-arm's distortion from its dewarp calibration (0, 0: a flat panel)
    pincushion: Annotated[float, WithinRange(-0.3, 0.3)] = 0.0
    sDistortion: Annotated[float, WithinRange(-0.3, 0.3)] = 0.0
    useInitialPose: bool = False
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    showDifference: bool = False
    compareMode: Annotated[str, Choice(list(COMPARE_MODES))] = "difference"
    drrVolume: vtkMRMLScalarVolumeNode
    differenceVolume: vtkMRMLScalarVolumeNode
    # the second view (optional): its X-ray, its geometry, its relative pose (a transform whose
    # matrix is camera_from_reference; None: a geometry.json beside the X-ray's file), how well that
    # pose is known (0: exact), and its DRR after a registration
    xrayVolume2: vtkMRMLScalarVolumeNode
    geometry2: XrayGeometry
    relativePose2: vtkMRMLLinearTransformNode
    relativeSdDeg: Annotated[float, WithinRange(0.0, 45.0)] = 0.0
    drrVolume2: vtkMRMLScalarVolumeNode
