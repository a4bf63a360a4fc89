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


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slicer_env: builds a Slicer-like virtual environment and installs the module's package set from the "
        "package index (network; about 2 minutes for both tests); deselect with -m 'not slicer_env'")
