"""Cost of the Levenberg-Marquardt Jacobian of a DRR with respect to a left twist (6 forward-mode
directions, torch.func.jacfwd) with the renderer's two pose-derivative modes, on the example CT.

    python benchmarks/bench_jacobian.py [--threads 1] [--repeats 3]

Prints a markdown table: forward time, Jacobian time for ``pose_derivatives="exact"`` (PyTorch's
own forward-mode rule for grid_sample) and ``"linear"`` (SphericalReg's), their ratio, and the
largest relative difference between the two Jacobians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.func import jacfwd

from SphericalRegLib.camera import Camera
from SphericalRegLib.example import example_ct_path
from SphericalRegLib.geometry import perturb_left
from SphericalRegLib.io import read_ct
from SphericalRegLib.poses import evaluation_poses
from SphericalRegLib.render import Renderer
from SphericalRegLib.volume import hu_to_mu


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ct = read_ct(example_ct_path())
    T = evaluation_poses(ct.centre, 1020.0, 1, seed=0)[0]
    xi0 = torch.zeros(6, dtype=torch.float64)
    print("| CT voxels | image | samples/ray | forward (s) | Jacobian exact (s) | Jacobian linear (s) | speed-up | max rel. diff |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for spacing, size in ((3.0, 64), (2.0, 96), (2.0, 128)):
        vol = ct.with_spacing(spacing)
        mu = hu_to_mu(vol.data)[None].float()
        camera = Camera(1020.0, (1.38 * 256 / size,) * 2, ((size - 1) / 2,) * 2, (size, size))
        jac = {}
        seconds = {}
        for mode in ("exact", "linear"):
            renderer = Renderer(camera, vol.ijk_to_ras, vol.shape, pose_derivatives=mode)
            f = lambda xi: renderer(mu, perturb_left(xi, T)).flatten()  # noqa: E731
            seconds[mode] = timed(lambda: jac.__setitem__(mode, jacfwd(f)(xi0)), args.repeats)
        forward = timed(lambda: renderer(mu, T), args.repeats)
        diff = float(((jac["linear"] - jac["exact"]).norm(dim=0) / jac["exact"].norm(dim=0)).max())
        print(f"| {'x'.join(map(str, vol.shape))} ({spacing:g} mm) | {size}x{size} | {renderer.n_samples} | "
              f"{forward:.3f} | {seconds['exact']:.2f} | {seconds['linear']:.2f} | "
              f"{seconds['exact'] / seconds['linear']:.1f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
