"""A tiny CT and a tiny training configuration: real data and real networks, small enough that
tests training or registering with them take seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from SphericalRegLib.volume import Volume

TINY = dict(
    preset="tiny", spacing_mm=6.0, max_size=24, image_size=32, batch_size=2, steps=20,
    feature_kwargs=dict(channels=2, scalars=2, vectors=1, tensors=1),
    similarity_kwargs=dict(embed_dim=8, tokens=4), regressor_kwargs=dict(backbone="resnet10t"),
    val_size=2, val_every=1000, checkpoint_every=1000, warmup_steps=1,
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
