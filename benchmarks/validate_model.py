"""A trained model's validation on held-out poses, as training reports it, with any number of poses.

    python benchmarks/validate_model.py MODEL.pt --ct CT [--poses 64] [--seed 7000001]

Prints the regressor's errors (and the pose prior's) and the share of similarity gradients within
30 deg of each target: the SE(3) and the SO(4) geodesic gradient, and ``view`` (SE(3) with depth
weighted by what one projection shows, training.objective.view_distance); the seed is not the
training's.
"""

from __future__ import annotations

import argparse
import json

import torch

from SphericalRegLib.io import read_ct
from SphericalRegLib.training import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--ct", required=True)
    parser.add_argument("--poses", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7_000_001)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    trainer = Trainer.of_model(args.model, read_ct(args.ct), val_size=args.poses, val_seed=args.seed)
    print(json.dumps({"model": args.model, "step": trainer.step, "poses": args.poses, "seed": args.seed,
                      **{k: round(v, 4) for k, v in trainer.validate().items()}}, indent=1))


if __name__ == "__main__":
    main()
