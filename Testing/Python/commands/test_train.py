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


def test_init_fine_tunes_the_regressor_alone_and_keeps_this_cts_pose_frame(ct, tiny_model_file, tmp_path):
    """--init: the starting model's networks and architecture; with trained=regressor only the
    regressor moves, the CT-bound buffers are this CT's, and the physics validation is recorded."""
    import json

    import numpy as np
    import torch

    from SphericalRegLib.volume import Volume

    shifted = Volume(ct.data.clone(), ct.ijk_to_ras.clone())
    shifted.ijk_to_ras[:3, 3] += torch.tensor([7.0, -5.0, 11.0], dtype=shifted.ijk_to_ras.dtype)
    ct_path, _ = write_training_inputs(shifted, tmp_path)
    config = tmp_path / "finetune.json"
    config.write_text(json.dumps({"base": "finetune", "steps": 2, "batch_size": 2, "val_size": 2, "val_every": 2,
                                  "calibration_cases": 0, "warmup_steps": 1}))
    out = tmp_path / "tuned.pt"
    argv = ["train", "--ct", str(ct_path), "--out", str(out), "--init", str(tiny_model_file), "--config",
            str(config), "--device", "cpu"]
    assert cli.main(argv + ["--image-size", "48"]) == 2  # architecture comes from the starting model
    assert cli.main(argv) == 0
    start, tuned = read_checkpoint(tiny_model_file), read_checkpoint(out)
    assert tuned["config"]["trained"] == ("regressor",) and tuned["config"]["initialised_from"] == str(tiny_model_file)
    assert tuned["config"]["image_size"] == start["config"]["image_size"]
    for name in ("features", "similarity"):
        for key, value in start["networks"][name].items():
            assert torch.equal(tuned["networks"][name][key], value), (name, key)
    moved = [k for k, v in start["networks"]["regressor"].items()
             if v.is_floating_point() and not torch.equal(tuned["networks"]["regressor"][k].to(v.dtype), v)]
    assert any(k.startswith("backbone") for k in moved)
    ref_start, ref_tuned = (m["networks"]["regressor"]["reference_pose"] for m in (start, tuned))
    assert not torch.allclose(ref_start, ref_tuned)  # about this CT's isocentre, not the starting model's
    assert np.isfinite(tuned["history"]["val_reg_iso_mm_physics"][-1])
    assert cli.main(argv + ["--resume"]) == 2 and cli.main(["train", "--ct", str(ct_path), "--out", str(tiny_model_file),
                                                             "--init", str(tiny_model_file), "--overwrite"]) == 2


def test_init_with_a_new_similarity_keeps_the_regressor(ct, tiny_model_file, tmp_path):
    """A configuration file that asks for another similarity architecture: with --init the similarity
    starts afresh (tied stems, its own token grid), the regressor and features it does not train are
    the starting model's; asking for a new regressor without training it is an error."""
    import json

    import torch

    ct_path, _ = write_training_inputs(ct, tmp_path)
    config = tmp_path / "new_similarity.json"
    config.write_text(json.dumps({"base": "small", "steps": 1, "batch_size": 2, "val_size": 2, "val_every": 1000,
                                  "calibration_cases": 0, "warmup_steps": 1, "trained": ["similarity"],
                                  "similarity_kwargs": {"embed_dim": 8, "tokens": 16, "token_stage": 2,
                                                        "tied_stems": True}}))
    out = tmp_path / "new.pt"
    argv = ["train", "--ct", str(ct_path), "--out", str(out), "--init", str(tiny_model_file), "--config",
            str(config), "--device", "cpu"]
    assert cli.main(argv) == 0
    start, new = read_checkpoint(tiny_model_file), read_checkpoint(out)
    assert new["config"]["similarity_kwargs"]["token_stage"] == 2
    assert new["config"]["image_size"] == start["config"]["image_size"]
    assert set(new["networks"]["similarity"]) != set(start["networks"]["similarity"])
    for name in ("features", "regressor"):
        for key, value in start["networks"][name].items():
            if key not in ("reference_pose", "pivot"):
                assert torch.equal(new["networks"][name][key], value), (name, key)
    bad = json.loads(config.read_text())
    bad["regressor_kwargs"] = {"backbone": "resnet18"}
    config.write_text(json.dumps(bad))
    assert cli.main(argv + ["--overwrite"]) == 2


def test_init_with_afresh_networks_starts_them_from_random_weights(ct, tiny_model_file, tmp_path):
    """"afresh": the named networks do not come from --init (the regressor it does not train does);
    naming a network the run does not train is an error, before anything is written."""
    import json

    import torch

    ct_path, _ = write_training_inputs(ct, tmp_path)
    config = tmp_path / "afresh.json"
    settings = {"base": "small", "steps": 1, "batch_size": 2, "val_size": 2, "val_every": 1000,
                "calibration_cases": 0, "warmup_steps": 1, "lr_features": 0.0,
                "trained": ["features", "similarity"], "afresh": ["features"]}
    config.write_text(json.dumps(settings))
    out = tmp_path / "afresh.pt"
    argv = ["train", "--ct", str(ct_path), "--out", str(out), "--init", str(tiny_model_file), "--config",
            str(config), "--device", "cpu"]
    assert cli.main(argv) == 0
    start, new = read_checkpoint(tiny_model_file), read_checkpoint(out)
    assert new["config"]["afresh"] == ("features",)
    differs = [k for k, v in start["networks"]["features"].items() if v.is_floating_point() and v.numel() > 1
               and not torch.equal(new["networks"]["features"][k].to(v.dtype), v)]
    assert differs  # random weights, not the starting model's (lr 0: not moved by the one step)
    for key, value in start["networks"]["regressor"].items():
        if key not in ("reference_pose", "pivot"):
            assert torch.equal(new["networks"]["regressor"][key], value), key
    config.write_text(json.dumps({**settings, "afresh": ["regressor"]}))
    bad = tmp_path / "bad.pt"
    assert cli.main(argv[:4] + [str(bad)] + argv[5:]) == 2 and not bad.exists()
