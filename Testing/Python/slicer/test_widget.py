"""The panel's code driven on a real MRML scene (slicer-core) with stand-ins for Qt and the
application: every widget the .ui declares is a recording stand-in, so the handlers run as they
would in Slicer - geometry fill before and after the packages, a registration from Register to
the DRR on screen, opacity, Compare, scene close, Train's overwrite. It cannot show that Qt
itself behaves (no Qt here); it shows the panel's own logic and calls are right."""

import contextlib
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (MRML for Python) is not installed")

ROOT = Path(__file__).resolve().parents[3]
UI = ROOT / "SphericalReg" / "Resources" / "UI" / "SphericalReg.ui"


class Signal:
    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def emit(self, *args):
        for slot in self.slots:
            slot(*args)


class Widget:
    """Any widget: attributes are plain values, connect() records the slot per signal."""

    def __init__(self, name, cls):
        self.name, self.cls = name, cls
        self.signals = {}
        self.enabled, self.visible, self.checked, self.collapsed = True, True, False, False
        self.text, self.toolTip, self.value = "", "", 0.5
        self.lines, self.items, self.index = [], [], 0

    def connect(self, signal, slot):
        self.signals.setdefault(signal, Signal()).connect(slot)

    def emit(self, signal, *args):
        self.signals[signal].emit(*args)

    def setValue(self, v):
        self.value = v

    def appendPlainText(self, line):
        self.lines.append(line)

    def clear(self):
        self.lines, self.items, self.index = [], [], 0

    @property
    def currentIndex(self):
        return self.index

    def addItem(self, text, data=None):
        self.items.append((text, data))

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, i):
        self.index = i
        if "currentIndexChanged(int)" in self.signals:
            self.emit("currentIndexChanged(int)", i)

    def itemData(self, i):
        return self.items[i][1]

    def setMRMLScene(self, scene):
        pass


class ParameterNode:
    """The parameter node's fields as plain attributes (parameterNodeWrapper is the application's)."""

    def __init__(self):
        self.ctVolume = self.xrayVolume = self.outputTransform = self.drrVolume = self.differenceVolume = None
        self.modelPath = Path("")
        self.geometry = types.SimpleNamespace(sdd=1020.0, pixelSpacingU=0.2, pixelSpacingV=0.2,
                                              principalPointU=0.0, principalPointV=0.0)
        self.useInitialPose, self.device, self.overlayOpacity = False, "auto", 0.5
        self.showDifference, self.compareMode = False, "difference"
        self.xrayVolume2 = self.relativePose2 = self.drrVolume2 = None
        self.geometry2 = types.SimpleNamespace(sdd=1020.0, pixelSpacingU=0.2, pixelSpacingV=0.2,
                                               principalPointU=0.0, principalPointV=0.0)
        self.relativeSdDeg = 0.0
        self.pincushion = self.sDistortion = 0.0

    def connectGui(self, ui):
        return "tag"

    def disconnectGui(self, tag):
        pass

    def AddObserver(self, event, method, priority=0.0):
        return 1

    def RemoveObserver(self, tag):
        pass


def test_the_stand_in_parameter_node_has_every_field_of_the_real_one():
    """The real class needs the application's parameterNodeWrapper; its fields are read from the
    source, so a field added there and not here fails this test rather than the panel's tests."""
    import ast

    source = (Path(__file__).parents[3] / "SphericalReg" / "SphericalRegLogic" / "parameters.py").read_text()
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "SphericalRegParameterNode")
    fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    assert fields and fields <= set(vars(ParameterNode())), fields - set(vars(ParameterNode()))


@pytest.fixture
def panel(monkeypatch, tmp_path):
    scene = slicer.vtkMRMLScene()
    messages = []
    qt = types.ModuleType("qt")

    class QTimer:
        def __init__(self):
            self.timeout, self.active = Signal(), False

        def setInterval(self, ms):
            pass

        def start(self):
            self.active = True

        def stop(self):
            self.active = False

    qt.QTimer = QTimer
    qt.QFileDialog = types.SimpleNamespace(getSaveFileName=lambda *a: "")
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class Base:
        def __init__(self, parent=None):
            self.parent = parent or types.SimpleNamespace(isEntered=True)

    class WidgetBase(Base):
        def setup(self):
            self.layout = types.SimpleNamespace(addWidget=lambda w: None)

        def resourcePath(self, name):
            return str(ROOT / "SphericalReg" / "Resources" / name)

    class LogicBase:
        def __init__(self, parent=None):
            pass

    slm.ScriptedLoadableModule, slm.ScriptedLoadableModuleWidget = Base, WidgetBase
    slm.ScriptedLoadableModuleTest, slm.ScriptedLoadableModuleLogic = Base, LogicBase
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(connect=lambda *a: None, temporaryPath=str(tmp_path),
                                                             layoutManager=lambda: None), raising=False)
    widgets = {w.get("name"): Widget(w.get("name"), w.get("class")) for w in ET.parse(UI).getroot().iter("widget")}
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: widgets["SphericalReg"])
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda w: types.SimpleNamespace(**widgets))
    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: None)

    @contextlib.contextmanager
    def raising(message=None, show=True, waitCursor=False):
        yield  # errors surface in the test instead of a dialog

    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", raising)
    for name in ("errorDisplay", "warningDisplay", "infoDisplay"):
        monkeypatch.setattr(slicer.util, name, lambda text, *a, _n=name, **k: messages.append((_n, text)))
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *a, **k: messages.append(("confirm", a[0])) or True)
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: None, raising=False)
    sys.path.insert(0, str(ROOT / "SphericalReg"))
    for name in [m for m in sys.modules if m == "SphericalReg"]:
        del sys.modules[name]
    import SphericalReg as module
    import SphericalRegLogic.logic as logic_module

    parameter_node = ParameterNode()
    monkeypatch.setattr(logic_module.SphericalRegLogic, "getParameterNode", lambda self: parameter_node)
    widget = module.SphericalRegWidget()
    widget.setup()
    yield types.SimpleNamespace(widget=widget, ui=widgets, p=parameter_node, scene=scene, messages=messages,
                                module=module, qt=qt)
    widget.cleanup()
    sys.modules.pop("SphericalReg", None)


def _volume(scene, array, name, ijk_to_ras=np.eye(4)):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    return node


def test_every_handler_the_panel_connects_is_a_method(panel):
    for w in panel.ui.values():
        for signal in w.signals.values():
            assert all(callable(slot) for slot in signal.slots)
    assert panel.ui["deviceComboBox"].items[0][1] == "auto" and panel.ui["cancelButton"].enabled is False


def test_choosing_a_ct_as_the_xray_says_so_without_a_popup(panel):
    ct = _volume(panel.scene, np.zeros((4, 5, 6), np.int16), "ct")
    panel.widget.onXrayChanged(ct)
    assert "not a single-slice" in panel.ui["statusLabel"].text and not panel.messages


def test_geometry_before_the_packages_are_installed_is_quiet(panel, monkeypatch):
    import SphericalRegLogic.dependencies as deps

    xray = _volume(panel.scene, np.ones((1, 20, 24), np.float32), "xray")
    monkeypatch.setattr(deps, "installed_version", lambda name: None)
    panel.widget.onXrayChanged(xray)
    assert "once the Python packages are installed" in panel.ui["statusLabel"].text and not panel.messages


def test_register_to_the_drr_on_screen_then_opacity_compare_and_scene_close(panel, tiny_model_file, tiny_cases,
                                                                           monkeypatch):
    from SphericalRegLib.io import read_case

    import SphericalRegLogic.jobs as jobs

    case = read_case(tiny_cases / "case_000")
    ct = _volume(panel.scene, case.ct.data.permute(2, 1, 0).numpy(), "ct", case.ct.ijk_to_ras.numpy())
    xray = _volume(panel.scene, case.xray.numpy()[None], "xray")
    composite = panel.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    p = panel.p
    p.ctVolume, p.xrayVolume, p.modelPath = ct, xray, tiny_model_file
    panel.widget.initializeParameterNode()
    g = p.geometry
    g.sdd, (g.pixelSpacingU, g.pixelSpacingV) = case.camera.sdd, case.camera.pixel_spacing
    g.principalPointU, g.principalPointV = case.camera.principal_point
    panel.widget._updateButtons()
    assert panel.ui["registerButton"].enabled
    monkeypatch.setattr(jobs, "python_executable", lambda: sys.executable)
    panel.widget.onRegister()
    assert [m for m in panel.messages if m[0] == "confirm"], "no stored geometry: the panel asks"
    job = panel.widget.logic.job
    assert job is not None and panel.ui["cancelButton"].enabled and not panel.ui["registerButton"].enabled
    chosen_xray = p.xrayVolume
    p.xrayVolume = None  # the user changes the selection while it runs
    job.process.wait(240)
    panel.widget._poll()
    assert panel.widget.logic.job is None and not job.work_dir.exists()
    assert p.outputTransform is not None and p.drrVolume is not None
    assert chosen_xray.GetNodeReference("SphericalReg.drr") is p.drrVolume
    assert panel.ui["logTextEdit"].lines and panel.ui["progressBar"].value == 100
    assert not [m for m in panel.messages if m[0] == "errorDisplay"], panel.messages

    p.xrayVolume = chosen_xray
    panel.widget.updateComparison(fit=True)
    n_volumes = panel.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    panel.ui["opacitySlider"].emit("valueChanged(double)", 0.25)
    assert composite.GetForegroundOpacity() == pytest.approx(0.25)
    assert panel.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_volumes
    panel.ui["differenceCheckBox"].checked = True
    panel.ui["differenceCheckBox"].emit("toggled(bool)", True)
    difference = p.differenceVolume
    assert composite.GetForegroundVolumeID() == difference.GetID()
    panel.ui["edgesRadioButton"].checked = True
    panel.ui["edgesRadioButton"].emit("toggled(bool)", True)
    assert p.differenceVolume is difference and p.compareMode == "edges"
    assert panel.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_volumes + 1

    # a job running when the scene closes is cancelled and its folder deleted
    panel.widget.onRegister()
    job = panel.widget.logic.job
    panel.widget.onSceneStartClose(None, None)
    assert panel.widget.logic.job is None and job.process.cancelled and not job.work_dir.exists()
    assert "scene was closed" in panel.ui["statusLabel"].text


def test_train_replaces_the_file_the_dialog_confirmed(panel, tmp_path, monkeypatch):
    import SphericalRegLogic.jobs as jobs

    ct = _volume(panel.scene, np.zeros((4, 4, 4), np.int16), "ct")
    panel.p.ctVolume = ct
    model = tmp_path / "model.pt"
    model.write_bytes(b"old")
    panel.qt.QFileDialog.getSaveFileName = lambda *a: str(model)
    monkeypatch.setattr(jobs, "python_executable", lambda: sys.executable)
    monkeypatch.setattr(jobs, "train_command", lambda ct, out, python=None, device=None, extra_args=():
                        [sys.executable, "-c", f"open({str(out)!r}, 'wb').write(b'new')"])
    import SphericalRegLogic.logic as logic_module

    monkeypatch.setattr(logic_module, "train_command", jobs.train_command)
    panel.widget.onTrain()
    job = panel.widget.logic.job
    job.process.wait(60)
    panel.widget._poll()
    assert model.read_bytes() == b"new" and panel.p.modelPath == model
    assert not [m for m in panel.messages if m[0] == "errorDisplay"], panel.messages


def test_two_views_from_register_to_each_drr_over_its_xray(panel, tiny_model_file, tiny_two_view_case, monkeypatch):
    """A second X-ray (loaded from the case's view_1/ folder: its geometry and relative pose come from
    the geometry.json beside it) goes through Register to a DRR and a C-arm per view; the view
    chooser puts the selected view's X-ray under its DRR (and Compare works on it); the results
    area lists each view. Without a relative pose the panel names the view."""
    from SphericalRegLib.io import read_case

    import SphericalRegLogic.jobs as jobs

    case = read_case(tiny_two_view_case)
    scene, p, ui = panel.scene, panel.p, panel.ui
    ct = _volume(scene, case.ct.data.permute(2, 1, 0).numpy(), "ct", case.ct.ijk_to_ras.numpy())
    xray = _volume(scene, case.xray.numpy()[None], "ap")
    lateral = _volume(scene, case.views[1].xray.numpy()[None], "lateral")
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    monkeypatch.setattr(jobs, "python_executable", lambda: sys.executable)
    p.ctVolume, p.xrayVolume, p.modelPath = ct, xray, tiny_model_file
    g = p.geometry
    g.sdd, (g.pixelSpacingU, g.pixelSpacingV) = case.camera.sdd, case.camera.pixel_spacing
    g.principalPointU, g.principalPointV = case.camera.principal_point

    # the second X-ray has no file yet: no geometry read, no relative pose -> a message naming view_1
    p.xrayVolume2 = lateral
    panel.widget._updateButtons()
    assert ui["registerButton"].enabled
    with pytest.raises(Exception, match=r"view_1 \(lateral\).*no relative pose"):
        panel.widget.onRegister()
    assert panel.widget.logic.job is None

    # loaded from view_1/: the geometry.json beside it gives its geometry and its relative pose
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tiny_two_view_case / "view_1" / "xray.npy"))
    lateral.SetAndObserveStorageNodeID(storage.GetID())
    panel.widget.onXray2Changed(lateral)
    assert "read from the geometry.json beside" in ui["statusLabel"].text
    g2 = p.geometry2
    assert (g2.sdd, (g2.pixelSpacingU, g2.pixelSpacingV), (g2.principalPointU, g2.principalPointV)) == (
        case.views[1].camera.sdd, case.views[1].camera.pixel_spacing, case.views[1].camera.principal_point)
    panel.widget.onRegister()
    job = panel.widget.logic.job
    assert job is not None and [v["name"] for v in job.views] == ["view_1"]
    job.process.wait(300)
    panel.widget._poll()
    assert not [m for m in panel.messages if m[0] == "errorDisplay"], (panel.messages, job.log[-20:])
    assert panel.widget.logic.job is None and not job.work_dir.exists()
    assert xray.GetNodeReference("SphericalReg.drr") is p.drrVolume
    assert lateral.GetNodeReference("SphericalReg.drr") is p.drrVolume2 and p.drrVolume2 is not p.drrVolume
    view_1 = p.outputTransform.GetNodeReference("SphericalReg.view_1")
    assert view_1 is not None and view_1.GetNodeReference("SphericalReg.detector").GetParentTransformNode() is view_1
    assert "2 views jointly" in ui["statusLabel"].text
    lines = ui["viewsLabel"].text.splitlines()
    assert ui["viewsLabel"].visible and len(lines) == 2
    assert lines[0].startswith("view 0 (ap): NCC") and lines[1].startswith("view_1 (lateral): NCC")
    assert "confidence" in lines[1]
    assert ui["viewComboBox"].visible and [d for _, d in ui["viewComboBox"].items] == [0, 1]
    assert composite.GetBackgroundVolumeID() == xray.GetID()
    assert composite.GetForegroundVolumeID() == p.drrVolume.GetID()

    # the chooser: view 1's X-ray under view 1's DRR, and Compare on view 1
    ui["viewComboBox"].setCurrentIndex(1)
    assert composite.GetBackgroundVolumeID() == lateral.GetID()
    assert composite.GetForegroundVolumeID() == p.drrVolume2.GetID()
    ui["differenceCheckBox"].checked = True
    ui["differenceCheckBox"].emit("toggled(bool)", True)
    difference = p.differenceVolume
    assert composite.GetForegroundVolumeID() == difference.GetID()
    assert slicer.util.arrayFromVolume(difference).shape == (1, 40, 44)  # view 1's own grid
    assert difference.GetName() == "lateral vs DRR"
    ui["viewComboBox"].setCurrentIndex(0)
    assert p.differenceVolume is difference and slicer.util.arrayFromVolume(difference).shape == (1, 48, 48)
    assert composite.GetBackgroundVolumeID() == xray.GetID()
    # closing the scene forgets the views (their nodes go with it)
    panel.widget.onSceneStartClose(None, None)
    assert panel.widget._resultViews == [] and not ui["viewComboBox"].visible


def test_a_view_named_in_a_warning_is_flagged_in_the_results(panel):
    """result.json names a view whose final NCC is far below the best one's: the status shows the
    warning and that view's line in the results says to check it; one view lists nothing."""
    ap = _volume(panel.scene, np.ones((1, 4, 5), np.float32), "ap")
    lateral = _volume(panel.scene, np.ones((1, 4, 5), np.float32), "lateral")
    views = [{"index": 0, "name": "view 0", "xray": ap, "final_ncc": 0.91, "confidence": 0.8,
              "uncertainty": {"depth_sd_mm": 0.3, "inplane_sd_mm": 0.05}},
             {"index": 1, "name": "view_1", "xray": lateral, "final_ncc": 0.41, "confidence": 0.2,
              "residual_shift_mm": 3.25, "uncertainty": {"depth_sd_mm": 2.0, "inplane_sd_mm": 0.1},
              "relative_pose_refined": {"rotation_deg": 1.5, "centre_shift_mm": 2.25}}]
    warning = "view_1: its final NCC 0.41 is far below the best view's 0.91; it may show other anatomy"
    lines = panel.module.SphericalRegWidget._describeViews(views, [warning]).splitlines()
    assert "check this view" not in lines[0] and lines[0].startswith("view 0 (ap): NCC 0.91, confidence 0.80")
    assert lines[1].startswith("view_1 (lateral): NCC 0.41, confidence 0.20; edges 3.25 mm off; alone 2.00 mm along its beam")
    assert "relative pose refined by 1.50 deg (2.25 mm" in lines[1] and lines[1].endswith("check this view (see the warning)")
    assert panel.module.SphericalRegWidget._describeViews(views[:1], []) == ""
