"""Reading CTs and X-rays from real files (SphericalRegLib.io.images, nifti, dicom); every bad file is a clear InputError."""

import gzip
import json
import struct

import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from fixtures import expected_ijk_to_ras, oblique_ct

from SphericalRegLib.camera import Camera
from SphericalRegLib.errors import InputError
from SphericalRegLib.io import (
    read_ct,
    read_xray,
)

CAMERA = Camera(1000.0, (0.5, 0.4), (14.5, 9.5), (20, 30))


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


def test_a_dicom_says_whether_its_values_follow_intensity_or_its_log(tmp_path):
    """Pixel Intensity Relationship (0028,1040): LIN on a windowed export is a linear LUT's, LIN on raw
    counts is raw counts, LOG is a log LUT's; without the tag the pixels decide and registration asks
    the CT about the LUT."""
    geometry = {"0018|1110": "1100", "0018|1164": "0.4\\0.5"}
    export = (np.random.default_rng(2).random((20, 30)) * 255).astype(np.uint16)
    export[0, 0], export[0, 1] = 0, 255  # a full 8-bit window
    raw = (np.random.default_rng(3).random((20, 30)) * 4000 + 300).astype(np.uint16)
    for name, pixels, relationship, encoding, source in (
            ("lin.dcm", export, "LIN", "processed-linear", "dicom"), ("log.dcm", export, "LOG", "processed", "dicom"),
            ("raw.dcm", raw, "LIN", "intensity", "dicom"), ("none.dcm", export, None, "processed", "pixels")):
        tags = dict(geometry, **({"0028|1040": relationship} if relationship else {}))
        dicom_xray(tmp_path / name, pixels, tags)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, _, meta = read_xray(tmp_path / name)
        assert (meta["encoding"], meta["encoding_source"]) == (encoding, source), name


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
