"""Seconds per training step of a preset on this machine, in the regressor's lead and jointly, and
of one validation, with the run's projected length.

    python benchmarks/train_step_time.py CT [--config small] [--threads 2] [--lead 8] [--joint 6]

Each kind of step is timed after one warm-up step; the projection adds the preset's lead steps,
joint steps and validations (not the start-up, the checkpoints or the calibration). It runs short:
a whole idle run of the README's command on the example chest CT (twenty-sixth session) stepped
0.34 s in the lead and 1.45 s jointly, where this script had measured 0.24-0.28 and 1.03-1.06 s, and
took 47.7 minutes to train where it had projected 39.5. Time the whole command before quoting a budget.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from SphericalRegLib.io import read_ct
from SphericalRegLib.training import Trainer
from SphericalRegLib.training.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ct")
    parser.add_argument("--config", default="small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lead", type=int, default=8, help="lead steps timed")
    parser.add_argument("--joint", type=int, default=6, help="joint steps timed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    trainer = Trainer(read_ct(args.ct), load_config(args.config))
    c, lead_steps = trainer.config, trainer.regressor_only_steps

    def seconds_per_step(n: int) -> float:
        trainer.train_step()
        t0 = time.perf_counter()
        for _ in range(n):
            trainer.train_step()
        return (time.perf_counter() - t0) / n

    lead = seconds_per_step(args.lead) if lead_steps else 0.0
    trainer.step = lead_steps
    joint = seconds_per_step(args.joint)
    t0 = time.perf_counter()
    trainer.validate()
    validation = time.perf_counter() - t0
    minutes = (lead_steps * lead + (c.steps - lead_steps) * joint + (c.steps // c.val_every) * validation) / 60
    print(json.dumps({"ct": args.ct, "config": args.config, "threads": args.threads, "lead_s": round(lead, 3),
                      "joint_s": round(joint, 3), "validation_s": round(validation, 1), "lead_steps": lead_steps,
                      "steps": c.steps, "projected_min": round(minutes, 1)}, indent=1))


if __name__ == "__main__":
    main()
