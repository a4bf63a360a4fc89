"""What a registration leaves on disk: result.json, the transform (JSON and ITK, for 3D Slicer) and
an overlay PNG for a human check. The one writer of each of these files."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..geometry import se3_inverse
from ..intensity import sobel, standardise
from ..io import atomic_write, write_itk_transform, write_json
from .records import RegistrationResult

__all__ = ["OUTPUT_NAMES", "write_outputs", "save_overlay"]

OUTPUT_NAMES = {"result": "result.json", "transform": "transform.json", "itk": "world_from_camera.tfm",
                "overlay": "overlay.png"}


def save_overlay(path: Path, result: RegistrationResult) -> None:
    """X-ray, DRR at the result, and their edge overlay side by side (PNG), for a human check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = standardise(result.xray[None, None].float(), (1, 2, 3))[0, 0]
    d = standardise(result.drr[None, None].float(), (1, 2, 3))[0, 0]
    edges = sobel(d[None, None])[0].norm(dim=0)
    alpha = (edges / edges.max().clamp_min(1e-6)).clamp(0, 1).numpy()
    x, d, edges = x.numpy(), d.numpy(), edges.numpy()
    fig, ax = plt.subplots(1, 3, figsize=(12, 4.4))
    ax[0].imshow(x, cmap="gray")
    ax[0].set_title("X-ray (line integrals)")
    ax[1].imshow(d, cmap="gray")
    ax[1].set_title("DRR at the result")
    ax[2].imshow(x, cmap="gray")
    ax[2].imshow(edges, cmap="autumn", alpha=alpha)
    conf = "n/a" if result.confidence is None else f"{result.confidence:.2f}"
    ax[2].set_title(f"DRR edges over X-ray (confidence {conf})")
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def write_outputs(out: Path, result: RegistrationResult, overwrite: bool = False, overlay: bool = True) -> dict:
    """result.json, transform.json, the ITK transform for 3D Slicer and the overlay PNG in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in OUTPUT_NAMES.items()}
    if not overwrite:
        existing = [str(p) for k, p in paths.items() if p.exists() and (overlay or k != "overlay")]
        if existing:
            raise InputError(existing[0], "already exists", "a fresh output folder, or --overwrite")
    write_json(paths["result"], result.to_json(), overwrite=overwrite)
    world_from_camera = se3_inverse(result.camera_from_world)
    write_json(paths["transform"], {
        "camera_from_world": result.camera_from_world.tolist(),
        "world_from_camera": world_from_camera.tolist(),
        "frames": "world = CT RAS mm; camera = source at origin, +z to the detector, +x columns, +y rows",
    }, overwrite=overwrite)
    write_itk_transform(paths["itk"], world_from_camera, overwrite=overwrite)
    if overlay and result.drr is not None:
        save_overlay(paths["overlay"], result)
    else:
        del paths["overlay"]
    return paths
