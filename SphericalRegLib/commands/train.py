"""``sphericalreg train``: a patient-specific model (regressor + similarity) from a CT, resumable."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from ..camera import Camera
from ..checkpoint import read_checkpoint
from ..devices import resolve_device
from ..errors import InputError
from ..evaluation.calibration import calibrate_model
from ..io import read_ct
from ..training import Trainer, TrainConfig, load_config, run
from ..training.config import ARCHITECTURE, NETWORK_FIELDS, config_file_fields
from ..training.objective import METRICS
from . import flags_for_fields

FLAGS = {"config": "--config", "physics_p": "--physics-p", "features": "--features", "space": "--space", "metric": "--metric",
         "device": "--device"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, help="the CT (NIfTI, NRRD, MHA or a DICOM folder), in HU")
    parser.add_argument("--out", required=True, help="the model file to write (.pt)")
    parser.add_argument("--config", default="small",
                        help="preset (small: two CPU cores, 40-50 min; full: one GPU) or a JSON file of "
                             'TrainConfig fields, optionally with "base": preset (default small)')
    parser.add_argument("--steps", type=int, help="training steps (default from the config)")
    parser.add_argument("--batch-size", type=int, help="poses per step and rank")
    parser.add_argument("--metric", choices=METRICS, help="distance of the gradient target: the SE(3) or SO(4) geodesic, or view (SE(3), depth weighted by what one projection shows); default: the preset's (se3 for small, so4 otherwise)")
    parser.add_argument("--space", choices=("sphere", "euclidean", "hyperbolic"),
                        help="embedding space of the similarity (default sphere)")
    parser.add_argument("--features", choices=("equivariant", "plain"), help="CT feature volume (default equivariant)")
    parser.add_argument("--geometry", help="geometry.json of the C-arm to train for (default: sdd 1020 mm, a "
                                           "square detector covering ~300 mm of anatomy at the isocentre)")
    parser.add_argument("--sdd", type=float, help="source-to-detector distance of the default camera (mm)")
    parser.add_argument("--image-size", type=int, help="training image rows = cols")
    parser.add_argument("--spacing", type=float, help="working voxel size of the CT (mm)")
    parser.add_argument("--seed", type=int, help="seed of all sampling (default 0)")
    parser.add_argument("--calibration-cases", type=int,
                        help="simulated held-out cases the confidence is calibrated on after training "
                             "(default from the config: 8; 0 skips, leaving the model without a confidence)")
    parser.add_argument("--init", metavar="MODEL",
                        help="start from this model's networks (of this CT or another: a generic model fine-tuned "
                             "per patient); its architecture fields (image size, features, camera, ...) are kept; "
                             "e.g. --config finetune trains its regressor alone under the physics family")
    parser.add_argument("--physics-p", type=float,
                        help="probability of each physics-family effect per training X-ray (default from the config)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def _config_from_args(args, init: dict | None = None) -> TrainConfig:
    """The run's configuration: the --config preset or file, the flags on top; with --init, the
    architecture fields of the starting model (a flag that would change them is an error)."""
    overrides = dict(steps=args.steps, batch_size=args.batch_size, metric=args.metric, space=args.space,
                     features=args.features, sdd=args.sdd, image_size=args.image_size,
                     spacing_mm=args.spacing, seed=args.seed, physics_p=args.physics_p)
    if args.geometry:
        overrides["camera"] = Camera.load(args.geometry).to_json()
    if init is None:
        return load_config(args.config, **overrides)
    fixed = {k: v for k, v in TrainConfig.from_dict(init["config"], args.init).to_dict().items() if k in ARCHITECTURE}
    for name in config_file_fields(args.config) & {f for fs in NETWORK_FIELDS.values() for f in fs}:
        fixed.pop(name)  # the file asks for another network: Trainer.start_from starts it afresh
    if fixed["camera"] is None:
        fixed["camera"] = init["camera"]
    clash = [k for k in ARCHITECTURE if overrides.get(k) is not None and k != "camera"]
    if clash:
        raise InputError("--init", f"given with {', '.join(clash)}",
                         "no architecture flags: the starting model's networks fix them")
    if args.geometry:
        fixed.pop("camera")  # the C-arm of this run; the images stay at the model's size
    config = load_config(args.config, **overrides)
    return replace(config, **fixed, initialised_from=str(args.init))


def main(args) -> int:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    with flags_for_fields(FLAGS):
        device = resolve_device(args.device, local_rank)
    out = Path(args.out)
    if args.resume and args.overwrite:
        raise InputError("--resume/--overwrite", "both given", "one of them")
    if args.resume and args.init:
        raise InputError("--resume/--init", "both given", "--resume to continue --out, or --init to start a new run")
    if args.init and out.exists() and out.resolve() == Path(args.init).resolve():
        raise InputError("--init", "is the --out file", "another --out: the starting model must not be overwritten")
    if out.exists() and not (args.resume or args.overwrite):
        raise InputError(out, "already exists", "a new file name, --resume to continue it, or --overwrite")
    if args.resume and not out.exists():
        raise InputError(out, "does not exist, nothing to resume", "the model file of an interrupted run")

    ct = read_ct(args.ct)
    state = None
    if args.resume:
        state = read_checkpoint(out, ct, map_location=device)
        config = TrainConfig.from_dict(state["config"], out)
        if args.steps is not None:
            config = replace(config, steps=args.steps)
        camera = Camera.from_json(state["camera"], out)
        if int(state.get("world_size", 1)) != world_size and rank == 0:
            print(f"note: resuming a {state.get('world_size', 1)}-process run with {world_size} processes; "
                  "the sampling continues differently", file=sys.stderr)
    else:
        init = read_checkpoint(args.init, map_location=device) if args.init else None
        with flags_for_fields(FLAGS):
            config = _config_from_args(args, init)
        camera = None

    if world_size > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        trainer = Trainer(ct, config, camera, device, rank, world_size, source=args.ct)
        if state is not None:
            trainer.restore(state)
        elif init is not None:
            trainer.start_from(init)
        run(trainer, out, main_process=rank == 0)
        cases = config.calibration_cases if args.calibration_cases is None else args.calibration_cases
        if rank == 0 and cases > 0:
            calibrate_model(out, args.ct, cases=cases, physics=config.calibration_physics, device=device)
    finally:
        if world_size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
