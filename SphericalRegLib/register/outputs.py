"""What a registration leaves on disk: result.json, the transform (JSON and ITK, for 3D Slicer) and
an overlay PNG for a human check. The one writer of each of these files."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..geometry import se3_inverse
from ..intensity import sobel, standardise
from ..io import atomic_write, write_itk_transform, write_json
from .records import RegistrationResult, ViewResult

__all__ = ["OUTPUT_NAMES", "write_outputs", "save_overlay"]

OUTPUT_NAMES = {"result": "result.json", "transform": "transform.json", "itk": "world_from_camera.tfm",
                "overlay": "overlay.png"}


def save_overlay(path: Path, result: RegistrationResult | ViewResult) -> None:
    """X-ray, DRR at the result, and their edge overlay side by side (PNG), for a human check
    (of one view of a multi-view result, given its :class:`ViewResult`)."""
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
    name = f"{result.name}: " if isinstance(result, ViewResult) else ""
    ax[2].set_title(f"{name}DRR edges over X-ray (confidence {conf})")
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def write_outputs(out: Path, result: RegistrationResult, overwrite: bool = False, overlay: bool = True) -> dict:
    """result.json, transform.json, the ITK transform for 3D Slicer and the overlay PNG in ``out``;
    for a multi-view result also each further view's ITK transform and overlay (``_view_k``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in OUTPUT_NAMES.items()}
    further = result.views[1:]
    for view in further:
        for key in ("itk", "overlay"):
            stem, suffix = OUTPUT_NAMES[key].rsplit(".", 1)
            paths[f"{key} {view.name}"] = out / f"{stem}_{view.name}.{suffix}"
    if not overwrite:
        existing = [str(p) for k, p in paths.items() if p.exists() and (overlay or not k.startswith("overlay"))]
        if existing:
            raise InputError(existing[0], "already exists", "a fresh output folder, or --overwrite")
    write_json(paths["result"], result.to_json(), overwrite=overwrite)
    world_from_camera = se3_inverse(result.camera_from_world)
    transform = {
        "camera_from_world": result.camera_from_world.tolist(),
        "world_from_camera": world_from_camera.tolist(),
        "frames": "world = CT RAS mm; camera = source at origin, +z to the detector, +x columns, +y rows",
    }
    if further:
        transform["views"] = {v.name: {"camera_from_world": v.camera_from_world.tolist(),
                                       "world_from_camera": se3_inverse(v.camera_from_world).tolist()}
                              for v in result.views}
    write_json(paths["transform"], transform, overwrite=overwrite)
    write_itk_transform(paths["itk"], world_from_camera, overwrite=overwrite)
    for view in further:
        write_itk_transform(paths[f"itk {view.name}"], se3_inverse(view.camera_from_world), overwrite=overwrite)
    if overlay and result.drr is not None:
        save_overlay(paths["overlay"], result)
        for view in further:
            save_overlay(paths[f"overlay {view.name}"], view)
    else:
        for key in [k for k in paths if k.startswith("overlay")]:
            del paths[key]
    return paths
