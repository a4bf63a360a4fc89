"""``sphericalreg train`` on a tiny CT: no silent overwrite, resume, and two processes under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys


from SphericalRegLib import cli
from SphericalRegLib.checkpoint import read_checkpoint
from fixtures import write_training_inputs


def test_train_command_refuses_to_overwrite_and_resumes(ct, tmp_path):
    ct_path, config = write_training_inputs(ct, tmp_path)
    out = tmp_path / "model.pt"
    out.write_text("precious")
    argv = ["train", "--ct", str(ct_path), "--out", str(out), "--config", str(config), "--device", "cpu"]
    assert cli.main(argv + ["--steps", "1"]) == 2
    assert out.read_text() == "precious"
    assert cli.main(argv + ["--steps", "1", "--overwrite"]) == 0
    assert read_checkpoint(out)["step"] == 1
    assert (tmp_path / "model.curves.png").stat().st_size > 0
    assert cli.main(argv + ["--steps", "2", "--resume"]) == 0
    state = read_checkpoint(out)
    assert state["step"] == 2 and len(state["history"]["loss"]) == 2


def test_torchrun_two_processes_on_gloo(ct, tmp_path):
    ct_path, config = write_training_inputs(ct, tmp_path)
    out = tmp_path / "model.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "SphericalRegLib.cli", "train", "--ct", str(ct_path), "--out", str(out),
           "--config", str(config), "--steps", "2", "--device", "cpu"]
    done = subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = read_checkpoint(out)
    assert state["world_size"] == 2 and state["step"] == 2
