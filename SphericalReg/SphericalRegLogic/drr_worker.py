"""The DRRs the panel shows after a registration, rendered in the background process.

    PythonSlicer drr_worker.py CASE RESULT_JSON OUT_NPY [--device cpu|cuda]

Reads the case folder the panel wrote (ct.nrrd, geometry.json, and ``view_k/geometry.json`` for
each further view) and the pose from result.json, renders the CT's attenuation line integrals
(``volume.hu_to_mu``, the library's ray marcher ``render.Renderer``) on each X-ray's full grid,
in blocks of rows so that memory stays bounded whatever the detector size, and writes view 0's
``(rows, cols)`` float32 to OUT_NPY and view k's beside it as ``<stem>_view_k.npy`` (drr.npy,
drr_view_1.npy, ...). View k's pose is result.json's ``per_view[k]["camera_from_world"]`` (it
holds a refined relative pose, if any), else ``camera_from_reference @ camera_from_world``. Where
the registration undid an image intensifier's distortion (result.json's ``distortion``, or the
view's own in ``per_view``), the DRR is distorted the same way, so that it overlays the X-ray as
acquired.
Prints ``PROGRESS drr <fraction>`` lines over all views. Runs without ``slicer`` (a file beside
the logic package, run by path); exit status 2 with one line for bad input, as the
``sphericalreg`` commands do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MAX_SAMPLES = 1 << 23
"""Ray samples per block (rows x cols x samples per ray): about 100 MB of working memory."""


def view_drr_path(out: Path, index: int) -> Path:
    """Where view ``index``'s DRR goes: ``out`` for view 0, ``<stem>_view_k<suffix>`` beside it."""
    out = Path(out)
    return out if index == 0 else out.with_name(f"{out.stem}_view_{index}{out.suffix}")


def view_geometries(case: Path) -> list:
    """``[(name, geometry.json path), ...]`` of every view of the case folder, view 0 first."""
    import re

    further = sorted((int(m.group(1)), sub) for sub in Path(case).iterdir()
                     if sub.is_dir() and (m := re.match(r"view_(\d+)$", sub.name)))
    return [("view 0", Path(case) / "geometry.json")] + [(sub.name, sub / "geometry.json") for _, sub in further]


def read_result(result: Path) -> tuple[dict, dict]:
    """result.json as a dict and its ``per_view`` entries by view name; both empty when it cannot be
    read (the pose itself is read, with a clear error, by ``read_pose``)."""
    import json

    try:
        obj = json.loads(Path(result).read_text())
        per_view = {v.get("name"): v for v in obj.get("per_view") or [] if isinstance(v, dict)}
    except (OSError, ValueError, AttributeError):
        return {}, {}
    return obj, per_view


def view_poses_of(case: Path, result: Path) -> list:
    """Every view's camera_from_world ``(4, 4)`` float64 tensor and Camera, view 0 first."""
    import json

    import torch
    from SphericalRegLib.camera import Camera
    from SphericalRegLib.errors import InputError
    from SphericalRegLib.io.cases import as_pose, read_pose

    T = read_pose(result)
    _, per_view = read_result(result)
    views = []
    for k, (name, geometry) in enumerate(view_geometries(case)):
        camera = Camera.load(geometry)
        if k == 0:
            views.append((T, camera))
            continue
        if name in per_view and "camera_from_world" in per_view[name]:
            pose = as_pose(per_view[name]["camera_from_world"], f"{result}: per_view {name}")
        else:
            obj = json.loads(geometry.read_text())
            if "camera_from_reference" not in obj:
                raise InputError(geometry, "has no camera_from_reference", "the relative pose of this view")
            pose = as_pose(obj["camera_from_reference"], geometry, "camera_from_reference") @ T
        views.append((pose.to(torch.float64), camera))
    return views


def view_distortions(case: Path, result: Path) -> list:
    """Every view's image-intensifier distortion ``(pincushion, s_distortion)`` that the registration
    undid, or None, view 0 first: the view's own from ``per_view``, else the one given for all."""
    obj, per_view = read_result(result)
    out = []
    for name, _ in view_geometries(case):
        d = (per_view.get(name) or {}).get("distortion") or obj.get("distortion")
        out.append((float(d["pincushion"]), float(d["s_distortion"])) if isinstance(d, dict) else None)
    return out


def render_drr(case: Path, result: Path, device: str | None = None, progress=print, views: bool = False):
    """View 0's DRR ``(rows, cols)`` float32; with ``views``, every view's, as a list (view 0 first)."""
    import numpy as np
    import torch
    from SphericalRegLib.devices import resolve_device
    from SphericalRegLib.distortion import distort
    from SphericalRegLib.io import read_ct
    from SphericalRegLib.io.cases import CT_NAMES
    from SphericalRegLib.render import Renderer, default_n_samples
    from SphericalRegLib.volume import hu_to_mu

    ct_path = next((case / n for n in CT_NAMES if (case / n).exists()), case / "ct.nrrd")
    ct = read_ct(ct_path)
    poses = view_poses_of(case, result)
    distortions = view_distortions(case, result)
    if not views:
        poses = poses[:1]
    dev = resolve_device(device)
    mu = hu_to_mu(ct.data.to(torch.float32)).to(dev)
    total = sum(camera.image_size[0] for _, camera in poses)
    done = 0
    images = []
    with torch.no_grad():
        for (T, camera), distortion in zip(poses, distortions):
            rows, cols = camera.image_size
            block = max(1, MAX_SAMPLES // max(1, cols * default_n_samples(ct.shape)))
            image = np.zeros((rows, cols), np.float32)
            for top in range(0, rows, block):
                n = min(block, rows - top)
                renderer = Renderer(camera.cropped(top, 0, n, cols), ct.ijk_to_ras, ct.shape).to(dev)
                image[top:top + n] = renderer(mu, T[None].to(dev))[0, 0].cpu().numpy()
                done += n
                progress(f"PROGRESS drr {min(1.0, done / total):.3f}")
            if distortion is not None and any(distortion):
                warped = distort(torch.from_numpy(image)[None, None], torch.tensor([distortion], dtype=torch.float64))
                image = warped[0, 0].numpy()
            images.append(image)
    return images if views else images[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", type=Path)
    parser.add_argument("result", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    from SphericalRegLib.errors import InputError

    try:
        images = render_drr(args.case, args.result, args.device, progress=lambda m: print(m, flush=True), views=True)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import numpy as np

    for k, image in enumerate(images):
        out = view_drr_path(args.out, k)
        tmp = out.with_name(out.name + ".part.npy")
        np.save(tmp, image)
        tmp.replace(out)
        print(f"DRR written to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
