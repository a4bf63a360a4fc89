"""MRML nodes <-> the library's types: volumes, the X-ray and its camera, the pose as a transform,
and the C-arm drawn in the CT's space (detector plane, beam outline, source marker).

Frames follow docs/conventions.md: the CT node's own IJK->RAS is the **world** (its parent
transform, if any, is left alone and the output transform goes under the same parent); the
output transform node's ToParent matrix is **world_from_camera**; the detector plane, beam and
source are built in camera coordinates under it. torch and SphericalRegLib are imported inside
the functions that need them, so this module loads in a Slicer that has not installed them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import vtk

import slicer

ATTRIBUTE_PREFIX = "SphericalReg."

# DICOM tags the X-ray's camera and photometric interpretation come from, as the DICOM database
# keys them ("gggg,eeee"); the library keys them "gggg|eeee" (SimpleITK)
_DICOM_TAGS = ("0018,1110", "0018,1164", "0028,0030", "0018,7028", "0028,0004")


def input_error(source, problem, expected=None):
    from SphericalRegLib.errors import InputError

    return InputError(source, problem, expected)


def matrix_of(vtk_matrix) -> np.ndarray:
    return slicer.util.arrayFromVTKMatrix(vtk_matrix).astype(np.float64)


def scene_of(*nodes):
    for node in nodes:
        if node is not None and node.GetScene() is not None:
            return node.GetScene()
    return slicer.mrmlScene


def new_node(scene, class_name: str, name: str):
    return scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))


def rigid(matrix, source: str) -> np.ndarray:
    """A 4x4 rigid motion as float64, checked by the library's pose check (``io.cases.as_pose``)."""
    from SphericalRegLib.io.cases import as_pose

    value = matrix.detach().cpu() if hasattr(matrix, "detach") else np.asarray(matrix, dtype=np.float64)
    return as_pose(value, source, "matrix").numpy()


# --------------------------------------------------------------------------- volumes


def volume_from_node(volume_node):
    """The node's voxels and IJK->RAS as a ``SphericalRegLib.volume.Volume`` (lossless).

    ``arrayFromVolume`` is indexed [k, j, i]; the Volume is [i, j, k]. The node's parent
    transform is not applied: the world is the node's own RAS frame.
    """
    import torch
    from SphericalRegLib.volume import Volume

    if volume_node is None or volume_node.GetImageData() is None:
        raise input_error(getattr(volume_node, "GetName", lambda: "volume")(), "has no image data",
                          "a loaded scalar volume")
    array = slicer.util.arrayFromVolume(volume_node)
    data = array.transpose(2, 1, 0) if array.ndim == 3 else array.transpose(3, 2, 1, 0)
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return Volume(torch.from_numpy(np.ascontiguousarray(data)), torch.from_numpy(matrix_of(m)))


def update_node_from_volume(volume_node, volume) -> None:
    """Write a Volume's voxels and IJK->RAS into ``volume_node`` (the inverse of volume_from_node)."""
    data = volume.data.detach().cpu().numpy()
    array = data.transpose(2, 1, 0) if data.ndim == 3 else data.transpose(3, 2, 1, 0)
    slicer.util.updateVolumeFromArray(volume_node, np.ascontiguousarray(array))
    volume_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.ijk_to_ras.detach().cpu().numpy()))


def is_single_slice(node) -> bool:
    """Whether a volume node can be an X-ray (one slice, one component); no exception, no torch."""
    if node is None or node.GetImageData() is None:
        return False
    image = node.GetImageData()
    dims = image.GetDimensions()
    return image.GetNumberOfScalarComponents() == 1 and sorted(dims)[0] == 1 and dims[2] == 1


# --------------------------------------------------------------------------- X-ray and its camera


def xray_image_from_node(xray_node) -> np.ndarray:
    """The X-ray's pixels ``(rows, cols)`` as the node holds them: I runs along columns (u), J along rows (v)."""
    name = xray_node.GetName() if xray_node is not None else "X-ray"
    if xray_node is None or xray_node.GetImageData() is None:
        raise input_error(name, "has no image data", "a loaded 2D X-ray")
    array = slicer.util.arrayFromVolume(xray_node)
    if array.ndim != 3 or array.shape[0] != 1:
        raise input_error(name, f"has voxel array shape {array.shape} (k, j, i[, c])",
                          "a single-slice scalar image (one slice, one component)")
    return np.array(array[0])


def set_camera_attributes(node, camera) -> None:
    """Store a Camera on a node, so a saved scene keeps the X-ray's geometry."""
    node.SetAttribute(ATTRIBUTE_PREFIX + "sdd", repr(camera.sdd))
    node.SetAttribute(ATTRIBUTE_PREFIX + "pixelSpacing", " ".join(map(repr, camera.pixel_spacing)))
    node.SetAttribute(ATTRIBUTE_PREFIX + "principalPoint", " ".join(map(repr, camera.principal_point)))


def library_tags(tags: dict) -> dict:
    """DICOM database tags ("0018,1110") as the library keys them ("0018|1110"), blanks dropped."""
    return {k.replace(",", "|"): str(v).strip() for k, v in tags.items() if v is not None and str(v).strip()}


def camera_from_dicom_tags(tags: dict, image_size, source=None):
    """A Camera from an X-ray's DICOM tags, by the library's own reader (``io.dicom.camera_from_dicom``):
    DistanceSourceToDetector, ImagerPixelSpacing (or PixelSpacing) and DetectorActiveOrigin.
    Keys as the DICOM database gives them ("0018,1110") or as SimpleITK does ("0018|1110")."""
    from SphericalRegLib.io.dicom import camera_from_dicom

    rows, cols = image_size
    camera = camera_from_dicom(library_tags(tags), rows, cols, source)
    if camera is None:
        raise input_error(source, "DICOM header lacks DistanceSourceToDetector (0018,1110) and ImagerPixelSpacing",
                          "both tags, or the geometry typed into the panel")
    return camera


def dicom_file_of(node) -> Optional[Path]:
    """The DICOM file an X-ray node was loaded from: through the DICOM database, or its storage node."""
    uids = node.GetAttribute("DICOM.instanceUIDs")
    database = getattr(slicer, "dicomDatabase", None)
    if uids and database is not None:
        path = database.fileForInstance(uids.split()[0])
        if path:
            return Path(path)
    storage = node.GetStorageNode()
    if storage is not None and storage.GetFileName():
        path = Path(storage.GetFileName())
        if path.is_file() and _is_dicom(path):
            return path
    return None


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom")


def dicom_xray(node):
    """``(pixels (rows, cols) MONOCHROME2 float32, Camera or None, meta)`` of an X-ray node that came
    from a DICOM file, read by the library exactly as ``sphericalreg register`` reads that file
    (MONOCHROME1 inverted, DetectorActiveOrigin honoured); None for a node without a DICOM file."""
    path = dicom_file_of(node)
    if path is None:
        return None
    from SphericalRegLib.io.dicom import camera_from_dicom, read_dicom_xray
    from SphericalRegLib.io.images import read_xray

    pixels, tags = read_dicom_xray(path)
    pixels = np.asarray(pixels)
    if pixels.ndim == 3 and 1 in pixels.shape:
        pixels = pixels.squeeze(axis=pixels.shape.index(1))
    rows, cols = pixels.shape[:2]
    camera = camera_from_dicom(tags, rows, cols, path)
    if camera is None:
        return pixels.astype(np.float32), None, {"path": str(path), "stored_photometric": tags.get("0028|0004")}
    image, camera, meta = read_xray(path, camera)
    return image.numpy(), camera, meta


def camera_from_node(xray_node):
    """The X-ray's Camera from, in order: the node's SphericalReg attributes, a geometry.json beside
    the file the node was loaded from, or its DICOM tags (the library's reader, so the panel and
    ``sphericalreg register`` agree on the same file). None when none is there."""
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
                raise input_error(geometry, f"image_size is {list(camera.image_size)}",
                                  f"[{rows}, {cols}], the size of {xray_node.GetName()}")
            return camera
    dicom = dicom_xray(xray_node)
    if dicom is not None and dicom[1] is not None:
        camera = dicom[1]
        if camera.image_size != (rows, cols):
            raise input_error(xray_node.GetName(), f"DICOM file is {camera.image_size}, the node {(rows, cols)}",
                              "the node loaded from that file")
        return camera
    return None


def xray_for_registration(xray_node) -> np.ndarray:
    """The pixels the registration sees: the library's reading of the node's DICOM file when there
    is one (MONOCHROME2 whatever the file stored, as the command line reads it), else the node's."""
    pixels = xray_image_from_node(xray_node)
    dicom = dicom_xray(xray_node)
    if dicom is not None and dicom[0].shape == pixels.shape:
        return dicom[0].astype(np.float32)
    return pixels


# --------------------------------------------------------------------------- further views


RELATIVE_POSE_EXPECTED = ("a linear transform node whose matrix (to parent) is camera_from_reference (view 0's camera "
                          "frame to this view's), or a geometry.json beside the X-ray's file with \"camera_from_reference\"")


def view_name(index: int) -> str:
    """How the case folder and result.json name view ``index`` (conventions: ``view 0``, ``view_1`` ...)."""
    return "view 0" if index == 0 else f"view_{index}"


def view_label(index: int, xray_node) -> str:
    """``view_1 (name)``: the name messages use for a view given by a node."""
    name = xray_node.GetName() if xray_node is not None else "no X-ray"
    return f"{view_name(index)} ({name})"


def relative_pose_beside_file(xray_node) -> Optional[np.ndarray]:
    """camera_from_reference from a geometry.json beside the file the node was loaded from (a
    ``view_k/`` folder of a case, as ``sphericalreg simulate --views`` writes it); None when
    there is no such file or it has no ``camera_from_reference``. Not checked here."""
    storage = xray_node.GetStorageNode() if xray_node is not None else None
    if storage is None or not storage.GetFileName():
        return None
    geometry = Path(storage.GetFileName()).parent / "geometry.json"
    if not geometry.is_file():
        return None
    try:
        obj = json.loads(geometry.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    value = obj.get("camera_from_reference") if isinstance(obj, dict) else None
    return None if value is None else value


def relative_pose_from_transform_node(transform_node) -> np.ndarray:
    """The node's own matrix to its parent (its parents are not applied): camera_from_reference, unchecked."""
    m = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToParent(m)
    return matrix_of(m)


@dataclass
class FurtherView:
    """View k >= 1 of a registration: its X-ray node, its Camera and ``camera_from_reference``
    (4x4 rigid, view 0's camera frame to this view's), as :func:`further_view` checks them."""

    index: int
    xray_node: object
    camera: object
    camera_from_reference: np.ndarray

    @property
    def name(self) -> str:
        return view_name(self.index)


def further_view(index: int, xray_node, camera, relative=None, reference_xray_node=None) -> FurtherView:
    """View ``index`` (1, 2, ...) checked, with messages that name it (``view_1 (node name)``).

    ``relative``: a linear transform node holding camera_from_reference, a 4x4 matrix, or None to
    read it from a geometry.json beside the X-ray's file. The view may have another image size or
    pixel spacing than view 0; it must be a single-slice image other than view 0's node, its
    camera must be for its own size, and its relative pose must be given and rigid."""
    label = view_label(index, xray_node)
    if index < 1:
        raise input_error(label, f"is view {index}", "a further view numbered from 1 (view 0 is the X-ray)")
    if xray_node is None or not is_single_slice(xray_node):
        raise input_error(label, "is not a single-slice image", "a 2D X-ray")
    if reference_xray_node is not None and xray_node.GetID() == reference_xray_node.GetID():
        raise input_error(label, "is the same node as view 0's X-ray", "another X-ray of the same patient position")
    if camera is None:
        raise input_error(label, "has no geometry", "its C-arm geometry (stored, geometry.json, DICOM or typed in)")
    rows, cols = xray_image_from_node(xray_node).shape
    if tuple(camera.image_size) != (rows, cols):
        raise input_error(label, f"geometry is for a {camera.image_size[0]} x {camera.image_size[1]} image",
                          f"{rows} x {cols}, the size of its X-ray")
    camera = camera.validate(label)
    if relative is None:
        matrix, source = relative_pose_beside_file(xray_node), f"{label}: geometry.json beside its file"
    elif hasattr(relative, "GetMatrixTransformToParent"):
        matrix, source = relative_pose_from_transform_node(relative), f"{label}: transform {relative.GetName()}"
    else:
        matrix, source = relative, label
    if matrix is None:
        raise input_error(label, "has no relative pose (camera_from_reference)", RELATIVE_POSE_EXPECTED)
    from SphericalRegLib.io.cases import as_pose

    checked = as_pose(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix, source, "camera_from_reference")
    return FurtherView(index, xray_node, camera, checked.numpy())


# --------------------------------------------------------------------------- poses and geometry nodes


def pose_to_transform_node(camera_from_world, node=None, scene=None, name: str = "SphericalReg pose",
                           parent_transform_node=None):
    """A linear transform node whose ToParent matrix is ``world_from_camera`` (RAS mm).

    A new node is created unless ``node`` (one the user chose) is given; ``parent_transform_node``
    is the CT's own parent, if it has one.
    """
    T = rigid(camera_from_world, "camera_from_world")
    world_from_camera = np.linalg.inv(T)
    if node is None:
        node = new_node(scene or slicer.mrmlScene, "vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(world_from_camera))
    node.SetAndObserveTransformNodeID(parent_transform_node.GetID() if parent_transform_node else None)
    return node


def pose_from_transform_node(transform_node) -> np.ndarray:
    """camera_from_world ``(4, 4)`` of a transform node written by :func:`pose_to_transform_node`."""
    m = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToParent(m)
    return np.linalg.inv(rigid(matrix_of(m), transform_node.GetName()))


def store_result(ct_node, camera_from_world, output_transform_node=None, metrics: Optional[dict] = None,
                 scene=None):
    """The pose as a transform node under the CT's parent, with the metrics as attributes."""
    parent = ct_node.GetParentTransformNode() if ct_node is not None else None
    node = pose_to_transform_node(camera_from_world, output_transform_node, scene or scene_of(ct_node),
                                  parent_transform_node=parent)
    for key, value in (metrics or {}).items():
        node.SetAttribute(ATTRIBUTE_PREFIX + key, "" if value is None else repr(float(value)))
    return node


def detector_ijk_to_camera(camera) -> np.ndarray:
    """IJK -> camera frame of the detector image: pixel (u, v) centre at ((u-cu)du, (v-cv)dv, sdd)."""
    du, dv = camera.pixel_spacing
    cu, cv = camera.principal_point
    return np.array([[du, 0, 0, -cu * du], [0, dv, 0, -cv * dv], [0, 0, 1, camera.sdd], [0, 0, 0, 1]],
                    dtype=np.float64)


def detector_plane_node(camera, transform_node, image=None, name: str = "SphericalReg detector"):
    """A single-slice volume on the detector plane, under ``transform_node``."""
    rows, cols = camera.image_size
    pixels = np.zeros((rows, cols), np.float32) if image is None else np.asarray(image)
    if pixels.shape[:2] != (rows, cols):
        raise input_error("image", f"has shape {pixels.shape}", f"({rows}, {cols}) as the camera says")
    node = new_node(scene_of(transform_node), "vtkMRMLScalarVolumeNode", name)
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
    node = new_node(scene_of(transform_node), "vtkMRMLModelNode", name)
    node.SetAndObservePolyData(poly)
    node.CreateDefaultDisplayNodes()
    node.SetAndObserveTransformNodeID(transform_node.GetID())
    return node


def source_marker_node(transform_node, name: str = "SphericalReg source"):
    """A markups point at the X-ray source (the camera origin), under ``transform_node``."""
    node = new_node(scene_of(transform_node), "vtkMRMLMarkupsFiducialNode", name)
    node.AddControlPoint(0.0, 0.0, 0.0, "source")
    node.SetAndObserveTransformNodeID(transform_node.GetID())
    return node


VIEW_COLOURS = ((1.0, 1.0, 0.0), (0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 0.5, 0.0))
"""The beam outline's colour per view (view 0 first), so the C-arms in the 3D view are told apart."""


def show_c_arm(transform_node, camera, xray_node, image=None, index: int = 0) -> dict:
    """Detector plane (with the X-ray), beam outline and source under the result transform (of
    view ``index``), replacing the ones an earlier registration put there; returns them by role."""
    scene = scene_of(transform_node)
    for role in ("detector", "beam", "source"):
        old = transform_node.GetNodeReference(ATTRIBUTE_PREFIX + role)
        if old is not None:
            scene.RemoveNode(old)
    pixels = xray_image_from_node(xray_node) if image is None else image
    suffix = "" if index == 0 else f" {view_name(index)}"
    nodes = {
        "detector": detector_plane_node(camera, transform_node, pixels, f"{xray_node.GetName()} on detector"),
        "beam": beam_model_node(camera, transform_node, f"SphericalReg beam{suffix}"),
        "source": source_marker_node(transform_node, f"SphericalReg source{suffix}"),
    }
    display = nodes["beam"].GetDisplayNode()
    if display is not None:
        display.SetColor(*VIEW_COLOURS[index % len(VIEW_COLOURS)])
    for role, node in nodes.items():
        transform_node.SetNodeReferenceID(ATTRIBUTE_PREFIX + role, node.GetID())
    return nodes


# --------------------------------------------------------------------------- images on the X-ray's grid


def create_drr_node(xray_node, image, name: Optional[str] = None, node=None):
    """A scalar volume holding ``image`` ``(rows, cols)`` on the X-ray node's own grid (same IJK->RAS
    and parent transform), so the two overlay in a slice view. ``node`` is reused when given."""
    pixels = np.asarray(image)
    rows_cols = xray_image_from_node(xray_node).shape[:2]
    if pixels.shape != rows_cols:
        raise input_error("DRR", f"has shape {pixels.shape}", f"{rows_cols}, the X-ray's")
    if node is None:
        node = new_node(scene_of(xray_node), "vtkMRMLScalarVolumeNode", name or f"{xray_node.GetName()} DRR")
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(pixels[None]))
    m = vtk.vtkMatrix4x4()
    xray_node.GetIJKToRASMatrix(m)
    node.SetIJKToRASMatrix(m)
    node.SetAndObserveTransformNodeID(xray_node.GetTransformNodeID())
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


# --------------------------------------------------------------------------- files for the subprocess


def write_volume_nrrd(volume_node, path) -> Path:
    """Write a volume with Slicer's own NRRD writer: the file holds exactly the node's voxels and geometry."""
    scene = scene_of(volume_node)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(str(path))
        storage.SetUseCompression(False)
        if not storage.WriteData(volume_node):
            raise input_error(volume_node.GetName(), f"could not be written to {path}")
    finally:
        scene.RemoveNode(storage)
    return Path(path)


def write_case(ct_node, xray_node, camera, folder, init_camera_from_world=None,
               other_views: Sequence[FurtherView] = ()) -> Path:
    """Write a case folder of the conventions (ct.nrrd, xray.npy, geometry.json[, init.json]),
    and for each further view ``view_k/`` with its xray.npy and a geometry.json that adds
    ``camera_from_reference`` (conventions, "Several views of one case").

    The CT is written by Slicer's own NRRD writer; each X-ray is what :func:`xray_for_registration`
    gives (MONOCHROME2). ``other_views``: :class:`FurtherView`, numbered 1, 2, ... in order.
    ``folder`` must be new or empty: nothing is overwritten.
    """
    for k, view in enumerate(other_views, start=1):
        if view.index != k:
            raise input_error(view_label(view.index, view.xray_node), f"is given as further view number {k}",
                              "further views numbered 1, 2, ... without gaps")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise input_error(folder, "is not empty", "a new folder for the registration case")
    folder.mkdir(parents=True, exist_ok=True)
    write_volume_nrrd(ct_node, folder / "ct.nrrd")
    np.save(folder / "xray.npy", xray_for_registration(xray_node))
    camera.save(folder / "geometry.json")
    if init_camera_from_world is not None:
        T = rigid(init_camera_from_world, "init")
        (folder / "init.json").write_text(json.dumps({"camera_from_world": T.tolist()}, indent=2))
    for view in other_views:
        sub = folder / view.name
        sub.mkdir()
        np.save(sub / "xray.npy", xray_for_registration(view.xray_node))
        relative = rigid(view.camera_from_reference, f"{view_label(view.index, view.xray_node)}: camera_from_reference")
        geometry = {**view.camera.to_json(), "camera_from_reference": relative.tolist()}
        (sub / "geometry.json").write_text(json.dumps(geometry, indent=2))
    return folder


def read_result(path) -> dict:
    """A ``result.json`` of the conventions, with camera_from_world checked to be rigid."""
    try:
        result = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise input_error(path, "was not written", "the registration's result.json") from None
    except json.JSONDecodeError as e:
        raise input_error(path, f"is not valid JSON ({e})") from None
    result["camera_from_world"] = rigid(result.get("camera_from_world", np.zeros(0)), f"{path}: camera_from_world")
    return result
