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
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CHECK = Path(__file__).with_name("import_check.py")


@pytest.mark.parametrize("version, args", [("3.9", []), ("3.12", ["--all-hints"])])
def test_package_imports_and_annotations_evaluate(version, args, find_python):
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} interpreter here (pyenv or python{version} on PATH)")
    done = subprocess.run([python, str(CHECK), str(ROOT), *args], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": ""})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 failures" in done.stdout
