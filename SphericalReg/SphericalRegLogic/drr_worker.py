"""The DRR the panel shows after a registration, rendered in the background process.

    PythonSlicer drr_worker.py CASE RESULT_JSON OUT_NPY [--device cpu|cuda]

Reads the case folder the panel wrote (ct.nrrd, geometry.json) and the pose from result.json,
renders the CT's attenuation line integrals (``volume.hu_to_mu``, the library's ray marcher
``render.render``) on the X-ray's full grid, in blocks of rows so that memory stays bounded
whatever the detector size, and writes ``(rows, cols)`` float32 to OUT_NPY. Prints
``PROGRESS drr <fraction>`` lines. Runs without ``slicer`` (a file beside the logic package, run
by path); exit status 2 with one line for bad input, as the ``sphericalreg`` commands do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MAX_SAMPLES = 1 << 23
"""Ray samples per block (rows x cols x samples per ray): about 100 MB of working memory."""


def render_drr(case: Path, result: Path, device: str | None = None, progress=print):
    import numpy as np
    import torch
    from SphericalRegLib.camera import Camera
    from SphericalRegLib.devices import resolve_device
    from SphericalRegLib.io import read_ct
    from SphericalRegLib.io.cases import CT_NAMES, read_pose
    from SphericalRegLib.render import Renderer, default_n_samples
    from SphericalRegLib.volume import hu_to_mu

    ct_path = next((case / n for n in CT_NAMES if (case / n).exists()), case / "ct.nrrd")
    ct = read_ct(ct_path)
    camera = Camera.load(case / "geometry.json")
    T = read_pose(result)
    dev = resolve_device(device)
    mu = hu_to_mu(ct.data.to(torch.float32)).to(dev)
    rows, cols = camera.image_size
    block = max(1, MAX_SAMPLES // max(1, cols * default_n_samples(ct.shape)))
    image = np.zeros((rows, cols), np.float32)
    with torch.no_grad():
        for top in range(0, rows, block):
            n = min(block, rows - top)
            renderer = Renderer(camera.cropped(top, 0, n, cols), ct.ijk_to_ras, ct.shape).to(dev)
            image[top:top + n] = renderer(mu, T[None].to(dev))[0, 0].cpu().numpy()
            progress(f"PROGRESS drr {min(1.0, (top + n) / rows):.3f}")
    return image


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", type=Path)
    parser.add_argument("result", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    from SphericalRegLib.errors import InputError

    try:
        image = render_drr(args.case, args.result, args.device, progress=lambda m: print(m, flush=True))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import numpy as np

    tmp = args.out.with_name(args.out.name + ".part.npy")
    np.save(tmp, image)
    tmp.replace(args.out)
    print(f"DRR written to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
