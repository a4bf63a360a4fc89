"""MRML nodes in, arrays and matrices to SphericalRegLib, nodes out.

A package rather than SphericalRegLogic.py: Slicer tries to load every .py file beside a
scripted module as a module of its own, but never looks inside folders.

Everything here runs without Qt, so it works in the Slicer application, in ``PythonSlicer`` and
with the ``slicer-core`` package (a real MRML scene and no GUI). torch and SphericalRegLib are
imported inside the functions that need them: the module must load in a Slicer that has not
installed them yet.

Frames follow the project's conventions page (docs/conventions in /work/shared/spec):

* the CT node's own IJK->RAS is the **world** (its parent transform, if any, is left alone and
  the output transform is placed under the same parent, so everything stays consistent);
* the output transform node holds **world_from_camera** as its ToParent matrix: it maps the
  camera frame (source at the origin, detector plane at z = sdd) into the CT's RAS world. The
  detector-plane volume, the beam outline and the source marker are built in camera
  coordinates and placed under that transform; the CT is never moved.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import queue
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import vtk

import slicer

try:  # the Slicer application; absent under slicer-core
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:
    _LogicBase = object

__all__ = [
    "SphericalRegLogic",
    "volume_from_node",
    "update_node_from_volume",
    "xray_image_from_node",
    "camera_from_node",
    "set_camera_attributes",
    "camera_from_dicom_tags",
    "pose_to_transform_node",
    "pose_from_transform_node",
    "detector_ijk_to_camera",
    "detector_plane_node",
    "beam_model_node",
    "source_marker_node",
    "create_drr_node",
    "render_drr",
    "difference_image",
    "edge_image",
    "show_overlay",
    "write_case",
    "write_volume_nrrd",
    "read_result",
    "register_command",
    "train_command",
    "parse_progress",
    "Progress",
    "BackgroundProcess",
    "missing_packages",
    "export_transform",
]

ATTRIBUTE_PREFIX = "SphericalReg."
CONFIDENCE_WARNING = 0.5
"""Below this confidence the panel warns that the pose should be checked by eye."""

REQUIRED_MODULES = ("torch", "torchvision", "diffdrr", "e3nn", "timm", "roma", "kornia", "torchio")

# Installed on first use inside Slicer, every one with --no-deps so that pip never replaces what
# Slicer bundles (vtk, SimpleITK, numpy) or what the PyTorch extension installs (torch,
# torchvision). diffdrr would otherwise pull pyvista[all] -> vtk and torchio -> SimpleITK.
PIP_NO_DEPS = (
    "diffdrr==0.6.1", "torchio", "e3nn", "timm", "roma", "kornia", "kornia-rs",
    # what those import at run time, minus the bundled packages above
    "fastcore", "einops", "nibabel", "pandas", "matplotlib", "seaborn", "imageio", "tqdm", "scipy",
    "sympy", "mpmath", "opt_einsum", "opt_einsum_fx", "pyyaml", "huggingface_hub", "safetensors",
    "deprecated", "wrapt", "humanize", "jaxtyping", "wadler_lindig", "rich", "markdown-it-py",
    "mdurl", "pygments", "typer", "click", "shellingham", "filelock", "fsspec", "packaging",
)


def _input_error(source, problem, expected=None):
    from SphericalRegLib.errors import InputError

    return InputError(source, problem, expected)


def _matrix(vtk_matrix) -> np.ndarray:
    return slicer.util.arrayFromVTKMatrix(vtk_matrix).astype(np.float64)


def _scene_of(*nodes):
    for node in nodes:
        if node is not None and node.GetScene() is not None:
            return node.GetScene()
    return slicer.mrmlScene


def _new_node(scene, class_name: str, name: str):
    return scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))


# --------------------------------------------------------------------------- volumes


def volume_from_node(volume_node):
    """The node's voxels and IJK->RAS as a ``SphericalRegLib.volume.Volume`` (lossless).

    ``arrayFromVolume`` is indexed [k, j, i] (plus a trailing component axis for vector
    volumes); the Volume is [i, j, k] (or [c, i, j, k]). The node's parent transform is not
    applied: the world is the node's own RAS frame.
    """
    import torch
    from SphericalRegLib.volume import Volume

    if volume_node is None or volume_node.GetImageData() is None:
        raise _input_error(getattr(volume_node, "GetName", lambda: "volume")(), "has no image data",
                           "a loaded scalar volume")
    array = slicer.util.arrayFromVolume(volume_node)
    data = array.transpose(2, 1, 0) if array.ndim == 3 else array.transpose(3, 2, 1, 0)
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return Volume(torch.from_numpy(np.ascontiguousarray(data)), torch.from_numpy(_matrix(m)))


def update_node_from_volume(volume_node, volume) -> None:
    """Write a Volume's voxels and IJK->RAS into ``volume_node`` (the inverse of volume_from_node)."""
    data = volume.data.detach().cpu().numpy()
    array = data.transpose(2, 1, 0) if data.ndim == 3 else data.transpose(3, 2, 1, 0)
    slicer.util.updateVolumeFromArray(volume_node, np.ascontiguousarray(array))
    volume_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.ijk_to_ras.detach().cpu().numpy()))


# --------------------------------------------------------------------------- X-ray and its camera


def xray_image_from_node(xray_node) -> np.ndarray:
    """The X-ray's pixels ``(rows, cols)``: node I runs along columns (u), J along rows (v)."""
    name = xray_node.GetName() if xray_node is not None else "X-ray"
    if xray_node is None or xray_node.GetImageData() is None:
        raise _input_error(name, "has no image data", "a loaded 2D X-ray")
    array = slicer.util.arrayFromVolume(xray_node)
    if array.ndim != 3 or array.shape[0] != 1:
        raise _input_error(name, f"has voxel array shape {array.shape} (k, j, i[, c])",
                           "a single-slice scalar image (one slice, one component)")
    return np.array(array[0])


def set_camera_attributes(node, camera) -> None:
    """Store a Camera on a node, so a saved scene keeps the X-ray's geometry."""
    node.SetAttribute(ATTRIBUTE_PREFIX + "sdd", repr(camera.sdd))
    node.SetAttribute(ATTRIBUTE_PREFIX + "pixelSpacing", " ".join(map(repr, camera.pixel_spacing)))
    node.SetAttribute(ATTRIBUTE_PREFIX + "principalPoint", " ".join(map(repr, camera.principal_point)))


def camera_from_dicom_tags(tags: dict, image_size, source=None):
    """A Camera from an X-ray's DICOM tags (strings as the DICOM database returns them).

    DistanceSourceToDetector (0018,1110) gives sdd; ImagerPixelSpacing (0018,1164), row then
    column spacing, gives (dv, du) - PixelSpacing (0028,0030) is used when it is absent. The
    principal point is the image centre unless a SphericalReg attribute overrides it: DICOM has
    no tag that reliably holds it.
    """
    from SphericalRegLib.camera import Camera

    sdd = tags.get("0018,1110")
    spacing = tags.get("0018,1164") or tags.get("0028,0030")
    if not sdd or not spacing:
        raise _input_error(source, "DICOM header lacks DistanceSourceToDetector or ImagerPixelSpacing",
                           "both tags, or the geometry typed into the panel")
    dv, du = (float(x) for x in spacing.split("\\")[:2])
    rows, cols = image_size
    return Camera(float(sdd), (du, dv), ((cols - 1) / 2, (rows - 1) / 2), (rows, cols)).validate(source)


def _dicom_tags(node) -> dict | None:
    uids = node.GetAttribute("DICOM.instanceUIDs")
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return None
    path = database.fileForInstance(uids.split()[0])
    return {tag: database.fileValue(path, tag) for tag in ("0018,1110", "0018,1164", "0028,0030")}


def camera_from_node(xray_node):
    """The X-ray's Camera from, in order: the node's SphericalReg attributes, a geometry.json
    beside the file the node was loaded from, or its DICOM tags. None when none is there."""
    from SphericalRegLib.camera import Camera

    rows, cols = xray_image_from_node(xray_node).shape[:2]
    get = lambda key: xray_node.GetAttribute(ATTRIBUTE_PREFIX + key)  # noqa: E731
    if get("sdd"):
        du, dv = (float(x) for x in get("pixelSpacing").split())
        cu, cv = (float(x) for x in get("principalPoint").split())
        return Camera(float(get("sdd")), (du, dv), (cu, cv), (rows, cols)).validate(xray_node.GetName())
    storage = xray_node.GetStorageNode()
    if storage is not None and storage.GetFileName():
        geometry = Path(storage.GetFileName()).parent / "geometry.json"
        if geometry.is_file():
            camera = Camera.load(geometry)
            if camera.image_size != (rows, cols):
                raise _input_error(geometry, f"image_size is {list(camera.image_size)}",
                                   f"[{rows}, {cols}], the size of {xray_node.GetName()}")
            return camera
    tags = _dicom_tags(xray_node)
    if tags:
        return camera_from_dicom_tags(tags, (rows, cols), xray_node.GetName())
    return None


# --------------------------------------------------------------------------- poses and geometry nodes


def _rigid(matrix, source: str) -> np.ndarray:
    T = np.asarray(matrix.detach().cpu().numpy() if hasattr(matrix, "detach") else matrix, dtype=np.float64)
    if T.shape != (4, 4):
        raise _input_error(source, f"has shape {T.shape}", "a 4x4 matrix")
    R = T[:3, :3]
    if not (np.allclose(R @ R.T, np.eye(3), atol=1e-5) and np.linalg.det(R) > 0
            and np.allclose(T[3], [0, 0, 0, 1])):
        raise _input_error(source, "is not a rigid motion", "[[R, t], [0, 0, 0, 1]] with R a rotation")
    return T


def pose_to_transform_node(camera_from_world, node=None, scene=None, name: str = "SphericalReg pose",
                           parent_transform_node=None):
    """A linear transform node whose ToParent matrix is ``world_from_camera`` (RAS mm).

    It maps the camera frame (source at the origin, detector at z = sdd) into the CT's world, so
    nodes built in camera coordinates and placed under it land at the C-arm's position; the CT
    is not touched. A new node is created unless ``node`` (one the user chose) is given.
    ``parent_transform_node`` is the CT's own parent, if it has one.
    """
    T = _rigid(camera_from_world, "camera_from_world")
    world_from_camera = np.linalg.inv(T)
    if node is None:
        node = _new_node(scene or slicer.mrmlScene, "vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(world_from_camera))
    node.SetAndObserveTransformNodeID(parent_transform_node.GetID() if parent_transform_node else None)
    return node


def pose_from_transform_node(transform_node) -> np.ndarray:
    """camera_from_world ``(4, 4)`` of a transform node written by :func:`pose_to_transform_node`."""
    m = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToParent(m)
    return np.linalg.inv(_rigid(_matrix(m), transform_node.GetName()))


def detector_ijk_to_camera(camera) -> np.ndarray:
    """IJK -> camera frame of the detector image: pixel (u, v) centre at ((u-cu)du, (v-cv)dv, sdd)."""
    du, dv = camera.pixel_spacing
    cu, cv = camera.principal_point
    return np.array([[du, 0, 0, -cu * du], [0, dv, 0, -cv * dv], [0, 0, 1, camera.sdd], [0, 0, 0, 1]],
                    dtype=np.float64)


def detector_plane_node(camera, transform_node, image=None, name: str = "SphericalReg detector"):
    """A single-slice volume on the detector plane, under ``transform_node``.

    Its voxels are ``image`` ``(rows, cols)`` (zeros if None); its IJK->RAS is the detector
    geometry in camera coordinates, so under the transform each pixel sits where it was imaged.
    """
    rows, cols = camera.image_size
    pixels = np.zeros((rows, cols), np.float32) if image is None else np.asarray(image)
    if pixels.shape[:2] != (rows, cols):
        raise _input_error("image", f"has shape {pixels.shape}", f"({rows}, {cols}) as the camera says")
    node = _new_node(_scene_of(transform_node), "vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, pixels[None])
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(detector_ijk_to_camera(camera)))
    node.SetAndObserveTransformNodeID(transform_node.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def beam_model_node(camera, transform_node, name: str = "SphericalReg beam"):
    """Lines from the source to the detector's four corner pixels and the detector's outline."""
    rows, cols = camera.image_size
    A = detector_ijk_to_camera(camera)
    corners = [A @ [u, v, 0, 1] for u, v in ((0, 0), (cols - 1, 0), (cols - 1, rows - 1), (0, rows - 1))]
    points = vtk.vtkPoints()
    points.InsertNextPoint(0.0, 0.0, 0.0)
    for c in corners:
        points.InsertNextPoint(*c[:3])
    lines = vtk.vtkCellArray()
    for i in range(1, 5):
        lines.InsertNextCell(2, [0, i])
        lines.InsertNextCell(2, [i, i % 4 + 1])
    poly = vtk.vtkPolyData()
    poly.SetPoints(points)
    poly.SetLines(lines)
    node = _new_node(_scene_of(transform_node), "vtkMRMLModelNode", name)
    node.SetAndObservePolyData(poly)
    node.CreateDefaultDisplayNodes()
    node.SetAndObserveTransformNodeID(transform_node.GetID())
    return node


def source_marker_node(transform_node, name: str = "SphericalReg source"):
    """A markups point at the X-ray source (the camera origin), under ``transform_node``."""
    node = _new_node(_scene_of(transform_node), "vtkMRMLMarkupsFiducialNode", name)
    node.AddControlPoint(0.0, 0.0, 0.0, "source")
    node.SetAndObserveTransformNodeID(transform_node.GetID())
    return node


# --------------------------------------------------------------------------- DRR and overlay


def render_drr(ct_node, camera, camera_from_world) -> np.ndarray:
    """The CT's DRR (attenuation line integrals, bone bright) at a pose, ``(rows, cols)`` float32."""
    import torch
    from SphericalRegLib.diffdrr_bridge import siddon_line_integrals
    from SphericalRegLib.volume import Volume, hu_to_mu

    ct = volume_from_node(ct_node)
    mu = Volume(hu_to_mu(ct.data.to(torch.float32)), ct.ijk_to_ras)
    T = torch.as_tensor(_rigid(camera_from_world, "camera_from_world"))[None]
    with torch.no_grad():
        return siddon_line_integrals(mu, T, camera)[0].cpu().numpy().astype(np.float32)


def _standardised(image) -> np.ndarray:
    x = np.asarray(image, dtype=np.float32)
    return (x - x.mean()) / (x.std() + 1e-6)


def difference_image(xray, drr) -> np.ndarray:
    """X-ray minus DRR after each is standardised; the X-ray is negated (bone dark -> bright) first."""
    return _standardised(-np.asarray(xray, np.float32)) - _standardised(drr)


def edge_image(image) -> np.ndarray:
    """Gradient magnitude of the standardised image: the DRR's bone edges to lay over the X-ray."""
    gy, gx = np.gradient(_standardised(image))
    return np.hypot(gx, gy)


def create_drr_node(xray_node, image, name: str | None = None):
    """A new scalar volume holding ``image`` ``(rows, cols)`` on the X-ray node's own grid.

    Same IJK->RAS and parent transform as the X-ray node, so the two overlay in a slice view.
    """
    pixels = np.asarray(image)
    rows_cols = xray_image_from_node(xray_node).shape[:2]
    if pixels.shape != rows_cols:
        raise _input_error("DRR", f"has shape {pixels.shape}", f"{rows_cols}, the X-ray's")
    scene = _scene_of(xray_node)
    node = _new_node(scene, "vtkMRMLScalarVolumeNode", name or f"{xray_node.GetName()} DRR")
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(pixels[None]))
    m = vtk.vtkMatrix4x4()
    xray_node.GetIJKToRASMatrix(m)
    node.SetIJKToRASMatrix(m)
    node.SetAndObserveTransformNodeID(xray_node.GetTransformNodeID())
    node.CreateDefaultDisplayNodes()
    return node


def show_overlay(xray_node, drr_node, opacity: float = 0.5) -> None:
    """X-ray in the background, DRR in the foreground of every slice view; fit views when a GUI exists."""
    scene = _scene_of(xray_node)
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(xray_node.GetID())
        composite.SetForegroundVolumeID(drr_node.GetID() if drr_node else None)
        composite.SetForegroundOpacity(float(opacity))
    app = getattr(slicer, "app", None)
    if app is not None and app.layoutManager() is not None:
        slicer.util.setSliceViewerLayers(background=xray_node, foreground=drr_node,
                                         foregroundOpacity=float(opacity), fit=True, rotateToVolumePlane=True)


# --------------------------------------------------------------------------- cases and subprocesses


def write_volume_nrrd(volume_node, path) -> Path:
    """Write a volume with Slicer's own NRRD writer: the file holds exactly the node's voxels and geometry."""
    scene = _scene_of(volume_node)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(str(path))
        storage.SetUseCompression(False)
        if not storage.WriteData(volume_node):
            raise _input_error(volume_node.GetName(), f"could not be written to {path}")
    finally:
        scene.RemoveNode(storage)
    return Path(path)


def write_case(ct_node, xray_node, camera, folder, init_camera_from_world=None) -> Path:
    """Write a case folder of the conventions (ct.nrrd, xray.npy, geometry.json[, init.json]).

    The CT is written by Slicer's own NRRD writer, so the subprocess sees exactly the voxels and
    RAS geometry of the node. ``folder`` must be new or empty: nothing is overwritten.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise _input_error(folder, "is not empty", "a new folder for the registration case")
    folder.mkdir(parents=True, exist_ok=True)
    write_volume_nrrd(ct_node, folder / "ct.nrrd")
    np.save(folder / "xray.npy", xray_image_from_node(xray_node))
    camera.save(folder / "geometry.json")
    if init_camera_from_world is not None:
        T = _rigid(init_camera_from_world, "init")
        (folder / "init.json").write_text(json.dumps({"camera_from_world": T.tolist()}, indent=2))
    return folder


def read_result(path) -> dict:
    """A ``result.json`` of the conventions, with camera_from_world checked to be rigid."""
    try:
        result = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise _input_error(path, "was not written", "the registration's result.json") from None
    except json.JSONDecodeError as e:
        raise _input_error(path, f"is not valid JSON ({e})") from None
    result["camera_from_world"] = _rigid(result.get("camera_from_world", np.zeros(0)), f"{path}: camera_from_world")
    return result


def python_executable() -> str:
    """Slicer's PythonSlicer launcher when it exists, otherwise this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def library_root() -> str:
    """The folder that holds the SphericalRegLib package (found without importing it)."""
    spec = importlib.util.find_spec("SphericalRegLib")
    if spec is None or not spec.submodule_search_locations:
        raise _input_error("SphericalRegLib", "is not installed next to the module", "the extension's SphericalRegLib")
    return str(Path(list(spec.submodule_search_locations)[0]).parent)


def _command(subcommand: str, args: list, python: str | None) -> list[str]:
    return [python or python_executable(), "-m", "SphericalRegLib.cli", subcommand, *map(str, args)]


def register_command(case_dir, model_path, out_dir, use_init: bool = False, python: str | None = None,
                     extra_args=()) -> list[str]:
    """``PythonSlicer -m SphericalRegLib.cli register CASE --model MODEL --out OUT [--init] ...``.

    The command writes OUT/result.json (and transform.json, world_from_camera.tfm, overlay.png).
    """
    args = [case_dir, "--model", model_path, "--out", out_dir, *(["--init"] if use_init else []), *extra_args]
    return _command("register", args, python)


def train_command(ct_path, model_path, python: str | None = None, extra_args=()) -> list[str]:
    """``PythonSlicer -m SphericalRegLib.cli train --ct CT --out MODEL ...``."""
    return _command("train", ["--ct", ct_path, "--out", model_path, *extra_args], python)


@dataclass(frozen=True)
class Progress:
    fraction: float | None
    message: str


_STAGE = re.compile(r"^PROGRESS\s+(\S+)\s+(\d+(?:\.\d+)?)\s*$")
_TQDM = re.compile(r"(\d+)\s*/\s*(\d+)\s*\[")
_COUNT = re.compile(r"\b(?:iteration|iter|step|epoch)s?\s*[:=]?\s*(\d+)\s*/\s*(\d+)", re.IGNORECASE)


def parse_progress(line: str) -> Progress | None:
    """Progress of one output line of ``sphericalreg``: ``PROGRESS <stage> <fraction>`` (register),
    a tqdm bar ``... 30/200 [...`` (train) or ``step 3/50``. None for a blank line; a line
    without a count gives fraction None and is shown as a message."""
    text = line.strip()
    if not text:
        return None
    m = _STAGE.match(text)
    if m:
        return Progress(min(1.0, float(m.group(2))), m.group(1))
    for pattern in (_TQDM, _COUNT):
        m = pattern.search(text)
        if m and int(m.group(2)) > 0:
            return Progress(min(1.0, int(m.group(1)) / int(m.group(2))), text)
    return Progress(None, text)


class BackgroundProcess:
    """A command run off the GUI thread: output lines queued by a reader thread, drained by
    :meth:`poll` (the panel calls it from a QTimer), :meth:`cancel` kills the whole process tree.
    """

    def __init__(self, command: list[str], env: dict | None = None, cwd=None):
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = cwd
        self.proc = None
        self.cancelled = False
        self._lines: queue.Queue = queue.Queue()
        self._reader = None

    def start(self) -> "BackgroundProcess":
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (library_root(), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        options = {}
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            options["start_new_session"] = True  # its own process group, so cancel reaches children
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     encoding="utf-8", errors="replace", bufsize=1, env=env, cwd=self.cwd, **options)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\r\n"))
        self.proc.stdout.close()

    def poll(self) -> list[str]:
        """Output lines since the last call; never blocks."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    @property
    def running(self) -> bool:
        return self.proc is not None and (self.proc.poll() is None or self._reader.is_alive())

    @property
    def returncode(self) -> int | None:
        return None if self.running else self.proc.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.proc.wait(timeout)
        self._reader.join(timeout)
        return self.proc.returncode

    def cancel(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.cancelled = True
        if os.name == "nt":
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(self.proc.pid)], capture_output=True)
        else:
            import signal

            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


# --------------------------------------------------------------------------- dependencies and export


def missing_packages() -> list[str]:
    """The Python modules SphericalRegLib needs that this Python cannot import."""
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def export_transform(transform_node, path, overwrite: bool = False) -> Path:
    """Write the node's ToParent matrix as an ITK transform file (.tfm, .txt, .h5) that Slicer
    loads back as the same transform; refuses to replace a file unless ``overwrite``."""
    from SphericalRegLib.io import write_itk_transform

    m = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToParent(m)
    return write_itk_transform(path, _matrix(m), overwrite=overwrite)


# --------------------------------------------------------------------------- the logic object


class SphericalRegLogic(_LogicBase):
    """The module's computations, usable from the panel, the Python console or a script.

    Node helpers are the module-level functions above, exposed here as methods; the methods
    proper run the registration in this process (:meth:`register`) or start it as a
    subprocess (:meth:`start_registration`, :meth:`start_training`).
    """

    volume_from_node = staticmethod(volume_from_node)
    update_node_from_volume = staticmethod(update_node_from_volume)
    xray_image_from_node = staticmethod(xray_image_from_node)
    camera_from_node = staticmethod(camera_from_node)
    set_camera_attributes = staticmethod(set_camera_attributes)
    pose_to_transform_node = staticmethod(pose_to_transform_node)
    pose_from_transform_node = staticmethod(pose_from_transform_node)
    detector_plane_node = staticmethod(detector_plane_node)
    beam_model_node = staticmethod(beam_model_node)
    source_marker_node = staticmethod(source_marker_node)
    create_drr_node = staticmethod(create_drr_node)
    render_drr = staticmethod(render_drr)
    show_overlay = staticmethod(show_overlay)
    export_transform = staticmethod(export_transform)
    write_case = staticmethod(write_case)
    read_result = staticmethod(read_result)
    register_command = staticmethod(register_command)
    train_command = staticmethod(train_command)
    parse_progress = staticmethod(parse_progress)

    def __init__(self):
        if _LogicBase is not object:
            _LogicBase.__init__(self)

    def getParameterNode(self):
        from SphericalReg import SphericalRegParameterNode

        return SphericalRegParameterNode(super().getParameterNode())

    def register(self, ct_node, xray_node, camera, model_path, output_transform_node=None,
                 progress_callback=None, cancel_event=None, init=None, photometric="MONOCHROME2", device=None,
                 **options):
        """Register in this process (blocks; the panel uses :meth:`start_registration` instead).

        Loads the model for this CT, runs ``SphericalRegLib.register.Registrar`` and returns
        ``(transform node, RegistrationResult)``. The node holds world_from_camera (see
        :func:`pose_to_transform_node`) and the confidence, similarity, seconds and iterations as
        attributes. ``progress_callback(stage, fraction)``; ``cancel_event`` has ``is_set()``;
        ``init`` is a camera_from_world start pose; ``device`` "cpu" or "cuda" (default: a GPU if
        torch sees one); ``options`` are RegisterOptions fields.
        """
        import torch
        from SphericalRegLib.devices import resolve_device
        from SphericalRegLib.model import load_model
        from SphericalRegLib.confidence import load_calibration
        from SphericalRegLib.register import Registrar, RegisterOptions
        from SphericalRegLib.volume import Volume

        ct = volume_from_node(ct_node)
        ct = Volume(ct.data.to(torch.float32), ct.ijk_to_ras)  # HU as the library reads them
        image = torch.from_numpy(xray_image_from_node(xray_node).astype(np.float32))
        start = None if init is None else torch.from_numpy(_rigid(init, "init"))
        model = load_model(model_path, ct, resolve_device(device))
        registrar = Registrar(model, ct, RegisterOptions(**options), load_calibration(model_path))
        result = registrar.register(image, camera, start, photometric=photometric,
                                    progress=progress_callback, cancel=cancel_event)
        node = self.store_result(ct_node, result.camera_from_world, output_transform_node, {
            "confidence": result.confidence, "similarity": result.similarity,
            "seconds": result.seconds, "iterations": result.iterations,
        })
        return node, result

    @staticmethod
    def store_result(ct_node, camera_from_world, output_transform_node=None, metrics: dict | None = None):
        """The pose as a transform node under the CT's parent, with the metrics as attributes."""
        parent = ct_node.GetParentTransformNode() if ct_node is not None else None
        node = pose_to_transform_node(camera_from_world, output_transform_node, _scene_of(ct_node),
                                      parent_transform_node=parent)
        for key, value in (metrics or {}).items():
            node.SetAttribute(ATTRIBUTE_PREFIX + key, "" if value is None else repr(float(value)))
        return node

    def start_registration(self, ct_node, xray_node, camera, model_path, work_dir, init_camera_from_world=None,
                           extra_args=(), env=None) -> tuple[BackgroundProcess, Path]:
        """Write the case to ``work_dir``/case and start ``sphericalreg register`` on it.

        Returns the running process and the result.json it will write (in ``work_dir``/result);
        when it ends, read that with :func:`read_result` and pass the pose to :meth:`store_result`.
        """
        case = write_case(ct_node, xray_node, camera, Path(work_dir) / "case", init_camera_from_world)
        out = Path(work_dir) / "result"
        command = register_command(case, model_path, out, use_init=init_camera_from_world is not None,
                                   extra_args=extra_args)
        return BackgroundProcess(command, env=env).start(), out / "result.json"

    def start_training(self, ct_node, output_path, work_dir, extra_args=(), env=None) -> BackgroundProcess:
        """Write the CT to ``work_dir`` and start ``sphericalreg train`` on it."""
        if Path(output_path).exists():
            raise _input_error(output_path, "already exists", "a new model file name (nothing is overwritten)")
        folder = Path(work_dir)
        folder.mkdir(parents=True, exist_ok=True)
        write_volume_nrrd(ct_node, folder / "ct.nrrd")
        return BackgroundProcess(train_command(folder / "ct.nrrd", output_path, extra_args=extra_args), env=env).start()

    @staticmethod
    def install_dependencies(confirm: bool = True) -> bool:
        """Install what :func:`missing_packages` lists, inside Slicer, after the user agrees.

        torch and torchvision come from the PyTorch extension (PyTorchUtils); the rest with
        ``pip install --no-deps`` from :data:`PIP_NO_DEPS`, so vtk, SimpleITK and numpy stay the
        ones Slicer bundles. Returns whether everything imports afterwards.
        """
        missing = missing_packages()
        if not missing:
            return True
        if confirm and not slicer.util.confirmOkCancelDisplay(
            "SphericalReg needs these Python packages: " + ", ".join(missing)
            + ".\nInstall them now? This downloads a few hundred MB and may take several minutes.",
            "SphericalReg: install dependencies",
        ):
            return False
        if "torch" in missing or "torchvision" in missing:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise RuntimeError("SphericalReg needs the PyTorch extension: install it from the Extensions Manager.")
            torch_logic = PyTorchUtils.PyTorchUtilsLogic()
            if not torch_logic.torchInstalled():
                if torch_logic.installTorch(askConfirmation=confirm, torchVersionRequirement=">=2.4") is None:
                    return False
        rest = [name for name in missing if name not in ("torch", "torchvision")]
        if rest:
            slicer.util.pip_install(list(PIP_NO_DEPS) + ["--no-deps"])
        importlib.invalidate_caches()
        return not missing_packages()
