"""Reading CTs, X-rays, cases and transforms from real files; every bad file is a clear InputError."""

import gzip
import json
import struct

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SphericalRegLib.camera import Camera
from SphericalRegLib.errors import InputError
from SphericalRegLib.geometry import make_pose, so3_exp
from SphericalRegLib.io import (
    read_case, read_ct, read_itk_transform, read_truth, read_xray, write_itk_transform, write_json,
    write_result,
)

CAMERA = Camera(1000.0, (0.5, 0.4), (14.5, 9.5), (20, 30))


def oblique_ct():
    """A small CT with a non-axial direction, an origin and anisotropic spacing (LPS, as ITK holds it)."""
    arr = (np.arange(5 * 6 * 7).reshape(7, 6, 5) * 3 - 1000).astype(np.int16)  # [k, j, i]
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    R = so3_exp(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)).numpy()
    image.SetDirection(R.ravel().tolist())
    return image, arr


def expected_ijk_to_ras(image):
    D = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    A = np.eye(4)
    A[:3, :3], A[:3, 3] = D, image.GetOrigin()
    return np.diag([-1.0, -1, 1, 1]) @ A


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nrrd", "ct.mha"])
def test_read_ct_keeps_header_and_hu(tmp_path, name):
    image, arr = oblique_ct()
    sitk.WriteImage(image, str(tmp_path / name))
    v = read_ct(tmp_path / name)
    assert v.data.dtype == torch.float32 and v.shape == (5, 6, 7)
    assert torch.equal(v.data, torch.from_numpy(arr.astype(np.float32)).permute(2, 1, 0))
    np.testing.assert_allclose(v.ijk_to_ras.numpy(), expected_ijk_to_ras(image), atol=1e-5)


def test_read_ct_dicom_series(tmp_path):
    image, arr = oblique_ct()
    image.SetDirection(np.eye(3).ravel().tolist())  # DICOM slices are written axial here
    folder = tmp_path / "ct"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        for tag, value in [("0008|0060", "CT"), ("0020|000e", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k))))),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0013", str(k)), ("0028|1052", "0"),
                           ("0028|1053", "1")]:
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(s)
    v = read_ct(folder)
    assert v.shape == (5, 6, 7)
    assert torch.equal(v.data, torch.from_numpy(arr.astype(np.float32)).permute(2, 1, 0))
    np.testing.assert_allclose(v.ijk_to_ras.numpy(), expected_ijk_to_ras(image), atol=1e-4)


def nifti_with(tmp_path, spacing_value):
    """A .nii.gz whose pixdim[2] is patched (ITK refuses to write it, and reads it silently as 1 mm)."""
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9, 10), np.int16)), str(tmp_path / "a.nii"))
    b = bytearray((tmp_path / "a.nii").read_bytes())
    b[84:88] = struct.pack("<f", spacing_value)
    b[254:256] = struct.pack("<h", 0)  # no sform: pixdim is the spacing
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(gzip.compress(bytes(b)))
    return path


def test_read_ct_errors(tmp_path):
    def fails(path, *words):
        with pytest.raises(InputError) as e:
            read_ct(path)
        msg = str(e.value)
        assert str(path) in msg and all(w in msg for w in words), msg

    fails(tmp_path / "missing.nii.gz", "not found")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((9, 10), np.int16)), str(tmp_path / "flat.nii.gz"))
    fails(tmp_path / "flat.nii.gz", "not a 3D volume")
    fails(nifti_with(tmp_path, 0.0), "spacing", "0.0")
    fails(nifti_with(tmp_path, -1.0), "spacing", "-1.0")
    (tmp_path / "zero.mha").write_text("ObjectType = Image\nNDims = 3\nElementSpacing = 1 0 2\nDimSize = 2 2 2\n"
                                       "ElementType = MET_SHORT\nElementDataFile = LOCAL\n" + "\0" * 16)
    fails(tmp_path / "zero.mha", "spacing")
    image, _ = oblique_ct()
    sitk.WriteImage(image, str(tmp_path / "ok.nii.gz"))
    data = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    fails(tmp_path / "cut.nii.gz", "truncated")
    sitk.WriteImage(image, str(tmp_path / "ok.nrrd"))
    data = (tmp_path / "ok.nrrd").read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(data[:-100])
    fails(tmp_path / "cut.nrrd", "truncated")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image at all")
    fails(tmp_path / "junk.nii.gz", "unreadable")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "no DICOM series")


def dicom_xray(path, pixels, tags):
    image = sitk.GetImageFromArray(pixels)
    for k, v in tags.items():
        image.SetMetaData(k, v)
    sitk.WriteImage(image, str(path))


def test_read_xray_dicom_geometry_from_tags(tmp_path):
    pixels = (np.random.default_rng(0).random((20, 30)) * 4000).astype(np.uint16)
    tags = {"0018|1110": "1100", "0018|1164": "0.4\\0.5", "0018|7028": "-4.2\\-7.5",
            "0028|0004": "MONOCHROME1", "0018|1510": "12.5", "0018|1511": "-3"}
    dicom_xray(tmp_path / "m2.dcm", pixels, tags)
    # SimpleITK writes MONOCHROME2 whatever it is told; the tag is patched in place (same length)
    data = (tmp_path / "m2.dcm").read_bytes()
    assert data.count(b"MONOCHROME2") == 1
    (tmp_path / "xray.dcm").write_bytes(data.replace(b"MONOCHROME2", b"MONOCHROME1"))
    image, camera, meta = read_xray(tmp_path / "xray.dcm")
    # the reader (GDCM) inverts MONOCHROME1 to MONOCHROME2 over the 16-bit range
    assert torch.equal(image, torch.from_numpy(65535 - pixels.astype(np.float32)))
    assert torch.equal(read_xray(tmp_path / "m2.dcm")[0], torch.from_numpy(pixels.astype(np.float32)))
    assert camera.sdd == 1100 and camera.pixel_spacing == (0.5, 0.4)  # DICOM: row spacing \ column spacing
    # the detector centre (the foot of the perpendicular) lies 7.5 mm right of / 4.2 mm below the corner
    assert camera.principal_point == pytest.approx((7.5 / 0.5 - 0.5, 4.2 / 0.4 - 0.5))
    assert meta["photometric"] == "MONOCHROME2" and meta["stored_photometric"] == "MONOCHROME1"
    assert meta["geometry_source"] == "dicom"
    assert meta["positioner_primary_angle"] == 12.5 and meta["positioner_secondary_angle"] == -3


def test_read_xray_png_tif_npy_with_geometry_json(tmp_path):
    pixels = (np.random.default_rng(1).random((20, 30)) * 60000).astype(np.uint16)
    CAMERA.save(tmp_path / "geometry.json")
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(tmp_path / "xray.png"))
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(tmp_path / "xray.tif"))
    sitk.WriteImage(sitk.GetImageFromArray((pixels // 256).astype(np.uint8)), str(tmp_path / "x8.png"))
    np.save(tmp_path / "xray.npy", pixels[None].astype(np.float64))  # a single frame of depth 1
    for name, expected in [("xray.png", pixels), ("xray.tif", pixels), ("x8.png", pixels // 256), ("xray.npy", pixels)]:
        image, camera, meta = read_xray(tmp_path / name)
        assert torch.equal(image, torch.from_numpy(expected.astype(np.float32))), name
        assert camera == CAMERA and meta["photometric"] == "MONOCHROME2"


def test_read_xray_errors(tmp_path):
    def fails(path, *words, geometry=None):
        with pytest.raises(InputError) as e:
            read_xray(path, geometry)
        msg = str(e.value)
        assert all(w in msg for w in words), msg
        return msg

    good = (np.random.default_rng(2).random((20, 30)) * 1000).astype(np.uint16)
    CAMERA.save(tmp_path / "geometry.json")
    assert str(tmp_path / "nope.png") in fails(tmp_path / "nope.png", "not found")
    sitk.WriteImage(sitk.GetImageFromArray(np.full((20, 30), 7, np.uint16)), str(tmp_path / "const.png"))
    assert "const.png" in fails(tmp_path / "const.png", "constant")
    nan = good.astype(np.float32)
    nan[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    assert "nan.npy" in fails(tmp_path / "nan.npy", "NaN")
    np.save(tmp_path / "vol.npy", np.zeros((3, 20, 30)))
    assert "vol.npy" in fails(tmp_path / "vol.npy", "not a 2D image")
    np.save(tmp_path / "ok.npy", good)
    data = (tmp_path / "ok.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:200])
    assert "cut.npy" in fails(tmp_path / "cut.npy", "truncated")

    geometry = tmp_path / "g"
    geometry.mkdir()
    np.save(geometry / "x.npy", good)
    bad = {"no_sdd.json": ({"pixel_spacing": [1, 1], "principal_point": [14.5, 9.5], "image_size": [20, 30]}, "sdd"),
           "neg.json": ({**CAMERA.to_json(), "pixel_spacing": [-0.5, 0.4]}, "pixel spacing"),
           "far.json": ({**CAMERA.to_json(), "principal_point": [300.0, 9.5]}, "principal point"),
           "zero_sdd.json": ({**CAMERA.to_json(), "sdd": 0}, "source-to-detector")}
    for name, (obj, word) in bad.items():
        (geometry / name).write_text(json.dumps(obj))
        assert name in fails(geometry / "x.npy", word, geometry=geometry / name)
    fails(geometry / "x.npy", "geometry.json", "not found")  # none beside it
    (geometry / "size.json").write_text(json.dumps({**CAMERA.to_json(), "image_size": [30, 20]}))
    assert "x.npy" in fails(geometry / "x.npy", "30 x 20", geometry=geometry / "size.json")

    # DICOM: no pixel data, truncated pixel data, sdd tag missing
    dicom_xray(tmp_path / "full.dcm", good, {"0018|1110": "1000", "0018|1164": "0.4\\0.5"})
    data = (tmp_path / "full.dcm").read_bytes()
    at = data.find(b"\xe0\x7f\x10\x00")
    (tmp_path / "nopix.dcm").write_bytes(data[:at])
    assert "nopix.dcm" in fails(tmp_path / "nopix.dcm", "without pixel data")
    (tmp_path / "cutpix.dcm").write_bytes(data[: at + 100])
    assert "cutpix.dcm" in fails(tmp_path / "cutpix.dcm", "truncated")
    dicom_xray(tmp_path / "nosdd.dcm", good, {"0018|1164": "0.4\\0.5"})
    assert "nosdd.dcm" in fails(tmp_path / "nosdd.dcm", "DistanceSourceToDetector")


def write_case(folder, with_init=True):
    folder.mkdir()
    image, _ = oblique_ct()
    sitk.WriteImage(image, str(folder / "ct.nii.gz"))
    pixels = (np.random.default_rng(3).random((20, 30)) * 60000).astype(np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(folder / "xray.png"))
    CAMERA.save(folder / "geometry.json")
    T = make_pose(so3_exp(torch.tensor([0.2, 0.1, -0.3], dtype=torch.float64)), torch.tensor([1.0, 2, 900]))
    if with_init:
        write_json(folder / "init.json", {"camera_from_world": T})
    return T


def test_read_case_and_truth(tmp_path):
    T = write_case(tmp_path / "case_000")
    landmarks = torch.randn(12, 3, dtype=torch.float64) * 50
    write_json(tmp_path / "case_000.truth.json", {"camera_from_world": T, "landmarks_world": landmarks})
    case = read_case(tmp_path / "case_000")
    assert case.ct.shape == (5, 6, 7) and case.xray.shape == (20, 30) and case.camera == CAMERA
    assert torch.allclose(case.init, T) and case.paths["ct"].name == "ct.nii.gz"
    T2, X = read_truth(tmp_path / "case_000")
    assert torch.allclose(T2, T) and torch.allclose(X, landmarks)
    write_case(tmp_path / "case_001", with_init=False)
    assert read_case(tmp_path / "case_001").init is None


def test_read_case_errors(tmp_path):
    T = write_case(tmp_path / "c")
    np.save(tmp_path / "c" / "xray.npy", np.eye(20, 30))
    with pytest.raises(InputError, match="several X-rays"):
        read_case(tmp_path / "c")
    (tmp_path / "c" / "xray.npy").unlink()
    (tmp_path / "c" / "ct.nii.gz").rename(tmp_path / "c" / "volume.nii.gz")
    with pytest.raises(InputError, match="has no CT"):
        read_case(tmp_path / "c")
    (tmp_path / "c" / "volume.nii.gz").rename(tmp_path / "c" / "ct.nii.gz")
    bad = T.clone()
    bad[:3, :3] *= 2
    write_json(tmp_path / "c" / "init.json", {"camera_from_world": bad}, overwrite=True)
    with pytest.raises(InputError, match="init.json: camera_from_world is not a rigid"):
        read_case(tmp_path / "c")
    with pytest.raises(InputError, match="c.truth.json: file not found"):
        read_truth(tmp_path / "c")
    write_json(tmp_path / "c.truth.json", {"camera_from_world": T})
    with pytest.raises(InputError, match="missing landmarks_world"):
        read_truth(tmp_path / "c")


def test_writers_refuse_to_overwrite_and_are_atomic(tmp_path):
    path = write_json(tmp_path / "a.json", {"x": torch.tensor([1.0, 2.0])})
    assert json.loads(path.read_text()) == {"x": [1.0, 2.0]}
    with pytest.raises(InputError, match="a.json: already exists"):
        write_json(path, {"x": 3})
    with pytest.raises(TypeError):
        write_json(path, {"x": object()}, overwrite=True)
    assert json.loads(path.read_text()) == {"x": [1.0, 2.0]}  # a failed write left the old file whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # and no temporary behind
    T = make_pose(so3_exp(torch.tensor([0.0, 0.3, 0.0], dtype=torch.float64)), torch.tensor([0.0, 0, 800]))
    r = write_result(tmp_path, T, seconds=1.5, similarity=0.25, confidence=None, iterations=7, extra={"method": "x"})
    obj = json.loads(r.read_text())
    assert obj["camera_from_world"] == T.tolist() and obj["confidence"] is None and obj["iterations"] == 7
    assert obj["method"] == "x" and obj["seconds"] == 1.5
    with pytest.raises(InputError, match="already exists"):
        write_result(tmp_path, T, 1, 0, None, 1)


def random_matrix():
    R = so3_exp(torch.tensor([0.3, -0.5, 1.1], dtype=torch.float64))
    return make_pose(R, torch.tensor([12.0, -40.0, 7.5], dtype=torch.float64))


@pytest.mark.parametrize("suffix", [".tfm", ".txt", ".h5"])
def test_itk_transform_round_trip(tmp_path, suffix):
    M = random_matrix()
    path = write_itk_transform(tmp_path / f"t{suffix}", M)
    assert torch.allclose(read_itk_transform(path), M, atol=1e-9)
    with pytest.raises(InputError, match="already exists"):
        write_itk_transform(path, M)
    # what the file holds is ITK's resampling direction in LPS: F M^-1 F
    tx = sitk.ReadTransform(str(path))
    F = np.diag([-1.0, -1, 1])
    p_ras = np.array([10.0, 20.0, 30.0])
    p_lps = F @ p_ras
    moved_ras = (torch.linalg.inv(M)[:3, :3].numpy() @ p_ras + torch.linalg.inv(M)[:3, 3].numpy())
    np.testing.assert_allclose(tx.TransformPoint(p_lps.tolist()), F @ moved_ras, atol=1e-9)


def test_itk_transform_loads_in_slicer_as_to_parent(tmp_path):
    """Pinned against 3D Slicer's own reader (slicer-core's vtkMRMLTransformStorageNode)."""
    slicer = pytest.importorskip("slicer")
    M = random_matrix()
    for suffix in (".tfm", ".h5"):
        path = write_itk_transform(tmp_path / f"t{suffix}", M)
        scene = slicer.vtkMRMLScene()
        node = slicer.vtkMRMLLinearTransformNode()
        scene.AddNode(node)
        storage = slicer.vtkMRMLTransformStorageNode()
        scene.AddNode(storage)
        storage.SetFileName(str(path))
        assert storage.ReadData(node) == 1
        m = slicer.vtkMatrix4x4() if hasattr(slicer, "vtkMatrix4x4") else __import__("vtk").vtkMatrix4x4()
        node.GetMatrixTransformToParent(m)
        to_parent = np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])
        np.testing.assert_allclose(to_parent, M.numpy(), atol=1e-9)
