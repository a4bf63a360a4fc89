"""The Slicer panel's .ui against the Python that drives it (no Qt needed: XML and source text)."""

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
MODULE = ROOT / "SphericalReg"
UI = MODULE / "Resources" / "UI" / "SphericalReg.ui"
SOURCE = (MODULE / "SphericalReg.py").read_text()
PARAMETERS = (MODULE / "SphericalRegLogic" / "parameters.py").read_text()


def _widgets() -> dict:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def _string_property(widget, name):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop.findtext("string")
    return None


def _parameter_fields() -> dict:
    """Annotated fields of each class in the logic package's parameters.py (the node and its packs)."""
    tree = ast.parse(PARAMETERS)
    return {node.name: {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}
            for node in tree.body if isinstance(node, ast.ClassDef)}


def test_ui_is_well_formed_with_unique_names():
    root = ET.parse(UI).getroot()
    assert root.tag == "ui" and root.find("widget").get("class") == "qMRMLWidget"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate objectName in the .ui"


def test_every_widget_the_module_uses_exists():
    used = set(re.findall(r"self\.ui\.(\w+)", SOURCE))
    assert {"registerButton", "cancelButton", "trainButton", "progressBar", "opacitySlider"} <= used
    missing = used - set(_widgets())
    assert not missing, f"SphericalReg.py uses widgets the .ui lacks: {sorted(missing)}"


def test_bound_widgets_name_real_parameters():
    fields = _parameter_fields()
    node = fields["SphericalRegParameterNode"]
    bound = {name: _string_property(w, "SlicerParameterName") for name, w in _widgets().items()}
    bound = {k: v for k, v in bound.items() if v}
    assert set(bound.values()) >= {"ctVolume", "xrayVolume", "outputTransform", "modelPath", "geometry.sdd"}
    for widget, parameter in bound.items():
        head, _, member = parameter.partition(".")
        assert head in node, f"{widget} binds to unknown parameter {parameter}"
        if member:
            assert member in fields[node[head]], f"{widget} binds to unknown pack member {parameter}"


def test_custom_widgets_are_declared_and_mrml_widgets_get_the_scene():
    root = ET.parse(UI).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    qt_classes = {c for c in used if c.startswith("Q")}
    assert used - qt_classes <= declared
    combos = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    wired = {c.findtext("receiver") for c in root.iter("connection")
             if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert combos and combos <= wired


def test_cmake_lists_every_file_it_installs():
    text = (MODULE / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "SphericalReg")
    for listed in re.findall(r"^\s+((?:Resources/|SphericalReg)\S+)$", text, re.MULTILINE):
        assert (MODULE / listed).is_file(), f"CMakeLists.txt lists {listed}, which does not exist"
    assert "SphericalRegLogic/__init__.py" in text and "SOURCE_DIR ${_repo_root}" in text
    listed = set(re.findall(r"SphericalRegLogic/(\w+\.py)", text))
    present = {p.name for p in (MODULE / "SphericalRegLogic").glob("*.py")}
    assert listed == present, f"CMakeLists.txt and SphericalRegLogic/ differ: {sorted(listed ^ present)}"


def test_extension_metadata_has_no_placeholders():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert "REPLACE_WITH" not in text and '"SphericalReg contributors"' not in text
    assert re.search(r'set\(EXTENSION_HOMEPAGE "https://', text)


def test_xray_selector_offers_none():
    xray = _widgets()["xraySelector"]
    none = [p.findtext("bool") for p in xray.findall("property") if p.get("name") == "noneEnabled"]
    assert none == ["true"], "the X-ray selector must offer None rather than pick the CT"


def test_compare_and_display_widgets_are_connected():
    """The Difference/Edges buttons and the opacity slider are wired; the opacity handler changes
    only the opacity (no view fit, no volume made)."""
    for name in ("differenceCheckBox", "differenceRadioButton", "edgesRadioButton", "opacitySlider",
                 "saveSceneButton", "sendIGTLButton", "installButton", "deviceComboBox"):
        assert re.search(rf"self\.ui\.{name}\.connect\(", SOURCE), f"{name} is not connected"
    tree = ast.parse(SOURCE)
    handler = next(f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "onOpacityChanged")
    calls = {n.func.id if isinstance(n.func, ast.Name) else n.func.attr for n in ast.walk(handler)
             if isinstance(n, ast.Call)}
    assert calls == {"set_overlay_opacity"}, calls


def test_progress_is_logged_at_debug_and_the_log_is_in_the_panel():
    assert "logging.info(f\"SphericalReg: {line}\")" not in SOURCE
    assert "logTextEdit.appendPlainText" in SOURCE and "logging.debug" in SOURCE


def test_user_strings_are_translatable():
    assert "from SphericalRegLogic.i18n import _, translate" in SOURCE
    assert 'translate("qSlicerAbstractCoreModule", "Registration")' in SOURCE
    # no bare user-facing literal in the dialogs
    for call in ("errorDisplay", "warningDisplay", "confirmOkCancelDisplay", "tryWithErrorDisplay"):
        for m in re.finditer(rf"{call}\(\s*([\"f])", SOURCE):
            raise AssertionError(f"{call} with an untranslated string at {SOURCE[m.start():m.start() + 60]!r}")


def _function(name):
    return next(f for f in ast.walk(ast.parse(SOURCE)) if isinstance(f, ast.FunctionDef) and f.name == name)


def _attribute_calls(function) -> set:
    return {ast.unparse(n.func) for n in ast.walk(function) if isinstance(n, ast.Call)}


def test_scene_close_cancels_a_running_job():
    assert "self.logic.cancel" in _attribute_calls(_function("onSceneStartClose"))


def test_nothing_heavy_is_imported_when_the_module_loads():
    """The module must load (and its self-test be collected) in a Slicer without torch: no top-level
    import of torch or SphericalRegLib, and the self-test checks the packages before importing them."""
    tree = ast.parse(SOURCE)
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name for n in top for a in n.names} | {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert not {n for n in names if n and (n.split(".")[0] in ("torch", "SphericalRegLib", "numpy"))}
    run = _function("runTest")
    assert "dependencies.missing_packages" in _attribute_calls(run)
    # the one question about packages comes from the logic; the module never asks twice
    assert SOURCE.count("install_dependencies(") == 1


def test_geometry_fill_on_xray_change_never_pops_up():
    """Both X-ray selectors fill their geometry through the one quiet helper, which never pops up."""
    for handler in ("onXrayChanged", "onXray2Changed"):
        assert _attribute_calls(_function(handler)) == {"self._fillGeometryQuietly"}, handler
    calls = _attribute_calls(_function("_fillGeometryQuietly"))
    assert not {c for c in calls if c.endswith(("Display", "errorDisplay"))}, calls
    assert "is_single_slice" in calls and "dependencies.installed_version" in calls
    assert "quiet=True" in ast.unparse(_function("_fillGeometryQuietly"))


def test_second_view_widgets_are_bound_and_connected():
    widgets = _widgets()
    bound = {_string_property(w, "SlicerParameterName"): name for name, w in widgets.items()}
    for parameter in ("pincushion", "sDistortion", "xrayVolume2", "relativePose2", "relativeSdDeg", "geometry2.sdd", "geometry2.pixelSpacingU",
                      "geometry2.pixelSpacingV", "geometry2.principalPointU", "geometry2.principalPointV"):
        assert parameter in bound, parameter
    for selector in ("xray2Selector", "relativePoseSelector"):
        none = [p.findtext("bool") for p in widgets[selector].findall("property") if p.get("name") == "noneEnabled"]
        assert none == ["true"], f"{selector} must offer None (one view / relative pose beside the file)"
    for name in ("xray2Selector", "fillGeometry2Button", "viewComboBox"):
        assert re.search(rf"self\.ui\.{name}\.connect\(", SOURCE), f"{name} is not connected"


def test_results_come_from_the_job_not_from_the_current_selection():
    calls = _attribute_calls(_function("_poll"))
    assert "self.logic.finish_registration" in calls
    assert "render" not in " ".join(_attribute_calls(_function("_showResult")))
