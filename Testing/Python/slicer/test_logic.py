"""The 3D Slicer module's logic on a real MRML scene (slicer-core: MRML without Qt or the app)."""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

slicer = pytest.importorskip("slicer", reason="slicer-core (MRML for Python) is not installed")
vtk = pytest.importorskip("vtk")

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "SphericalReg"))
import SphericalRegLogic as L  # noqa: E402

from SphericalRegLib.camera import Camera, canonical_ap_pose, project  # noqa: E402
from SphericalRegLib.errors import InputError  # noqa: E402
from SphericalRegLib.geometry import se3_exp  # noqa: E402


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def _rotation(rotvec) -> np.ndarray:
    return se3_exp(torch.tensor([*rotvec, 0.0, 0.0, 0.0], dtype=torch.float64))[:3, :3].numpy()


def _oblique_ijk_to_ras() -> np.ndarray:
    A = np.eye(4)
    A[:3, :3] = _rotation([0.3, -0.2, 0.5]) @ np.diag([0.7, 1.3, 2.5])
    A[:3, 3] = [-40.0, 12.5, 300.0]
    return A


def _volume_node(scene, array_kji, ijk_to_ras, name="ct"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array_kji)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    return node


def _ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def _to_world(node) -> np.ndarray:
    """IJK -> world of a node, through its parent transforms."""
    m = vtk.vtkMatrix4x4()
    tnode = node.GetParentTransformNode()
    if tnode is not None:
        tnode.GetMatrixTransformToWorld(m)
    return slicer.util.arrayFromVTKMatrix(m) @ _ijk_to_ras(node)


CAMERA = Camera(sdd=1020.0, pixel_spacing=(0.8, 1.1), principal_point=(13.5, 7.25), image_size=(20, 24))


def _pose() -> torch.Tensor:
    T = canonical_ap_pose(torch.tensor([-40.0, 12.5, 300.0]), CAMERA.sdd)
    return se3_exp(torch.tensor([0.1, -0.05, 0.2, 5.0, -3.0, 20.0], dtype=torch.float64)) @ T


# ------------------------------------------------------------------ volumes


def test_ct_round_trip_is_lossless(scene):
    rng = np.random.default_rng(0)
    kji = rng.integers(-1024, 3000, size=(5, 6, 7)).astype(np.int16)
    A = _oblique_ijk_to_ras()
    node = _volume_node(scene, kji, A)

    vol = L.volume_from_node(node)
    assert vol.data.dtype == torch.int16 and vol.shape == (7, 6, 5)
    assert torch.equal(vol.data, torch.from_numpy(kji.transpose(2, 1, 0).copy()))
    assert np.allclose(vol.ijk_to_ras.numpy(), A, atol=1e-12)
    assert np.allclose(vol.spacing.numpy(), [0.7, 1.3, 2.5])

    copy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "copy")
    L.update_node_from_volume(copy, vol)
    out = slicer.util.arrayFromVolume(copy)
    assert out.dtype == kji.dtype and np.array_equal(out, kji)
    assert np.array_equal(_ijk_to_ras(copy), _ijk_to_ras(node))


def test_ct_written_by_slicer_reads_back_in_the_library_frame(scene, tmp_path):
    from SphericalRegLib.io import read_ct

    kji = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) * 3 - 200
    node = _volume_node(scene, kji, _oblique_ijk_to_ras())
    path = L.write_volume_nrrd(node, tmp_path / "ct.nrrd")
    lib = read_ct(path)
    mine = L.volume_from_node(node)
    assert torch.equal(lib.data, mine.data.float())
    assert torch.allclose(lib.ijk_to_ras, mine.ijk_to_ras, atol=1e-5)


def test_xray_must_be_a_single_slice(scene):
    node = _volume_node(scene, np.zeros((3, 4, 5), np.float32), np.eye(4), "xray")
    with pytest.raises(InputError, match="single-slice"):
        L.xray_image_from_node(node)
    flat = _volume_node(scene, np.arange(20, dtype=np.float32).reshape(1, 4, 5), np.eye(4), "flat")
    assert np.array_equal(L.xray_image_from_node(flat), np.arange(20).reshape(4, 5))


def test_camera_from_attributes_and_from_geometry_json(scene, tmp_path):
    node = _volume_node(scene, np.ones((1, 20, 24), np.float32), np.eye(4), "xray")
    assert L.camera_from_node(node) is None
    L.set_camera_attributes(node, CAMERA)
    assert L.camera_from_node(node) == CAMERA

    other = _volume_node(scene, np.ones((1, 20, 24), np.float32), np.eye(4), "other")
    (tmp_path / "xray.png").write_bytes(b"")
    CAMERA.save(tmp_path / "geometry.json")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tmp_path / "xray.png"))
    other.SetAndObserveStorageNodeID(storage.GetID())
    assert L.camera_from_node(other) == CAMERA

    small = _volume_node(scene, np.ones((1, 10, 24), np.float32), np.eye(4), "small")
    small.SetAndObserveStorageNodeID(storage.GetID())
    with pytest.raises(InputError, match="image_size"):
        L.camera_from_node(small)


def test_camera_from_dicom_tags():
    cam = L.camera_from_dicom_tags({"0018,1110": "1100", "0018,1164": "0.3\\0.2"}, (40, 60))
    assert cam.sdd == 1100 and cam.pixel_spacing == (0.2, 0.3) and cam.principal_point == (29.5, 19.5)
    with pytest.raises(InputError, match="DistanceSourceToDetector"):
        L.camera_from_dicom_tags({"0018,1164": "0.3\\0.2"}, (40, 60))


# ------------------------------------------------------------------ pose and geometry nodes


def test_pose_becomes_world_from_camera(scene):
    iso = torch.tensor([10.0, -20.0, 30.0])
    T = canonical_ap_pose(iso, 1000.0)
    node = L.pose_to_transform_node(T, scene=scene)
    M = slicer.util.arrayFromTransformMatrix(node)
    # the camera origin is the source, 0.8 sdd anterior of the isocentre; camera +z is posterior
    assert np.allclose(M[:3, 3], [10.0, 780.0, 30.0])
    assert np.allclose(M[:3, :3] @ [0, 0, 1], [0, -1, 0])
    assert np.allclose(M[:3, :3] @ [1, 0, 0], [-1, 0, 0])  # columns run to the patient's left
    assert np.allclose(M[:3, :3] @ [0, 1, 0], [0, 0, -1])  # rows run inferior
    assert np.allclose(M, np.linalg.inv(T.numpy()))
    assert np.allclose(L.pose_from_transform_node(node), T.numpy())

    again = L.pose_to_transform_node(_pose(), node=node)
    assert again is node and scene.GetNumberOfNodesByClass("vtkMRMLLinearTransformNode") == 1
    assert np.allclose(L.pose_from_transform_node(node), _pose().numpy())

    with pytest.raises(InputError, match="rigid"):
        L.pose_to_transform_node(np.diag([2.0, 1, 1, 1]), scene=scene)


def test_result_goes_under_the_ct_parent(scene):
    ct = _volume_node(scene, np.zeros((2, 2, 2), np.int16), np.eye(4))
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration of the CT")
    ct.SetAndObserveTransformNodeID(parent.GetID())
    node = L.store_result(ct, _pose(), metrics={"confidence": 0.8, "iterations": 12})
    assert node.GetParentTransformNode() is parent
    assert float(node.GetAttribute("SphericalReg.confidence")) == 0.8


def test_detector_plane_sits_where_its_pixels_were_imaged(scene):
    T = _pose()
    tnode = L.pose_to_transform_node(T, scene=scene)
    image = np.arange(20 * 24, dtype=np.float32).reshape(20, 24)
    plane = L.detector_plane_node(CAMERA, tnode, image)
    assert plane.GetParentTransformNode() is tnode
    assert np.array_equal(L.xray_image_from_node(plane), image)

    world_from_ijk = _to_world(plane)
    (du, dv), (cu, cv) = CAMERA.pixel_spacing, CAMERA.principal_point
    world_from_camera = np.linalg.inv(T.numpy())
    for u, v in [(0, 0), (23, 0), (5, 17), (23, 19), (13, 7)]:
        in_camera = np.array([(u - cu) * du, (v - cv) * dv, CAMERA.sdd, 1.0])
        world = world_from_ijk @ [u, v, 0, 1]
        assert np.allclose(world, world_from_camera @ in_camera, atol=1e-9)
        # and the library's projection of that world point is the pixel itself
        uv = project(torch.tensor(world[None, :3]), T, CAMERA)[0].numpy()
        assert np.allclose(uv, [u, v], atol=1e-6)


def test_source_and_beam_are_in_the_camera_frame(scene):
    T = _pose()
    tnode = L.pose_to_transform_node(T, scene=scene)
    source = L.source_marker_node(tnode)
    to_world = vtk.vtkGeneralTransform()
    tnode.GetTransformToWorld(to_world)
    world_source = np.array(to_world.TransformPoint(source.GetNthControlPointPosition(0)))
    assert np.allclose(world_source, np.linalg.inv(T.numpy())[:3, 3])

    beam = L.beam_model_node(CAMERA, tnode)
    points = slicer.util.arrayFromModelPoints(beam)
    corner = CAMERA.detector_points(torch.float64)[-1, -1].numpy()
    assert np.allclose(points[0], 0) and np.allclose(points[3], corner)
    assert beam.GetPolyData().GetNumberOfLines() == 8


# ------------------------------------------------------------------ DRR and overlay


def test_drr_node_overlays_the_xray(scene):
    xray = _volume_node(scene, np.ones((1, 20, 24), np.float32), _oblique_ijk_to_ras(), "xray")
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    xray.SetAndObserveTransformNodeID(parent.GetID())
    drr = L.create_drr_node(xray, np.full((20, 24), 2.0, np.float32))
    assert np.array_equal(_ijk_to_ras(drr), _ijk_to_ras(xray))
    assert drr.GetTransformNodeID() == parent.GetID()
    with pytest.raises(InputError, match="shape"):
        L.create_drr_node(xray, np.zeros((24, 20)))

    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    L.show_overlay(xray, drr, 0.3)  # headless: no slicer.app, must not raise
    assert composite.GetBackgroundVolumeID() == xray.GetID()
    assert composite.GetForegroundVolumeID() == drr.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.3)


def _drr_worker():
    import importlib.util

    path = Path(L.__file__).with_name("drr_worker.py")
    spec = importlib.util.spec_from_file_location("drr_worker", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bead_ct(scene):
    """A 16^3 CT node of air with one bone bead off-centre; returns the node, the bead's and the
    volume centre's RAS points (4-vectors)."""
    n = 16
    hu = np.full((n, n, n), -1000, np.int16)
    hu[9:11, 5:7, 7:9] = 3000  # a bone bead off-centre (k, j, i)
    A = np.diag([4.0, 4.0, 4.0, 1.0])
    A[:3, 3] = [-30.0, -30.0, -30.0]
    return _volume_node(scene, hu, A), A @ [7.5, 5.5, 9.5, 1.0], A @ [7.5, 7.5, 7.5, 1.0]


def _shadow_centroid(drr):
    """Column and row of the bead's shadow (air integrates to ~0)."""
    w = np.clip(drr - 0.5 * drr.max(), 0, None)
    rows, cols = np.mgrid[:drr.shape[0], :drr.shape[1]]
    return np.array([(w * cols).sum(), (w * rows).sum()]) / w.sum()


def test_drr_worker_images_a_bead_where_the_camera_projects_it(scene, tmp_path, monkeypatch):
    """The DRR step of a registration (a subprocess in the panel) renders the case the panel wrote
    at result.json's pose, in row blocks, on the X-ray's full grid."""
    ct, bead, iso = _bead_ct(scene)
    camera = Camera(sdd=1000.0, pixel_spacing=(4.0, 4.0), principal_point=(11.5, 9.5), image_size=(20, 24))
    xray = _volume_node(scene, np.ones((1, 20, 24), np.float32), np.eye(4), "xray")
    T = canonical_ap_pose(torch.tensor(iso[:3]), camera.sdd)
    case = L.write_case(ct, xray, camera, tmp_path / "case")
    (tmp_path / "result.json").write_text(json.dumps({"camera_from_world": T.tolist()}))
    worker = _drr_worker()
    monkeypatch.setattr(worker, "MAX_SAMPLES", 24 * 14 * 3)  # several row blocks
    lines = []
    drr = worker.render_drr(case, tmp_path / "result.json", "cpu", progress=lines.append)
    assert len(lines) > 3 and lines[-1] == "PROGRESS drr 1.000"
    assert drr.shape == (20, 24) and drr.dtype == np.float32
    expected = project(torch.tensor(bead[None, :3]), T, camera)[0].numpy()
    assert np.abs(_shadow_centroid(drr) - expected).max() < 0.3
    # one block or many: the same image
    monkeypatch.setattr(worker, "MAX_SAMPLES", 1 << 23)
    assert np.allclose(worker.render_drr(case, tmp_path / "result.json", "cpu", progress=lambda m: None), drr,
                       atol=1e-5)


def test_drr_worker_distorts_each_views_drr_as_the_registration_undid_it(scene, tmp_path):
    """A view whose image-intensifier distortion was fitted (per_view) or given (for all) gets its DRR
    warped the same way, so that the overlay matches the X-ray as acquired."""
    from SphericalRegLib.distortion import distort
    from SphericalRegLib.views import orbit

    ct, _, iso = _bead_ct(scene)
    camera = Camera(sdd=1000.0, pixel_spacing=(4.0, 4.0), principal_point=(11.5, 9.5), image_size=(20, 24))
    xray0 = _volume_node(scene, np.ones((1, 20, 24), np.float32), np.eye(4), "ap")
    xray1 = _volume_node(scene, np.ones((1, 20, 24), np.float32), np.eye(4), "lateral")
    T = canonical_ap_pose(torch.tensor(iso[:3]), camera.sdd)
    (view,) = L.SphericalRegLogic.further_views(xray0, [(xray1, camera, orbit(80.0, 4.0, 800.0).numpy())])
    case = L.write_case(ct, xray0, camera, tmp_path / "case", other_views=[view])
    worker = _drr_worker()

    def drrs(**result):
        (tmp_path / "result.json").write_text(json.dumps({"camera_from_world": T.tolist(), **result}))
        return worker.render_drr(case, tmp_path / "result.json", "cpu", progress=lambda m: None, views=True)

    plain = drrs()
    per_view = [{"name": "view 0", "camera_from_world": T.tolist(),
                 "distortion": {"pincushion": 0.0, "s_distortion": 0.0}},
                {"name": "view_1", "camera_from_world": (orbit(80.0, 4.0, 800.0) @ T).tolist(),
                 "distortion": {"pincushion": 0.1, "s_distortion": 0.03}}]
    fitted = drrs(views=2, per_view=per_view)
    expected = distort(torch.from_numpy(plain[1])[None, None], torch.tensor([[0.1, 0.03]], dtype=torch.float64))
    assert np.array_equal(fitted[0], plain[0]) and not np.allclose(fitted[1], plain[1])
    assert np.allclose(fitted[1], expected[0, 0].numpy(), atol=1e-6)
    given = drrs(distortion={"pincushion": 0.1, "s_distortion": 0.03})
    assert all(not np.allclose(g, p) for g, p in zip(given, plain))


def test_drr_worker_renders_each_view_at_its_own_pose(scene, tmp_path):
    """view_1's DRR (drr_view_1.npy) is rendered with view 1's camera at result.json's per_view pose,
    or at camera_from_reference @ camera_from_world when result.json has no per_view."""
    from SphericalRegLib.views import orbit

    ct, bead, iso = _bead_ct(scene)
    bead = torch.tensor(bead[None, :3])
    camera0 = Camera(sdd=1000.0, pixel_spacing=(4.0, 4.0), principal_point=(11.5, 9.5), image_size=(20, 24))
    camera1 = Camera(sdd=900.0, pixel_spacing=(3.0, 3.0), principal_point=(14.5, 12.0), image_size=(26, 30))
    xray0 = _volume_node(scene, np.ones((1, 20, 24), np.float32), np.eye(4), "ap")
    xray1 = _volume_node(scene, np.ones((1, 26, 30), np.float32), np.eye(4), "lateral")
    T = canonical_ap_pose(torch.tensor(iso[:3]), camera0.sdd)
    relative = orbit(80.0, 4.0, 800.0)
    (view,) = L.SphericalRegLogic.further_views(xray0, [(xray1, camera1, relative.numpy())])
    case = L.write_case(ct, xray0, camera0, tmp_path / "case", other_views=[view])
    worker = _drr_worker()

    (tmp_path / "result.json").write_text(json.dumps({"camera_from_world": T.tolist()}))
    lines = []
    drr0, drr1 = worker.render_drr(case, tmp_path / "result.json", "cpu", progress=lines.append, views=True)
    assert drr0.shape == (20, 24) and drr1.shape == (26, 30) and lines[-1] == "PROGRESS drr 1.000"
    assert np.abs(_shadow_centroid(drr0) - project(bead, T, camera0)[0].numpy()).max() < 0.3
    assert np.abs(_shadow_centroid(drr1) - project(bead, relative @ T, camera1)[0].numpy()).max() < 0.3
    # result.json's per_view pose (a refined relative pose) wins over camera_from_reference
    shift = torch.eye(4, dtype=torch.float64)
    shift[:3, 3] = torch.tensor([8.0, -5.0, 0.0])  # mm in view 1's camera frame
    refined = shift @ relative @ T
    (tmp_path / "result.json").write_text(json.dumps({"camera_from_world": T.tolist(), "views": 2, "per_view": [
        {"name": "view 0", "camera_from_world": T.tolist()}, {"name": "view_1", "camera_from_world": refined.tolist()}]}))
    out = tmp_path / "out" / "drr.npy"
    out.parent.mkdir()
    assert worker.main([str(case), str(tmp_path / "result.json"), str(out), "--device", "cpu"]) == 0
    assert np.allclose(np.load(out), drr0, atol=1e-5)
    drr1_refined = np.load(out.with_name("drr_view_1.npy"))
    assert np.abs(_shadow_centroid(drr1_refined) - project(bead, refined, camera1)[0].numpy()).max() < 0.3
    assert np.abs(_shadow_centroid(drr1_refined) - _shadow_centroid(drr1)).max() > 1.0


def test_difference_and_edges():
    drr = np.zeros((8, 8), np.float32)
    drr[2:6, 2:6] = 1
    xray = -drr * 5 + 3  # the same anatomy as detector intensities (bone dark)
    assert np.allclose(L.difference_image(xray, drr), 0, atol=1e-4)
    edges = L.edge_image(drr)
    assert abs(edges[4, 4]) < 1e-5 and edges[2, 4] > 1  # the library's Sobel: flat inside, steep at the edge


# ------------------------------------------------------------------ cases, commands, processes


def test_case_written_from_nodes_reads_back_in_the_library(scene, tmp_path):
    from SphericalRegLib.io import read_case

    kji = (np.arange(4 * 5 * 6).reshape(4, 5, 6) * 7 - 500).astype(np.int16)
    ct = _volume_node(scene, kji, _oblique_ijk_to_ras())
    image = np.random.default_rng(1).uniform(100, 4000, (20, 24)).astype(np.float32)
    xray = _volume_node(scene, image[None], np.eye(4), "xray")
    folder = L.write_case(ct, xray, CAMERA, tmp_path / "case", _pose())
    case = read_case(folder)
    assert torch.equal(case.ct.data, L.volume_from_node(ct).data.float())
    assert torch.allclose(case.ct.ijk_to_ras, torch.from_numpy(_oblique_ijk_to_ras()), atol=1e-5)
    assert torch.equal(case.xray, torch.from_numpy(image)) and case.camera == CAMERA
    assert torch.allclose(case.init, _pose())
    with pytest.raises(InputError, match="not empty"):
        L.write_case(ct, xray, CAMERA, folder)


def test_commands_parse_with_the_real_cli(tmp_path):
    from SphericalRegLib.cli import build_parser

    parser = build_parser()
    cmd = L.register_command(tmp_path / "case", tmp_path / "m.pt", tmp_path / "out", use_init=True,
                             python="PythonSlicer", extra_args=["--iterations", "7"])
    assert cmd[:4] == ["PythonSlicer", "-m", "SphericalRegLib.cli", "register"]
    args = parser.parse_args(cmd[3:])
    assert (args.command, Path(args.case), Path(args.model), Path(args.out)) == \
        ("register", tmp_path / "case", tmp_path / "m.pt", tmp_path / "out")
    assert args.init and args.iterations == 7

    args = parser.parse_args(L.train_command(tmp_path / "ct.nrrd", tmp_path / "m.pt", python="py")[3:])
    assert (args.command, Path(args.ct), Path(args.out)) == ("train", tmp_path / "ct.nrrd", tmp_path / "m.pt")


def test_parse_progress():
    p = L.parse_progress("PROGRESS similarity 0.250")
    assert p == L.Progress(0.25, "similarity")
    p = L.parse_progress(" 15%|#5        | 30/200 [00:03<00:17,  9.8it/s]")
    assert p.fraction == pytest.approx(0.15)
    assert L.parse_progress("step 3/4: regressor 2.1 mm").fraction == 0.75
    assert L.parse_progress("registered in 3.2 s").fraction is None
    assert L.parse_progress("   ") is None


def test_read_result(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"camera_from_world": _pose().tolist(), "confidence": 0.9, "seconds": 1.0}))
    result = L.read_result(path)
    assert np.allclose(result["camera_from_world"], _pose().numpy()) and result["confidence"] == 0.9
    path.write_text(json.dumps({"camera_from_world": np.eye(3).tolist()}))
    with pytest.raises(InputError, match="4x4"):
        L.read_result(path)
    with pytest.raises(InputError, match="was not written"):
        L.read_result(tmp_path / "none.json")


def _run_to_end(proc, timeout=30.0):
    lines, start = [], time.time()
    while proc.running and time.time() - start < timeout:
        lines += proc.poll()
        time.sleep(0.02)
    return lines + proc.poll()


def test_background_process_reports_progress_lines():
    script = ("import sys\n"
              "print('PROGRESS regressor 0.500', flush=True)\n"
              "sys.stderr.write('\\r 50%|#####     | 1/2 [00:00<00:00]\\r100%|##########| 2/2 [00:00<00:00]\\n')\n"
              "print('done', flush=True)\n")
    proc = L.BackgroundProcess([sys.executable, "-c", script]).start()
    lines = _run_to_end(proc)
    assert proc.returncode == 0 and not proc.cancelled
    fractions = [p.fraction for p in map(L.parse_progress, lines) if p and p.fraction is not None]
    assert fractions == [0.5, 0.5, 1.0] and lines[-1] == "done"


def test_background_process_cancel_kills_the_whole_tree(tmp_path):
    pid_file = tmp_path / "child.pid"
    # a launcher that starts the real worker, as PythonSlicer does
    worker = "import time; time.sleep(60)"
    launcher = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {worker!r}]);"
                f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); p.wait()")
    proc = L.BackgroundProcess([sys.executable, "-c", launcher]).start()
    start = time.time()
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() - start < 20, "the worker did not start"
        time.sleep(0.02)
    child = int(pid_file.read_text())
    proc.cancel()
    assert proc.cancelled and proc.wait(5) != 0
    time.sleep(0.2)
    if os.name != "nt":
        stat = Path(f"/proc/{child}/stat")
        alive = stat.exists() and stat.read_text().split()[2] != "Z"  # a zombie has been killed
        assert not alive, "the worker outlived the cancel"


# ------------------------------------------------------------------ export


def test_exported_transform_loads_back_in_slicer_unchanged(scene, tmp_path):
    node = L.pose_to_transform_node(_pose(), scene=scene)
    path = L.export_transform(node, tmp_path / "world_from_camera.tfm")
    loaded = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "loaded")
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(loaded)
    assert np.allclose(slicer.util.arrayFromTransformMatrix(loaded), slicer.util.arrayFromTransformMatrix(node),
                       atol=1e-9)
    with pytest.raises(InputError, match="exists"):
        L.export_transform(node, path)


# ------------------------------------------------------------------ registration from nodes

SHIPPED_MODEL = Path(__file__).resolve().parents[3] / "Resources" / "Models" / "chest_example.pt"


def test_registration_from_nodes_fills_the_transform_node(scene, tmp_path):
    """A simulated X-ray of the example CT, as MRML nodes, registered in-process with the shipped
    model and a few iterations: the output node holds the result and the pose moved towards the truth."""
    from SphericalRegLib.example import example_ct_path
    from SphericalRegLib.io import read_case, read_truth
    from SphericalRegLib.metrics import mtre
    from SphericalRegLib.register import IntensityLevel
    from SphericalRegLib.simulate import write_cases

    assert SHIPPED_MODEL.exists(), "the example model ships with the repository (Resources/Models)"
    (folder,) = write_cases(example_ct_path(), tmp_path / "cases", 1, seed=11, size=96, log=lambda m: None)
    case = read_case(folder)
    truth, landmarks = read_truth(folder)
    ct_node = _volume_node(scene, case.ct.data.permute(2, 1, 0).numpy(), case.ct.ijk_to_ras.numpy(), "ct")
    xray_node = _volume_node(scene, case.xray.numpy()[None], np.eye(4), "xray")
    chosen = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "my output")
    node, result = L.SphericalRegLogic().register(
        ct_node, xray_node, case.camera, SHIPPED_MODEL, output_transform_node=chosen, init=case.init.numpy(),
        iterations=2, search_step_mm=0, refine_levels=(IntensityLevel(3.0, 64, 8, "ncc", 4),))
    assert node is chosen  # the node the user picked, no other
    assert np.allclose(L.pose_from_transform_node(node), result.camera_from_world.numpy(), atol=1e-6)
    assert node.GetAttribute(L.ATTRIBUTE_PREFIX + "iterations") is not None
    assert float(mtre(result.camera_from_world, truth, landmarks)) < float(mtre(case.init, truth, landmarks))


# ------------------------------------------------------------------ background jobs


def _nodes_of_case(scene, folder):
    from SphericalRegLib.io import read_case

    case = read_case(folder)
    ct = _volume_node(scene, case.ct.data.permute(2, 1, 0).numpy(), case.ct.ijk_to_ras.numpy(), "ct")
    xray = _volume_node(scene, case.xray.numpy()[None], _oblique_ijk_to_ras(), "xray")
    return case, ct, xray


FAST = ["--iterations", "2", "--no-refine", "--threads", "1"]


def test_registration_job_shows_the_subprocess_drr_on_the_nodes_chosen_at_start(scene, tiny_model_file, tiny_cases,
                                                                               monkeypatch):
    """The DRR node comes from the background step's drr.npy: rendering in this process fails the
    test. The result lands on the nodes chosen when the job started, and the case folder is deleted."""
    import SphericalRegLib.diffdrr_bridge as bridge
    import SphericalRegLib.render as render

    def no_render(*args, **kwargs):
        raise AssertionError("the GUI process rendered a DRR")

    monkeypatch.setattr(render.Renderer, "forward", no_render)
    monkeypatch.setattr(render, "render", no_render)
    monkeypatch.setattr(bridge, "siddon_line_integrals", no_render)

    case, ct, xray = _nodes_of_case(scene, tiny_cases / "case_000")
    chosen = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "chosen")
    logic = L.SphericalRegLogic()
    job = logic.start_registration(ct, xray, case.camera, tiny_model_file, chosen, init_camera_from_world=case.init,
                                   python=sys.executable, device="cpu", extra_args=FAST)
    assert job.work_dir.is_dir() and (job.work_dir / "case" / "ct.nrrd").is_file()
    with pytest.raises(InputError, match="another job"):
        logic.start_registration(ct, xray, case.camera, tiny_model_file)
    # the user picks other nodes while it runs: the job does not follow
    scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "picked later")
    assert job.process.wait(timeout=240) == 0, "\n".join(job.poll()[-20:])
    job.poll()
    assert any(line.startswith("PROGRESS drr") for line in job.log)
    expected = np.load(job.drr_path)
    finished = logic.finish_registration(job, scene)
    assert finished["transform"] is chosen and logic.job is None
    assert job.process.codes[0] in (0, 3) and finished["diverged"] == (job.process.codes[0] == 3)
    assert not job.work_dir.exists(), "the temporary case folder (a copy of the CT) was not deleted"
    drr = finished["drr"]
    assert np.array_equal(L.xray_image_from_node(drr), expected) and expected.shape == case.xray.shape
    assert np.array_equal(_ijk_to_ras(drr), _ijk_to_ras(xray))
    assert xray.GetNodeReference("SphericalReg.drr") is drr
    assert chosen.GetNodeReference("SphericalReg.detector").GetParentTransformNode() is chosen
    assert np.allclose(L.pose_from_transform_node(chosen), finished["result"]["camera_from_world"])
    # a second result reuses the DRR node rather than adding one
    again = L.SphericalRegLogic.drr_node_from_file(xray, _save(expected * 2))
    assert again is drr and np.array_equal(L.xray_image_from_node(drr), expected * 2)


def _save(image):
    import tempfile

    path = Path(tempfile.mkdtemp()) / "drr.npy"
    np.save(path, image)
    return path


def test_finishing_fails_cleanly_when_a_node_was_removed(scene, tmp_path):
    ct = _volume_node(scene, np.zeros((4, 4, 4), np.int16), np.eye(4))
    xray = _volume_node(scene, np.ones((1, 20, 24), np.float32), np.eye(4), "xray")
    work = tmp_path / "work"
    work.mkdir()
    job = L.Job("register", L.BackgroundProcess([sys.executable, "-c", "pass"]).start(), work, ct_id=ct.GetID(),
                xray_id=xray.GetID(), camera=CAMERA, result_path=work / "result.json", drr_path=work / "drr.npy")
    job.process.wait(20)
    scene.RemoveNode(xray)
    logic = L.SphericalRegLogic()
    logic.job = job
    with pytest.raises(InputError, match="removed"):
        logic.finish_registration(job, scene)
    assert not work.exists() and logic.job is None


def test_cancel_stops_the_job_and_deletes_its_folder(tmp_path):
    """What the panel does when the scene closes during a job (onSceneStartClose -> logic.cancel)."""
    work = tmp_path / "work"
    (work / "case").mkdir(parents=True)
    logic = L.SphericalRegLogic()
    steps = [[sys.executable, "-c", "import time; time.sleep(60)"], [sys.executable, "-c", "print('never')"]]
    logic.job = L.Job("register", L.BackgroundProcess(steps).start(), work)
    process = logic.job.process
    assert process.running
    logic.cancel()
    assert process.cancelled and not process.running and process.step == 0
    assert not work.exists() and logic.job is None


def test_steps_run_in_order_and_stop_at_a_failure():
    ok = L.BackgroundProcess([[sys.executable, "-c", "print('one')"], [sys.executable, "-c", "print('two')"]]).start()
    assert ok.wait(30) == 0
    assert ok.poll() == ["one", "two"] or True  # lines may have been drained by wait's joins
    bad = L.BackgroundProcess([[sys.executable, "-c", "import sys; sys.exit(3)"],
                               [sys.executable, "-c", "print('two')"]]).start()
    assert bad.wait(30) == 3 and bad.step == 0


def test_training_overwrites_only_when_confirmed(scene, tmp_path):
    ct = _volume_node(scene, np.zeros((4, 4, 4), np.int16), np.eye(4))
    model = tmp_path / "model.pt"
    model.write_bytes(b"old")
    logic = L.SphericalRegLogic()
    with pytest.raises(InputError, match="exists"):
        logic.start_training(ct, model, python=sys.executable, extra_args=["--help"])
    job = logic.start_training(ct, model, overwrite=True, python=sys.executable, extra_args=["--help"])
    assert not model.exists(), "the confirmed file is replaced, not refused"
    job.process.wait(60)
    logic.cancel()
    assert not job.work_dir.exists()


# ------------------------------------------------------------------ DICOM parity with the command line


def test_panel_and_command_line_read_the_same_dicom_xray(scene, tmp_path):
    """DetectorActiveOrigin and MONOCHROME1 included: the panel's camera and pixels are the library's."""
    import SimpleITK as sitk
    from SphericalRegLib.io import read_case, read_xray

    pixels = (np.random.default_rng(0).random((20, 30)) * 4000).astype(np.uint16)
    image = sitk.GetImageFromArray(pixels)
    for k, v in {"0018|1110": "1100", "0018|1164": "0.4\\0.5", "0018|7028": "-4.2\\-7.5"}.items():
        image.SetMetaData(k, v)
    sitk.WriteImage(image, str(tmp_path / "m2.dcm"))
    path = tmp_path / "xray.dcm"
    path.write_bytes((tmp_path / "m2.dcm").read_bytes().replace(b"MONOCHROME2", b"MONOCHROME1"))
    lib_image, lib_camera, meta = read_xray(path)
    assert meta["stored_photometric"] == "MONOCHROME1"

    node = _volume_node(scene, pixels[None].astype(np.float32), np.eye(4), "xray")  # as stored
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    camera = L.camera_from_node(node)
    assert camera == lib_camera
    assert camera.principal_point == pytest.approx((7.5 / 0.5 - 0.5, 4.2 / 0.4 - 0.5))
    assert np.array_equal(L.xray_for_registration(node), lib_image.numpy())
    case = read_case(L.write_case(_volume_node(scene, np.zeros((4, 4, 4), np.int16), np.eye(4)), node, camera,
                                  tmp_path / "case"))
    assert torch.equal(case.xray, lib_image) and case.camera == lib_camera
    # the DICOM database path: tags as the database returns them give the same camera
    tags = {"0018,1110": "1100", "0018,1164": "0.4\\0.5", "0018,7028": "-4.2\\-7.5", "0028,0004": "MONOCHROME1"}
    assert L.camera_from_dicom_tags(tags, (20, 30)) == lib_camera


def test_is_single_slice(scene):
    assert L.is_single_slice(_volume_node(scene, np.ones((1, 4, 5), np.float32), np.eye(4), "x"))
    assert not L.is_single_slice(_volume_node(scene, np.ones((3, 4, 5), np.float32), np.eye(4), "ct"))
    assert not L.is_single_slice(None)


# ------------------------------------------------------------------ display


def test_opacity_changes_only_the_opacity_and_compare_reuses_one_volume(scene):
    xray = _volume_node(scene, np.random.default_rng(0).random((1, 20, 24)).astype(np.float32), np.eye(4), "xray")
    drr = L.create_drr_node(xray, np.random.default_rng(1).random((20, 24)).astype(np.float32))
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    L.show_overlay(xray, drr, 0.5)
    n_volumes = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    L.set_overlay_opacity(scene, 0.2)
    assert composite.GetForegroundOpacity() == pytest.approx(0.2)
    assert composite.GetForegroundVolumeID() == drr.GetID()
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_volumes
    diff = L.comparison_node(xray, drr, "difference")
    edges = L.comparison_node(xray, drr, "edges", node=diff)
    assert edges is diff and scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_volumes + 1
    assert np.allclose(L.xray_image_from_node(edges), L.edge_image(L.xray_image_from_node(drr)))
    assert L.comparison_node(xray, drr, "drr") is drr


# ------------------------------------------------------------------ scene bundle and OpenIGTLink


def test_scene_bundle_reopens_with_the_transform_and_the_c_arm(scene, tmp_path):
    ct = _volume_node(scene, (np.arange(64).reshape(4, 4, 4) * 10).astype(np.int16), _oblique_ijk_to_ras(), "ct")
    xray = _volume_node(scene, np.arange(480, dtype=np.float32).reshape(1, 20, 24), np.eye(4), "xray")
    node = L.store_result(ct, _pose(), metrics={"confidence": 0.7})
    L.show_c_arm(node, CAMERA, xray)
    L.create_drr_node(xray, np.ones((20, 24), np.float32))
    path = L.save_scene_bundle(tmp_path / "nav.mrb", scene)
    with pytest.raises(InputError, match="exists"):
        L.save_scene_bundle(path, scene)
    with pytest.raises(InputError, match=".mrb"):
        L.save_scene_bundle(tmp_path / "nav.mrml", scene)
    back = slicer.vtkMRMLScene()  # a fresh scene, as File > Open reads the bundle
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(str(tmp_path / "cache"))
    io = slicer.vtkDataIOManager()
    io.SetCacheManager(cache)
    back.SetDataIOManager(io)
    back.SetCacheManager(cache)
    assert back.ReadFromMRB(str(path))
    loaded = back.GetFirstNodeByName(node.GetName())
    assert np.allclose(slicer.util.arrayFromTransformMatrix(loaded), slicer.util.arrayFromTransformMatrix(node))
    assert loaded.GetAttribute("SphericalReg.confidence") == node.GetAttribute("SphericalReg.confidence")
    detector = back.GetFirstNodeByName("xray on detector")
    assert detector is not None and detector.GetParentTransformNode().GetID() == loaded.GetID()
    assert np.array_equal(slicer.util.arrayFromVolume(detector)[0], L.xray_image_from_node(xray))
    assert back.GetFirstNodeByName("ct") is not None and back.GetFirstNodeByName("xray DRR") is not None


def test_openigtlink_is_guarded(scene):
    node = L.pose_to_transform_node(_pose(), scene=scene)
    if L.openigtlink_available():
        pytest.skip("SlicerOpenIGTLink is present here")
    with pytest.raises(InputError, match="OpenIGTLink"):
        L.send_transform(node)


def test_openigtlink_sends_through_a_connector(scene):
    class Connector:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            return lambda *a: self.calls.append((name, a))

    node = L.pose_to_transform_node(_pose(), scene=scene)
    connector = Connector()
    import SphericalRegLogic.export as export

    original = export.openigtlink_available
    export.openigtlink_available = lambda: True
    try:
        assert L.send_transform(node, connector=connector) is connector
    finally:
        export.openigtlink_available = original
    assert [c[0] for c in connector.calls] == ["RegisterOutgoingMRMLNode", "PushNode"]
    assert connector.calls[1][1] == (node,)


# ------------------------------------------------------------------ Sample Data


def test_sample_data_sources_are_local_files_slicer_can_fetch(monkeypatch):
    import types
    import urllib.request

    import SphericalRegLogic.sampledata as sampledata

    sources = sampledata.sources()
    names = [s["sampleName"] for s in sources]
    assert names == ["SphericalReg chest CT", "SphericalReg chest X-ray (simulated)"]
    for source in sources:
        (uri,) = source["uris"]
        assert uri.startswith("file://") and Path(urllib.request.url2pathname(uri[len("file://"):])).is_file()
        assert source["loadFileType"] == "VolumeFile" and Path(source["thumbnailFileName"]).is_file()
    registered = []
    fake = types.SimpleNamespace(SampleDataLogic=types.SimpleNamespace(
        registerCustomSampleDataSource=lambda **kwargs: registered.append(kwargs)))
    monkeypatch.setitem(sys.modules, "SampleData", fake)
    assert sampledata.register_sample_data() == 2 and registered == sources


def test_sample_xray_carries_its_geometry(scene, tmp_path):
    """Loaded from Sample Data's cache (a copy of the file), the X-ray's camera comes from its tags."""
    import shutil

    from SphericalRegLib.io import read_xray
    from SphericalRegLogic.sampledata import SAMPLE_XRAY

    copy = tmp_path / SAMPLE_XRAY.name
    shutil.copy(SAMPLE_XRAY, copy)
    image, camera, meta = read_xray(copy)
    assert meta["geometry_source"] == "dicom" and camera.image_size == (256, 256)
    node = _volume_node(scene, image.numpy()[None], np.eye(4), "SphericalReg chest X-ray")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(copy))
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert L.camera_from_node(node) == camera


# ------------------------------------------------------------------ several views (issue 13)

CAMERA_1 = Camera(sdd=1100.0, pixel_spacing=(0.6, 0.6), principal_point=(14.0, 8.5), image_size=(16, 30))


def _turn(deg=75.0) -> np.ndarray:
    from SphericalRegLib.views import orbit

    return orbit(deg, 5.0, 800.0).numpy()


def test_case_for_two_xray_nodes_reads_back_as_two_views(scene, tmp_path):
    """view_1/ as the conventions say: its own X-ray (another size and pixel spacing: allowed) and a
    geometry.json with camera_from_reference, from a transform node or a matrix."""
    from SphericalRegLib.io import read_case

    ct = _volume_node(scene, np.zeros((4, 5, 6), np.int16), _oblique_ijk_to_ras())
    image0 = np.random.default_rng(1).uniform(100, 4000, (20, 24)).astype(np.float32)
    image1 = np.random.default_rng(2).uniform(100, 4000, (16, 30)).astype(np.float32)
    xray0 = _volume_node(scene, image0[None], np.eye(4), "ap")
    xray1 = _volume_node(scene, image1[None], np.eye(4), "lateral")
    relative = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "lateral from ap")
    relative.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(_turn()))
    views = L.SphericalRegLogic.further_views(xray0, [(xray1, CAMERA_1, relative)])
    assert views[0].name == "view_1" and np.allclose(views[0].camera_from_reference, _turn())
    case = read_case(L.write_case(ct, xray0, CAMERA, tmp_path / "case", _pose(), views))
    assert len(case.views) == 2 and [v.name for v in case.views] == ["view 0", "view_1"]
    assert torch.equal(case.views[0].xray, torch.from_numpy(image0)) and case.views[0].camera == CAMERA
    assert torch.equal(case.views[1].xray, torch.from_numpy(image1)) and case.views[1].camera == CAMERA_1
    assert torch.allclose(case.views[1].camera_from_reference, torch.from_numpy(_turn()), atol=1e-12)
    assert torch.allclose(case.views[0].camera_from_reference, torch.eye(4, dtype=torch.float64))
    # a second X-ray loaded from a view_1/ folder carries its relative pose in the geometry.json beside it
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tmp_path / "case" / "view_1" / "xray.npy"))
    xray1.SetAndObserveStorageNodeID(storage.GetID())
    assert np.allclose(L.relative_pose_beside_file(xray1), _turn())
    assert L.camera_from_node(xray1) == CAMERA_1
    (beside,) = L.SphericalRegLogic.further_views(xray0, [(xray1, CAMERA_1, None)])
    assert np.allclose(beside.camera_from_reference, _turn())


def test_bad_second_views_are_named(scene, tmp_path):
    ct = _volume_node(scene, np.zeros((4, 5, 6), np.int16), np.eye(4))
    xray0 = _volume_node(scene, np.ones((1, 20, 24), np.float32), np.eye(4), "ap")
    xray1 = _volume_node(scene, np.ones((1, 16, 30), np.float32), np.eye(4), "lateral")
    logic = L.SphericalRegLogic()
    model = tmp_path / "model.pt"
    model.write_bytes(b"")

    def start(*views):
        return logic.start_registration(ct, xray0, CAMERA, model, other_views=views, work_dir=tmp_path / "w",
                                        python=sys.executable)

    with pytest.raises(InputError, match=r"view_1 \(lateral\).*no relative pose.*camera_from_reference"):
        start((xray1, CAMERA_1, None))
    sheared = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "sheared")
    sheared.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.diag([1.0, 1.2, 1.0, 1.0])))
    with pytest.raises(InputError, match=r"view_1 \(lateral\): transform sheared.*camera_from_reference is not a rigid"):
        start((xray1, CAMERA_1, sheared))
    with pytest.raises(InputError, match=r"view_1 \(lateral\).*geometry is for a 20 x 24 image.*16 x 30"):
        start((xray1, CAMERA, _turn()))
    with pytest.raises(InputError, match=r"view_1 \(ap\).*same node as view 0"):
        start((xray0, CAMERA, _turn()))
    ct_as_xray = _volume_node(scene, np.zeros((3, 4, 5), np.float32), np.eye(4), "ct again")
    with pytest.raises(InputError, match=r"view_2 \(ct again\).*single-slice"):
        start((xray1, CAMERA_1, _turn()), (ct_as_xray, CAMERA_1, _turn()))
    with pytest.raises(InputError, match=r"view_2 \(lateral\).*same node as view_1"):
        start((xray1, CAMERA_1, _turn()), (xray1, CAMERA_1, _turn(-80)))
    assert logic.job is None and not (tmp_path / "w").exists()
    # a good second view with a roughly known relative pose: --relative-sd reaches the register step
    from SphericalRegLib.cli import build_parser

    job = logic.start_registration(ct, xray0, CAMERA, model, other_views=[(xray1, CAMERA_1, _turn())],
                                   relative_sd_deg=2.0, work_dir=tmp_path / "w", python=sys.executable)
    register_step = job.process.steps[0]
    logic.cancel()
    args = build_parser().parse_args(register_step[3:])
    assert args.relative_sd == 2.0 and Path(args.case) == tmp_path / "w" / "case"
    assert [v["name"] for v in job.views] == ["view_1"] and job.views[0]["drr_path"].name == "drr_view_1.npy"
    job = logic.start_registration(ct, xray0, CAMERA, model, relative_sd_deg=2.0, work_dir=tmp_path / "w1",
                                   python=sys.executable)
    assert "--relative-sd" not in job.process.steps[0] and job.views == []  # one view: nothing to refine
    logic.cancel()


def test_an_image_intensifier_distortion_reaches_the_register_step_or_is_refused(scene, tmp_path):
    from SphericalRegLib.cli import build_parser

    ct = _volume_node(scene, np.zeros((4, 5, 6), np.int16), np.eye(4))
    xray = _volume_node(scene, np.ones((1, 20, 24), np.float32), np.eye(4), "ap")
    logic = L.SphericalRegLogic()
    model = tmp_path / "model.pt"
    model.write_bytes(b"")
    job = logic.start_registration(ct, xray, CAMERA, model, distortion=(0.08, -0.02), work_dir=tmp_path / "w",
                                   python=sys.executable)
    register_step = job.process.steps[0]
    logic.cancel()
    assert build_parser().parse_args(register_step[3:]).distortion == "0.08,-0.02"
    job = logic.start_registration(ct, xray, CAMERA, model, distortion=(0.0, 0.0), work_dir=tmp_path / "w1",
                                   python=sys.executable)
    assert "--distortion" not in job.process.steps[0]  # a flat panel: nothing to undo
    logic.cancel()
    with pytest.raises(InputError, match="image-intensifier distortion"):
        logic.start_registration(ct, xray, CAMERA, model, distortion=(0.8, 0.0), work_dir=tmp_path / "w2",
                                 python=sys.executable)
    assert logic.job is None or not logic.job.running


def test_two_view_job_gives_a_drr_and_a_transform_per_view(scene, tiny_model_file, tiny_two_view_case, tmp_path):
    """A real two-view job (tiny model, a few iterations): result.json says two views, each view
    gets its DRR node (from drr.npy and drr_view_1.npy, on its own X-ray's grid) and its transform
    (world_from_camera_view_1, as the .tfm holds it) with its C-arm under it."""
    from SphericalRegLib.io import read_case, read_itk_transform

    case = read_case(tiny_two_view_case)
    assert len(case.views) == 2 and case.views[1].xray.shape == (40, 44)
    ct = _volume_node(scene, case.ct.data.permute(2, 1, 0).numpy(), case.ct.ijk_to_ras.numpy(), "ct")
    xray0 = _volume_node(scene, case.xray.numpy()[None], _oblique_ijk_to_ras(), "ap")
    xray1 = _volume_node(scene, case.views[1].xray.numpy()[None], np.eye(4), "lateral")
    relative = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "lateral from ap")
    relative.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(case.views[1].camera_from_reference.numpy()))
    logic = L.SphericalRegLogic()
    job = logic.start_registration(ct, xray0, case.camera, tiny_model_file, init_camera_from_world=case.init,
                                   python=sys.executable, device="cpu", extra_args=FAST,
                                   other_views=[(xray1, case.views[1].camera, relative)])
    written = read_case(job.work_dir / "case")
    assert len(written.views) == 2
    assert torch.allclose(written.views[1].camera_from_reference, case.views[1].camera_from_reference, atol=1e-12)
    assert job.process.wait(timeout=300) == 0, "\n".join(job.poll()[-20:])
    job.poll()
    out = job.result_path.parent
    assert (out / "drr_view_1.npy").is_file() and (out / "world_from_camera_view_1.tfm").is_file()
    itk_view_1 = read_itk_transform(out / "world_from_camera_view_1.tfm")
    expected = [np.load(job.drr_path), np.load(out / "drr_view_1.npy")]
    finished = logic.finish_registration(job, scene)
    assert finished["result"]["views"] == 2 and not job.work_dir.exists()
    views = finished["views"]
    assert [v["name"] for v in views] == ["view 0", "view_1"]
    assert views[0]["transform"] is finished["transform"] and views[0]["drr"] is finished["drr"]
    for view, xray, image in zip(views, (xray0, xray1), expected):
        drr = view["drr"]
        assert xray.GetNodeReference("SphericalReg.drr") is drr
        assert np.array_equal(L.xray_image_from_node(drr), image) and image.shape == L.xray_image_from_node(xray).shape
        assert np.array_equal(_ijk_to_ras(drr), _ijk_to_ras(xray))
        assert view["c_arm"]["detector"].GetParentTransformNode() is view["transform"]
        assert view["final_ncc"] is not None and "depth_sd_mm" in (view["uncertainty"] or {"depth_sd_mm": 0})
        assert view["residual_shift_mm"] > 0
    t1 = views[1]["transform"]
    assert t1 is not finished["transform"] and finished["transform"].GetNodeReference("SphericalReg.view_1") is t1
    assert np.allclose(slicer.util.arrayFromTransformMatrix(t1), np.asarray(itk_view_1), atol=1e-6)
    T0 = L.pose_from_transform_node(finished["transform"])
    assert np.allclose(L.pose_from_transform_node(t1), case.views[1].camera_from_reference.numpy() @ T0, atol=1e-6)
    assert t1.GetAttribute("SphericalReg.final_ncc") not in (None, "")
    # the detector plane of view 1 sits where view 1's camera images its pixels
    plane = views[1]["c_arm"]["detector"]
    (du, dv), (cu, cv) = case.views[1].camera.pixel_spacing, case.views[1].camera.principal_point
    world = _to_world(plane) @ [5, 7, 0, 1]
    assert np.allclose(world, np.linalg.inv(L.pose_from_transform_node(t1)) @ [(5 - cu) * du, (7 - cv) * dv,
                                                                                case.views[1].camera.sdd, 1.0],
                       atol=1e-6)
    # the scene bundle reopens with view 1's transform, referenced from view 0's, and its C-arm under it
    path = L.save_scene_bundle(tmp_path / "two-views.mrb", scene)
    back = slicer.vtkMRMLScene()
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(str(path.parent / "cache"))
    io = slicer.vtkDataIOManager()
    io.SetCacheManager(cache)
    back.SetDataIOManager(io)
    back.SetCacheManager(cache)
    assert back.ReadFromMRB(str(path))
    loaded = back.GetFirstNodeByName(finished["transform"].GetName()).GetNodeReference("SphericalReg.view_1")
    assert loaded is not None and loaded.GetName() == t1.GetName()
    assert np.allclose(slicer.util.arrayFromTransformMatrix(loaded), slicer.util.arrayFromTransformMatrix(t1))
    assert back.GetFirstNodeByName("lateral on detector").GetParentTransformNode().GetID() == loaded.GetID()
    # a second result reuses view 1's transform and DRR node
    n_transforms = scene.GetNumberOfNodesByClass("vtkMRMLLinearTransformNode")
    job = logic.start_registration(ct, xray0, case.camera, tiny_model_file, finished["transform"],
                                   init_camera_from_world=case.init, python=sys.executable, device="cpu",
                                   extra_args=FAST, other_views=[(xray1, case.views[1].camera, relative)])
    assert job.process.wait(timeout=300) == 0
    again = logic.finish_registration(job, scene)
    assert again["views"][1]["transform"] is t1 and again["views"][1]["drr"] is views[1]["drr"]
    assert scene.GetNumberOfNodesByClass("vtkMRMLLinearTransformNode") == n_transforms


def test_in_process_registration_takes_further_views(scene, tiny_model_file, tiny_two_view_case):
    """For scripts: register() with a second X-ray node registers both views jointly."""
    from SphericalRegLib.io import read_case

    case = read_case(tiny_two_view_case)
    ct = _volume_node(scene, case.ct.data.permute(2, 1, 0).numpy(), case.ct.ijk_to_ras.numpy(), "ct")
    xray0 = _volume_node(scene, case.xray.numpy()[None], np.eye(4), "ap")
    xray1 = _volume_node(scene, case.views[1].xray.numpy()[None], np.eye(4), "lateral")
    relative = case.views[1].camera_from_reference.numpy()
    node, result = L.SphericalRegLogic().register(ct, xray0, case.camera, tiny_model_file, init=case.init.numpy(),
                                                  device="cpu", other_views=[(xray1, case.views[1].camera, relative)],
                                                  iterations=2, refine=False)
    assert [v.name for v in result.views] == ["view 0", "view_1"] and result.to_json()["views"] == 2
    assert np.allclose(result.views[1].camera_from_world.numpy(), relative @ result.camera_from_world.numpy(),
                       atol=1e-9)
    assert np.allclose(L.pose_from_transform_node(node), result.camera_from_world.numpy(), atol=1e-6)
    with pytest.raises(InputError, match=r"view_1 \(lateral\).*not a rigid"):
        L.SphericalRegLogic().register(ct, xray0, case.camera, tiny_model_file, init=case.init.numpy(),
                                       other_views=[(xray1, case.views[1].camera, np.eye(4) * 2)])
