"""A model's regressor on held-out poses, its error split the way a registration meets it.

    python benchmarks/regressor_errors.py MODEL.pt --ct CT [--poses 256] [--seed 7000001]

The poses and clean X-rays are training's validation draw (``Trainer.validation_set``) from a seed
training never used. Printed: medians, means and 90th percentiles of the isocentre's error (3-D, in
the detector plane and along the central ray, in the true camera frame, mm) and of the rotation
(deg). The trainer's own validation reports means only, which a few far-off poses dominate.
"""

from __future__ import annotations

import argparse
import json

import torch

from SphericalRegLib.geometry import rotation_angle, transform_points
from SphericalRegLib.io import read_ct
from SphericalRegLib.training import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--ct", required=True)
    parser.add_argument("--poses", type=int, default=256)
    parser.add_argument("--seed", type=int, default=7_000_001)
    args = parser.parse_args()
    torch.set_num_threads(1)
    trainer = Trainer.of_model(args.model, read_ct(args.ct), val_size=args.poses, val_seed=args.seed)
    trainer.regressor.eval()
    val = trainer.validation_set()
    with torch.no_grad():
        est = torch.cat([trainer.regressor(x).double() for x in val["xray"].split(16)])
    truth = val["truth"].to(est)
    centre = trainer.isocentre.to(est)[None]  # (1, 3): each pose moves the same point
    error = (transform_points(est, centre) - transform_points(truth, centre))[:, 0]
    parts = {"isocentre_mm": error.norm(dim=-1), "in_plane_mm": error[:, :2].norm(dim=-1),
             "depth_mm": error[:, 2].abs(),
             "rotation_deg": torch.rad2deg(rotation_angle(est[:, :3, :3], truth[:, :3, :3]))}
    print(json.dumps({"model": args.model, "poses": args.poses, "seed": args.seed, **{
        name: {"median": round(float(v.median()), 2), "mean": round(float(v.mean()), 2),
               "p90": round(float(v.quantile(0.9)), 2)} for name, v in parts.items()}}, indent=1))


if __name__ == "__main__":
    main()
