"""ITK transform files as 3D Slicer reads them (SphericalRegLib.io.transforms)."""


import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SphericalRegLib.camera import Camera
from SphericalRegLib.errors import InputError
from SphericalRegLib.geometry import make_pose, so3_exp
from SphericalRegLib.io import (
    read_itk_transform,
    write_itk_transform,
)

CAMERA = Camera(1000.0, (0.5, 0.4), (14.5, 9.5), (20, 30))


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
