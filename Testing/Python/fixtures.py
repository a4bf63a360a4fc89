"""A tiny CT and a tiny training configuration: real data and real networks, small enough that
tests training or registering with them take seconds; blob volumes and one torch thread for the
network tests."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from SphericalRegLib.geometry import so3_exp
from SphericalRegLib.volume import MU_WATER, Volume

TINY = dict(
    preset="tiny", spacing_mm=6.0, max_size=24, image_size=32, batch_size=2, steps=20,
    feature_kwargs=dict(channels=2, scalars=2, vectors=1, tensors=1),
    similarity_kwargs=dict(embed_dim=8, tokens=4), regressor_kwargs=dict(backbone="resnet10t"),
    val_size=2, val_every=1000, checkpoint_every=1000, warmup_steps=1, calibration_cases=0,
    regressor_only_share=0.0,  # every network from the first step, as the tests' tiny models were trained
)


def tiny_ct(blobs=((0.3, 0.1, 0.2), (-0.35, -0.1, -0.3), (0.0, 0.3, -0.1)), n=24, spacing=6.0) -> Volume:
    """A 24^3 body of soft tissue with three bone-like spheres, in HU, off the RAS origin."""
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij"), -1)
    x = (idx - (n - 1) / 2) / (n / 2)
    hu = torch.full((n, n, n), -1000.0)
    hu[(x[..., 0] ** 2 / 0.8 + x[..., 1] ** 2 / 0.5 + x[..., 2] ** 2 / 0.9) < 1] = 20.0
    for centre, r in zip(blobs, (0.25, 0.2, 0.15)):
        hu[((x - torch.tensor(centre)) ** 2).sum(-1) < r**2] = 1200.0
    A = torch.diag(torch.tensor([spacing, spacing, spacing, 1.0], dtype=torch.float64))
    A[:3, 3] = torch.tensor([-70.0, 30.0, 100.0])
    return Volume(hu, A)


def write_ct(ct: Volume, path: Path) -> None:
    """NIfTI through SimpleITK (LPS), so that io.read_ct gives back ``ct``."""
    lps = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)) @ ct.ijk_to_ras[:3]
    spacing = lps[:3, :3].norm(dim=0)
    image = sitk.GetImageFromArray(ct.data.permute(2, 1, 0).numpy().astype(np.int16))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    sitk.WriteImage(image, str(path))


@contextmanager
def one_torch_thread():
    """One intra-op thread for small networks: on a shared 2-core machine OpenMP's spin-waiting
    made the network tests about 10x slower with two threads (72 s against 5.5 s measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def blob_volume(shape, seed=0, dtype=torch.float32):
    """A few random Gaussian blobs of water-to-bone attenuation, ``(1, I, J, K)``."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, n, dtype=dtype) for n in shape], indexing="ij")
    pos = torch.stack(grids, -1)
    mu = torch.zeros(shape, dtype=dtype)
    for _ in range(5):
        c = (torch.rand(3, generator=g, dtype=dtype) - 0.5) * 1.2
        s = 0.15 + 0.2 * torch.rand(1, generator=g, dtype=dtype)
        mu = mu + MU_WATER * (1 + 2 * torch.rand(1, generator=g, dtype=dtype)) * torch.exp(
            -((pos - c) ** 2).sum(-1) / (2 * s**2))
    return mu[None]


TINY_MODEL_CONFIG = {"base": "small", **TINY, "similarity_kwargs": dict(embed_dim=8, tokens=9)}


def write_training_inputs(ct: Volume, folder: Path, config: dict | None = None) -> tuple[Path, Path]:
    """``folder/ct.nii.gz`` and ``folder/tiny.json`` (default: the tiny configuration on the small
    preset) for the train command; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    write_ct(ct, folder / "ct.nii.gz")
    path = folder / "tiny.json"
    path.write_text(json.dumps(config or {"base": "small", **TINY}))
    return folder / "ct.nii.gz", path


def train_tiny_model(ct: Volume, folder: Path, steps: int = 2) -> Path:
    """A tiny model of ``ct`` trained for ``steps`` steps through the real train command."""
    from SphericalRegLib import cli

    ct_path, config = write_training_inputs(ct, folder, TINY_MODEL_CONFIG)
    out = folder / "model.pt"
    assert cli.main(["train", "--ct", str(ct_path), "--out", str(out), "--config", str(config),
                     "--steps", str(steps)]) == 0
    return out


def tiny_levels(iterations: int) -> tuple:
    """Two intensity levels at the tiny CT's own 6 mm voxels (48 px, 8 px patches): coarse NCC, then
    pixel differences, ``iterations`` each."""
    from SphericalRegLib.register import IntensityLevel

    return tuple(IntensityLevel(6.0, 48, 8, form, iterations) for form in ("ncc", "difference"))


def write_tiny_cases(ct: Volume, folder: Path, n: int = 2, seed: int = 5, size: int = 48) -> Path:
    """``n`` simulated cases of ``ct`` (``folder/cases/case_000`` ...); returns ``folder/cases``."""
    from SphericalRegLib.simulate import write_cases

    folder.mkdir(parents=True, exist_ok=True)
    write_ct(ct, folder / "ct.nii.gz")
    write_cases(folder / "ct.nii.gz", folder / "cases", n, seed=seed, size=size, log=lambda m: None)
    return folder / "cases"


def oblique_ct():
    """A small CT (5 x 6 x 7 voxels) with a non-axial direction, an origin and anisotropic spacing (LPS, as ITK holds it)."""
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
