"""The whole package (SphericalRegLib and the Slicer module) imports on the Pythons of the Slicer
releases supported: 3.9 (Slicer 5.6, 5.8) and 3.12 (Slicer 5.10 and later), run by those
interpreters where this machine has them (pyenv, or on PATH), skipped with the reason otherwise.

Those interpreters have no torch; import_check.py puts stand-ins for missing third-party packages
in place, so every module's top-level code runs (what a Python 3.9 Slicer would choke on, such as
a ``str | None`` evaluated at definition time). On 3.9 the annotations Slicer itself evaluates (the
parameter node's, by parameterNodeWrapper) are evaluated; on 3.12 every annotation of every
function and class is.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CHECK = Path(__file__).with_name("import_check.py")


def _interpreter(version: str):
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


@pytest.mark.parametrize("version, args", [("3.9", []), ("3.12", ["--all-hints"])])
def test_package_imports_and_annotations_evaluate(version, args):
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} interpreter here (pyenv or python{version} on PATH)")
    done = subprocess.run([python, str(CHECK), str(ROOT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": ""})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 failures" in done.stdout
