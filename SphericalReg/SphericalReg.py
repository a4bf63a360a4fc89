"""SphericalReg: 2D/3D X-ray to CT registration in 3D Slicer.

The panel is thin: it binds the .ui to a parameter node and calls SphericalRegLogic, which does
all the work (and runs without Qt). Registration and training run as a ``PythonSlicer``
subprocess so the application stays responsive; a QTimer polls their output for progress.
"""

import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLLinearTransformNode, vtkMRMLScalarVolumeNode
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper, parameterPack
from slicer.util import VTKObservationMixin

from SphericalRegLogic import (
    CONFIDENCE_WARNING,
    SphericalRegLogic,
    camera_from_node,
    create_drr_node,
    difference_image,
    edge_image,
    missing_packages,
    parse_progress,
    read_result,
    render_drr,
    set_camera_attributes,
    show_overlay,
    xray_image_from_node,
)


class SphericalReg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SphericalReg"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["SphericalReg contributors"]
        self.parent.helpText = """
Registers one X-ray to a CT: a patient-specific pose regressor, then Levenberg-Marquardt on a
learnt spherical similarity (Chen and Kong, WACV 2026). The result is a transform that places
the C-arm (X-ray source and detector) in the CT's space; the CT is not moved.
"""
        self.parent.acknowledgementText = """
Method: M. Chen and Y. Kong, "Intraoperative 2D/3D Registration via Spherical Similarity
Learning and Inference-Time Differentiable Levenberg-Marquardt Optimization", WACV 2026.
DRRs by DiffDRR (V. Gopalakrishnan and P. Golland).
"""


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
    modelPath: Path
    geometry: XrayGeometry
    useInitialPose: bool = False
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    showDifference: bool = False
    drrVolume: vtkMRMLScalarVolumeNode
    differenceVolume: vtkMRMLScalarVolumeNode


class SphericalRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_MS = 200

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._process = None
        self._job = None  # ("register", result path, camera) or ("train", model path)
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.timeout.connect(self._poll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SphericalReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SphericalRegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.xraySelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onXrayChanged)
        self.ui.fillGeometryButton.connect("clicked(bool)", self.onFillGeometry)
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.opacitySlider.connect("valueChanged(double)", self.updateOverlay)
        self.ui.differenceCheckBox.connect("toggled(bool)", self.updateOverlay)
        self.ui.cancelButton.enabled = False
        self.ui.confidenceWarningLabel.visible = False
        self.ui.progressBar.setValue(0)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        if self._process is not None:
            self._process.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.ctVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.ctVolume = first

    def setParameterNode(self, inputParameterNode: Optional[SphericalRegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        busy = self._process is not None
        model = p and p.modelPath and Path(p.modelPath).is_file()
        self.ui.registerButton.enabled = bool(p and p.ctVolume and p.xrayVolume and model and not busy)
        self.ui.registerButton.toolTip = "" if self.ui.registerButton.enabled else \
            "Select a CT, an X-ray and a model file (.pt) made by Train"
        self.ui.trainButton.enabled = bool(p and p.ctVolume and not busy)
        self.ui.cancelButton.enabled = busy
        self.ui.exportButton.enabled = bool(p and p.outputTransform)

    # ------------------------------------------------------------------ geometry

    def _camera(self):
        from SphericalRegLib.camera import Camera

        g = self._parameterNode.geometry
        rows, cols = xray_image_from_node(self._parameterNode.xrayVolume).shape
        return Camera(g.sdd, (g.pixelSpacingU, g.pixelSpacingV), (g.principalPointU, g.principalPointV),
                      (rows, cols)).validate("X-ray geometry in the panel")

    def onXrayChanged(self, node) -> None:
        if node is not None and self._parameterNode is not None:
            with slicer.util.tryWithErrorDisplay("Could not read the X-ray's geometry.", waitCursor=True):
                self._fillGeometry(node, quiet=True)

    def onFillGeometry(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not read the X-ray's geometry.", waitCursor=True):
            self._fillGeometry(self._parameterNode.xrayVolume, quiet=False)

    def _fillGeometry(self, node, quiet: bool) -> None:
        camera = camera_from_node(node) if node is not None else None
        if camera is None:
            if not quiet:
                slicer.util.warningDisplay("The X-ray has no stored geometry, geometry.json beside its file or "
                                           "DICOM geometry tags: type the C-arm geometry in the panel.")
            return
        g = self._parameterNode.geometry
        g.sdd = camera.sdd
        g.pixelSpacingU, g.pixelSpacingV = camera.pixel_spacing
        g.principalPointU, g.principalPointV = camera.principal_point

    # ------------------------------------------------------------------ jobs

    def _dependenciesReady(self) -> bool:
        if not missing_packages():
            return True
        with slicer.util.tryWithErrorDisplay("Installing SphericalReg's Python packages failed.", waitCursor=True):
            if self.logic.install_dependencies(confirm=True):
                return True
        still = missing_packages()
        if still:
            slicer.util.errorDisplay("SphericalReg cannot run without: " + ", ".join(still))
        return not still

    def onRegister(self) -> None:
        if not self._dependenciesReady():
            return
        with slicer.util.tryWithErrorDisplay("Could not start the registration.", waitCursor=True):
            p = self._parameterNode
            camera = self._camera()
            if camera_from_node(p.xrayVolume) is None and not slicer.util.confirmOkCancelDisplay(
                f"{p.xrayVolume.GetName()} has no stored, geometry.json or DICOM geometry. Register with the "
                f"geometry in the panel (sdd {camera.sdd:g} mm, pixel spacing {camera.pixel_spacing} mm, "
                f"principal point {camera.principal_point} px)?", "SphericalReg: X-ray geometry"):
                return
            set_camera_attributes(p.xrayVolume, camera)  # the edited geometry travels with the scene
            init = None
            if p.useInitialPose and p.outputTransform:
                init = self.logic.pose_from_transform_node(p.outputTransform)
            work = tempfile.mkdtemp(prefix="SphericalReg-", dir=slicer.app.temporaryPath)
            env = slicer.util.startupEnvironment()
            self._process, result_path = self.logic.start_registration(
                p.ctVolume, p.xrayVolume, camera, p.modelPath, work, init, env=env)
            self._job = ("register", result_path, camera)
            self._started("Registering ...")

    def onTrain(self) -> None:
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Save the trained model as",
                                              "", "SphericalReg model (*.pt)")
        if not path or not self._dependenciesReady():
            return
        with slicer.util.tryWithErrorDisplay("Could not start training.", waitCursor=True):
            work = tempfile.mkdtemp(prefix="SphericalReg-train-", dir=slicer.app.temporaryPath)
            self._process = self.logic.start_training(self._parameterNode.ctVolume, path, work,
                                                      env=slicer.util.startupEnvironment())
            self._job = ("train", path)
            self._started("Training (this takes a while) ...")

    def _started(self, message: str) -> None:
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = message
        self.ui.confidenceLabel.text = ""
        self.ui.confidenceWarningLabel.visible = False
        self._timer.start()
        self._updateButtons()

    def onCancel(self) -> None:
        if self._process is not None:
            self._process.cancel()

    def _poll(self) -> None:
        for line in self._process.poll():
            logging.info(f"SphericalReg: {line}")
            progress = parse_progress(line)
            if progress is None:
                continue
            if progress.fraction is not None:
                self.ui.progressBar.setValue(int(round(100 * progress.fraction)))
            self.ui.statusLabel.text = progress.message[:120]
        if self._process.running:
            return
        self._timer.stop()
        process, job = self._process, self._job
        self._process, self._job = None, None
        self._updateButtons()
        if process.cancelled:
            self.ui.statusLabel.text = "Cancelled."
        elif process.returncode != 0:
            self.ui.statusLabel.text = f"Failed (exit code {process.returncode}); see the Python console / log."
            slicer.util.errorDisplay(f"SphericalReg {job[0]} failed: {self.ui.statusLabel.text}")
        elif job[0] == "train":
            self._parameterNode.modelPath = Path(job[1])
            self.ui.statusLabel.text = f"Model saved to {job[1]}"
        else:
            with slicer.util.tryWithErrorDisplay("Could not read the registration result.", waitCursor=True):
                self._showResult(read_result(job[1]), job[2])

    def _showResult(self, result: dict, camera) -> None:
        p = self._parameterNode
        uncertainty = result.get("uncertainty") or {}
        node = self.logic.store_result(p.ctVolume, result["camera_from_world"], p.outputTransform,
                                       {**{k: result.get(k) for k in ("confidence", "similarity", "seconds", "iterations")},
                                        **{k: uncertainty.get(k) for k in ("depth_sd_mm", "inplane_sd_mm")}})
        p.outputTransform = node
        self._showGeometry(node, camera)
        drr = render_drr(p.ctVolume, camera, result["camera_from_world"])
        if p.drrVolume:
            slicer.mrmlScene.RemoveNode(p.drrVolume)
        p.drrVolume = create_drr_node(p.xrayVolume, drr)
        self.updateOverlay()
        confidence = result.get("confidence")
        low = confidence is None or confidence < CONFIDENCE_WARNING
        self.ui.confidenceLabel.text = "n/a (model not calibrated)" if confidence is None else f"{confidence:.2f}"
        self.ui.confidenceWarningLabel.visible = low
        self.ui.progressBar.setValue(100)
        status = f"Registered in {result.get('seconds', float('nan')):.1f} s"
        if uncertainty:
            status += (f"; uncertainty at the CT centre {uncertainty['depth_sd_mm']:.2f} mm along the beam, "
                       f"{uncertainty['inplane_sd_mm']:.2f} mm across it"
                       + ("" if uncertainty.get("calibrated") else " (uncalibrated)"))
        for warning in result.get("warnings") or []:
            status += f"\nWarning: {warning}"
        self.ui.statusLabel.text = status

    def _showGeometry(self, transform_node, camera) -> None:
        """Detector plane, beam outline and source under the result transform (replacing earlier ones)."""
        xray = self._parameterNode.xrayVolume
        for role in ("detector", "beam", "source"):
            old = transform_node.GetNodeReference("SphericalReg." + role)
            if old is not None:
                slicer.mrmlScene.RemoveNode(old)
        nodes = {
            "detector": self.logic.detector_plane_node(camera, transform_node, xray_image_from_node(xray),
                                                       f"{xray.GetName()} on detector"),
            "beam": self.logic.beam_model_node(camera, transform_node),
            "source": self.logic.source_marker_node(transform_node),
        }
        for role, node in nodes.items():
            transform_node.SetNodeReferenceID("SphericalReg." + role, node.GetID())

    def updateOverlay(self, *args) -> None:
        p = self._parameterNode
        if not (p and p.xrayVolume and p.drrVolume):
            return
        foreground = p.drrVolume
        if self.ui.differenceCheckBox.checked:
            xray, drr = xray_image_from_node(p.xrayVolume), xray_image_from_node(p.drrVolume)
            if p.differenceVolume:
                slicer.mrmlScene.RemoveNode(p.differenceVolume)
            p.differenceVolume = create_drr_node(p.xrayVolume, edge_image(drr) if self.ui.edgesRadioButton.checked
                                                 else difference_image(xray, drr), f"{p.xrayVolume.GetName()} vs DRR")
            foreground = p.differenceVolume
        show_overlay(p.xrayVolume, foreground, self.ui.opacitySlider.value)

    def onExport(self) -> None:
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Export the C-arm pose (world_from_camera)",
                                              "world_from_camera.tfm", "ITK transform (*.tfm *.txt *.h5)")
        if path:
            with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
                # the file dialog already asked before replacing an existing file
                self.logic.export_transform(self._parameterNode.outputTransform, path, overwrite=True)


class SphericalRegTest(ScriptedLoadableModuleTest):
    """End to end on the example: the diffdrr chest CT, one simulated X-ray, the shipped model."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_register_simulated_case()

    def test_register_simulated_case(self):
        import torch
        from SphericalRegLib.example import SHIPPED_MODEL, example_ct_path
        from SphericalRegLib.io import read_truth
        from SphericalRegLib.metrics import mtre
        from SphericalRegLib.simulate import write_cases

        self.delayDisplay("Loading the example CT")
        model = Path(self._module_dir()) / "Resources" / "Models" / SHIPPED_MODEL.name
        if not model.exists():
            model = SHIPPED_MODEL
        self.assertTrue(model.exists(), f"shipped model not found at {model}")
        ct = slicer.util.loadVolume(str(example_ct_path()))

        self.delayDisplay("Simulating one X-ray of it")
        out = Path(tempfile.mkdtemp(prefix="SphericalRegTest-", dir=slicer.app.temporaryPath))
        (case,) = write_cases(example_ct_path(), out / "cases", 1, seed=2026, log=logging.info)
        xray_file = next(f for f in Path(case).iterdir() if f.name.startswith("xray."))
        xray = slicer.util.loadVolume(str(xray_file), {"singleFile": True})
        camera = camera_from_node(xray)  # from the geometry.json beside the file
        self.assertIsNotNone(camera)

        self.delayDisplay("Registering")
        logic = SphericalRegLogic()
        node, result = logic.register(ct, xray, camera, model)
        T = torch.as_tensor(logic.pose_from_transform_node(node))
        self.assertTrue(torch.allclose(T, result.camera_from_world.to(T), atol=1e-6))
        self.assertIsNotNone(node.GetAttribute("SphericalReg.iterations"))

        truth, landmarks = read_truth(case)
        error = float(mtre(T, truth.to(T), landmarks.to(T)))
        logging.info(f"SphericalReg self-test: mTRE {error:.2f} mm, confidence {result.confidence}")
        self.assertLess(error, 10.0)

        drr = create_drr_node(xray, render_drr(ct, camera, T))
        show_overlay(xray, drr, 0.5)
        detector = logic.detector_plane_node(camera, node, xray_image_from_node(xray))
        self.assertEqual(detector.GetParentTransformNode(), node)
        self.delayDisplay("Test passed")

    @staticmethod
    def _module_dir() -> str:
        return os.path.dirname(slicer.modules.sphericalreg.path)
