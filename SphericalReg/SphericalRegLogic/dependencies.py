"""The Python packages SphericalRegLib needs inside 3D Slicer: what is missing, and installing it.

Slicer bundles numpy, scipy, SimpleITK, VTK, Pillow, packaging and a few more (its SuperBuild
``External_python-*.cmake`` requirement files); the PyTorch extension installs torch and
torchvision. Neither may be replaced: a second numpy, SimpleITK or VTK breaks the application.
So each package is installed the way SlicerTotalSegmentator does it: ``pip install --no-deps``
of the package, then, from its own metadata (read after it is installed, so it is the version pip
chose for *this* Python), its requirements minus what Slicer and the PyTorch extension provide,
level by level until nothing is missing. No list of transitive dependencies is kept here: on
Python 3.9 pip picks releases that support 3.9 (jaxtyping 0.2, without wadler_lindig), and a
package that gains a dependency (matplotlib's cycler, kiwisolver, contourpy, fonttools) is
followed automatically.

This file uses only the standard library and ``packaging`` (bundled with Slicer), so it runs in
the application, in ``PythonSlicer`` and in a bare virtual environment::

    python dependencies.py check      # lists what is missing, exit status 1 if anything is
    python dependencies.py install [--force]
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import importlib.util
import os
import subprocess
import sys
from typing import Callable, Iterable, List, Optional

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

#: What SphericalRegLib imports directly (torch and torchvision apart: the PyTorch extension's).
REQUIREMENTS = (
    "diffdrr==0.6.1",
    "e3nn>=0.5",
    "timm>=1.0",
    "roma",
    "kornia",
    "torchio",
    "matplotlib",
)

#: The PyTorch extension's packages, with the oldest releases SphericalRegLib works with (a
#: matched pair: torchvision 0.19 is torch 2.4's).
TORCH_VERSION = ">=2.4"
TORCHVISION_VERSION = ">=0.19"
TORCH_REQUIREMENTS = ("torch" + TORCH_VERSION, "torchvision" + TORCHVISION_VERSION)

#: Bundled with Slicer (SuperBuild/External_python-*.cmake: numpy, scipy, SimpleITK, pydicom,
#: Pillow, packaging, pyparsing, six, requests and its own, pip, setuptools, wheel) or built into
#: it (vtk). Never installed or replaced here; a requirement on them is only checked.
SLICER_BUNDLED = frozenset(canonicalize_name(n) for n in (
    "numpy", "scipy", "SimpleITK", "vtk", "pydicom", "Pillow", "packaging", "pyparsing", "six",
    "requests", "certifi", "idna", "urllib3", "charset-normalizer", "chardet", "pip", "setuptools",
    "wheel", "retrying", "dicomweb-client", "PyJWT", "GitPython", "gitdb", "smmap",
))

#: Requirements of the packages above that SphericalRegLib never imports and that would pull in
#: a second VTK (diffdrr's 3D plotting: pyvista[all] -> vtk, trame, ...).
NOT_NEEDED = frozenset(canonicalize_name(n) for n in ("pyvista",))

#: Modules the registration subprocess imports (checked by importing them in a subprocess).
IMPORT_CHECK = ("torch", "torchvision", "diffdrr", "e3nn", "timm", "roma", "kornia", "torchio",
                "matplotlib.pyplot", "SimpleITK", "numpy")

#: What imports without torch (checked when torch is still to come from the PyTorch extension).
IMPORT_CHECK_WITHOUT_TORCH = ("matplotlib.pyplot", "SimpleITK", "numpy", "scipy", "nibabel")

_PROVIDED = SLICER_BUNDLED | frozenset(canonicalize_name(Requirement(r).name) for r in TORCH_REQUIREMENTS)


def installed_version(name: str) -> Optional[Version]:
    """The installed distribution's version, or None when pip does not know it."""
    try:
        return Version(metadata.version(name))
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # an unparsable or broken dist-info
        return None


def satisfied(requirement: Requirement) -> bool:
    """Installed, in a version the requirement accepts (pre-releases and local builds count)."""
    version = installed_version(requirement.name)
    if version is None:
        return _bundled_without_metadata(requirement)
    return requirement.specifier.contains(version, prereleases=True)


def _bundled_without_metadata(requirement: Requirement) -> bool:
    """Slicer's VTK is importable but has no dist-info; a bundled package that imports counts."""
    name = canonicalize_name(requirement.name)
    if name not in SLICER_BUNDLED:
        return False
    module = {"simpleitk": "SimpleITK", "pillow": "PIL", "pyjwt": "jwt", "gitpython": "git"}.get(name, name.replace("-", "_"))
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def requirements_of(name: str, extras: Iterable[str] = ()) -> List[Requirement]:
    """The installed distribution's own requirements that apply to this Python and platform."""
    try:
        lines = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is None or any(
                requirement.marker.evaluate({**default_environment(), "extra": extra}) for extra in (*extras, "")):
            out.append(requirement)
    return out


class Plan:
    """What is missing now: packages to install (``to_install``) and requirements on packages
    that Slicer or the PyTorch extension provide but in another version (``conflicts``)."""

    def __init__(self, to_install: List[str], torch_missing: List[str], conflicts: List[str]):
        self.to_install = to_install
        self.torch_missing = torch_missing
        self.conflicts = conflicts

    @property
    def missing(self) -> List[str]:
        return self.torch_missing + self.to_install

    def __repr__(self) -> str:
        return f"Plan(to_install={self.to_install}, torch_missing={self.torch_missing}, conflicts={self.conflicts})"


def plan(requirements: Iterable[str] = REQUIREMENTS) -> Plan:
    """Walk the requirements of the installed packages from ``requirements`` down, as pip's
    metadata gives them; list every requirement that is not met."""
    to_install, torch_missing, conflicts = [], [], []
    for text in TORCH_REQUIREMENTS:
        if not satisfied(Requirement(text)):
            torch_missing.append(text)
    queue = [Requirement(r) for r in requirements]
    seen = set()
    while queue:
        requirement = queue.pop(0)
        name = canonicalize_name(requirement.name)
        key = (name, str(requirement.specifier))
        if key in seen or name in NOT_NEEDED:
            continue
        seen.add(key)
        if name in _PROVIDED:
            if not satisfied(requirement) and installed_version(requirement.name) is not None \
                    and name in SLICER_BUNDLED:
                conflicts.append(f"{requirement} (Slicer has {installed_version(requirement.name)})")
            continue
        if not satisfied(requirement):
            to_install.append(_pip_argument(requirement))
            continue
        queue.extend(requirements_of(requirement.name, requirement.extras))
    return Plan(_unique(to_install), torch_missing, _unique(conflicts))


def _pip_argument(requirement: Requirement) -> str:
    """``name[extras]specifier``: the marker was evaluated already, and without it the argument has
    no spaces, so it survives any way of splitting a pip command line."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"{requirement.name}{extras}{requirement.specifier}"


def _unique(items):
    return list(dict.fromkeys(items))


def missing_packages(requirements: Iterable[str] = REQUIREMENTS) -> List[str]:
    """Every requirement (``name>=x``) that is not installed in an accepted version, down through
    the requirements of what is installed (matplotlib without kiwisolver is noticed)."""
    return plan(requirements).missing


def pip_subprocess(args: List[str], python: Optional[str] = None) -> None:
    """``python -m pip install ARGS`` (what slicer.util.pip_install does, outside Slicer)."""
    subprocess.run([python or sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args],
                   check=True)


def install(requirements: Iterable[str] = REQUIREMENTS, pip: Callable[[List[str]], None] = pip_subprocess,
            force: bool = False, log: Callable[[str], None] = print, max_rounds: int = 12) -> Plan:
    """Install what :func:`plan` lists, each package ``--no-deps``, then the requirements the
    installed packages name, level by level, skipping what Slicer and PyTorch provide.

    ``pip(args)`` runs ``pip install args`` (inside Slicer ``slicer.util.pip_install`` given the
    arguments joined by spaces, the form every release accepts; no argument holds a space). ``force`` reinstalls every package of the set once (``--force-reinstall``), for a
    broken installation. torch and torchvision are not installed here (the PyTorch extension's
    job); returns the plan that is left afterwards (empty ``missing`` when all is well).
    """
    requirements = list(requirements)
    if force:
        names = _closure_names(requirements)
        if names:
            log("Reinstalling " + ", ".join(names))
            pip(["--no-deps", "--force-reinstall", *names])
    for _ in range(max_rounds):
        current = plan(requirements)
        if not current.to_install:
            break
        log("Installing " + ", ".join(current.to_install))
        pip(["--no-deps", *current.to_install])
        importlib.invalidate_caches()
    left = plan(requirements)
    for conflict in left.conflicts:
        log(f"Warning: a package asks for {conflict}; Slicer's own is kept")
    return left


def _closure_names(requirements) -> List[str]:
    """The installed packages of the set (what a forced reinstall replaces), pinned to their versions."""
    names, queue, seen = [], [Requirement(r) for r in requirements], set()
    while queue:
        requirement = queue.pop(0)
        name = canonicalize_name(requirement.name)
        if name in seen or name in _PROVIDED or name in NOT_NEEDED:
            continue
        seen.add(name)
        version = installed_version(requirement.name)
        names.append(f"{requirement.name}=={version}" if version else str(requirement))
        if version is not None:
            queue.extend(requirements_of(requirement.name, requirement.extras))
    return names


def check_imports(python: Optional[str] = None, modules: Iterable[str] = IMPORT_CHECK, env=None,
                  timeout: float = 300) -> Optional[str]:
    """Import ``modules`` in a fresh interpreter (the one the registration runs in); None when all
    import, otherwise the last line of the error. A missing compiled library or a broken wheel
    shows here, where version metadata looks fine."""
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    done = subprocess.run([python or sys.executable, "-c", code, *modules], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", env=env, timeout=timeout)
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {done.returncode}"


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("check", "install"):
        print(__doc__)
        return 2
    if args[0] == "install":
        left = install(force="--force" in args)
    else:
        left = plan()
    for text in left.missing:
        print(f"missing: {text}")
    for text in left.conflicts:
        print(f"conflict: {text}")
    if args[0] == "install" and not left.to_install:
        problem = check_imports(modules=IMPORT_CHECK_WITHOUT_TORCH if left.torch_missing else IMPORT_CHECK)
        if problem:
            print(f"import failed: {problem}")
            return 1
    return 1 if left.missing else 0


if __name__ == "__main__":
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    sys.exit(main())
