"""Fixtures of the Slicer module's tests: other Python interpreters (the Slicer releases' Pythons)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def interpreter(version: str):
    """A working python<version> (pyenv's, or on PATH), or None."""
    names = [f"python{version}"]
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    try:
        pyenv_root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=10).stdout.strip() \
            or pyenv_root
    except (OSError, subprocess.SubprocessError):
        pass
    versions = Path(pyenv_root) / "versions"
    candidates = []
    for name in names:
        found = shutil.which(name)
        if found:
            candidates.append(Path(found))
    candidates += sorted(versions.glob(f"{version}.*/bin/python{version}")) if versions.is_dir() else []
    for candidate in reversed(candidates):  # a pyenv shim on PATH may name a version that is absent
        try:
            if subprocess.run([str(candidate), "-c", "pass"], capture_output=True, timeout=30).returncode == 0:
                return str(candidate)
        except (OSError, subprocess.SubprocessError):
            continue
    return None


@pytest.fixture(scope="session")
def find_python():
    return interpreter


@pytest.fixture(scope="session")
def tiny_two_view_case(tiny_volume, tmp_path_factory):
    """One simulated two-view case of the tiny CT (48 x 48 px views, the second turned 60-90 deg),
    with view_1's X-ray cropped to 40 x 44 px (and its principal point with it): views of
    different sizes are allowed, and the panel must keep each on its own grid."""
    import json

    import numpy as np
    from fixtures import write_ct
    from SphericalRegLib.camera import Camera
    from SphericalRegLib.io import read_xray
    from SphericalRegLib.simulate import write_cases

    folder = tmp_path_factory.mktemp("tiny_two_views")
    write_ct(tiny_volume, folder / "ct.nii.gz")
    (case,) = write_cases(folder / "ct.nii.gz", folder / "cases", 1, seed=7, size=48, views=2, log=lambda m: None)
    view = case / "view_1"
    image, camera, _ = read_xray(next(view.glob("xray.*")), view / "geometry.json")
    geometry = json.loads((view / "geometry.json").read_text())
    for old in view.glob("xray.*"):
        old.unlink()
    np.save(view / "xray.npy", image.numpy()[3:43, 2:46].astype(np.float32))
    cropped: Camera = camera.cropped(3, 2, 40, 44)
    (view / "geometry.json").write_text(json.dumps({**geometry, **cropped.to_json()}))
    return case


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slicer_env: builds a Slicer-like virtual environment and installs the module's package set from the "
        "package index (network; about 2 minutes for both tests); deselect with -m 'not slicer_env'")
