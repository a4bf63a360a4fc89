"""Training of the similarity and the regressor, checkpoints and the ``train`` command, on a tiny CT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from SphericalRegLib import cli
from SphericalRegLib.errors import InputError
from SphericalRegLib.geometry import perturb_left
from SphericalRegLib.model import FORMAT_VERSION, TrainConfig, load_model, read_checkpoint, working_volume
from SphericalRegLib.similarity import SimilarityNet
from SphericalRegLib.train import Trainer, direction_loss, pose_distance, target_gradient
from SphericalRegLib.volume import Volume
from tiny import TINY, tiny_ct
from tiny import write_ct as _write_ct

@pytest.fixture(scope="module")
def ct():
    return tiny_ct()


@pytest.fixture(scope="module")
def trainer(ct):
    return Trainer(ct, TrainConfig(**TINY))


def test_loss_falls_on_a_fixed_batch(ct):
    config = TrainConfig(**{**TINY, "fixed_batch": True, "lr_similarity": 3e-4, "lr_features": 3e-4,
                            "lr_regressor": 1e-3})
    trainer = Trainer(ct, config)
    losses = [trainer.train_step() for _ in range(5)]  # each step reports the loss before its update
    first, last = losses[0], losses[-1]
    assert last["loss"] < 0.5 * first["loss"], [round(x["loss"], 3) for x in losses]
    assert last["direction"] < first["direction"], [round(x["direction"], 3) for x in losses]
    assert last["pose"] < first["pose"]


def test_the_gradient_loss_alone_trains_encoder_and_feature_cnn(trainer):
    g = torch.Generator().manual_seed(3)
    batch = trainer.sample(2, g)
    target = target_gradient(batch["moving"], batch["truth"], "so4", trainer.length, trainer.isocentre, trainer.depth)
    _, grad = trainer.similarity_gradient(trainer.feature_volume(), batch["xray"], batch["moving"], create_graph=True)
    for m in trainer.networks.values():
        m.zero_grad(set_to_none=True)
    direction_loss(grad, target).mean().backward()

    def has_grad(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    # every part only reaches the loss through d(S)/d(xi): the double backward happened
    assert has_grad(trainer.features.conv1)
    assert has_grad(trainer.features.conv3)
    assert has_grad(trainer.similarity.stem_drr)
    assert has_grad(trainer.similarity.stem_xray)
    assert has_grad(trainer.similarity.trunk)
    assert not has_grad(trainer.regressor)


def test_target_gradient_points_uphill_and_depends_on_the_metric(trainer):
    g = torch.Generator().manual_seed(5)
    batch = trainer.sample(3, g, augment=False)
    moving, truth = batch["moving"], batch["truth"]
    args = (trainer.length, trainer.isocentre, trainer.depth)
    targets = {m: target_gradient(moving, truth, m, *args) for m in ("se3", "so4")}
    for metric, gs in targets.items():
        d0 = pose_distance(moving, truth, metric, *args)
        step = -1e-3 * gs / gs.norm(dim=-1, keepdim=True) * torch.tensor([0.01] * 3 + [10.0] * 3, dtype=torch.float64)
        d1 = pose_distance(perturb_left(step, moving), truth, metric, *args)
        assert (d1 < d0).all(), metric
    cos = torch.nn.functional.cosine_similarity(targets["se3"], targets["so4"], dim=-1)
    assert (cos < 1 - 1e-6).all()  # different targets, not merely rescaled


def test_space_switch_changes_the_similarity_gradient(trainer):
    g = torch.Generator().manual_seed(7)
    batch = trainer.sample(2, g, augment=False)
    with torch.no_grad():
        feats = trainer.feature_volume()
    original = trainer.similarity
    grads = {}
    try:
        for space in ("sphere", "euclidean", "hyperbolic"):
            torch.manual_seed(11)
            trainer.similarity = SimilarityNet(2, space=space, image_size=32, embed_dim=8, tokens=4)
            _, grads[space] = trainer.similarity_gradient(feats, batch["xray"], batch["moving"], create_graph=False)
    finally:
        trainer.similarity = original
    assert not torch.allclose(grads["sphere"], grads["euclidean"], rtol=1e-3)
    assert not torch.allclose(grads["sphere"], grads["hyperbolic"], rtol=1e-3)


def test_validation_reports_regressor_errors_and_gradient_shares(trainer):
    val = trainer.validate()
    assert val["reg_geodesic_mm"] > 0 and val["reg_rot_deg"] >= 0
    assert 0 <= val["grad_within30"] <= 1 and 0 <= val["rot_within30"] <= 1
    # the held-out set is fixed: a second call sees the same poses
    assert torch.equal(trainer.validation_set()["truth"], trainer.validation_set()["truth"])


def test_checkpoint_round_trip_and_exact_resume(ct, tmp_path):
    config = TrainConfig(**TINY)
    a = Trainer(ct, config)
    a.train_step()
    path = tmp_path / "model.pt"
    a.save(path)

    bundle = load_model(path, ct)
    assert bundle.config == config and bundle.step == 1
    for name in ("features", "similarity", "regressor"):
        mine, loaded = a.networks[name].state_dict(), getattr(bundle, name).state_dict()
        assert mine.keys() == loaded.keys()
        assert all(torch.equal(mine[k], loaded[k]) for k in mine)
    assert bundle.feature_volume.data.shape == (2, 24, 24, 24)
    assert torch.equal(bundle.feature_volume.ijk_to_ras, bundle.volume.ijk_to_ras)

    b = Trainer(ct, config)
    b.restore(read_checkpoint(path, ct))
    assert b.step == 1
    next_a, next_b = a.train_step(), b.train_step()
    assert next_a["loss"] == pytest.approx(next_b["loss"], rel=1e-5)
    assert b.step == 2


def test_damaged_and_foreign_checkpoints_are_input_errors(ct, trainer, tmp_path):
    path = tmp_path / "model.pt"
    trainer.save(path)
    data = path.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupted"):
        load_model(truncated, ct)

    garbage = tmp_path / "notes.pt"
    garbage.write_text("not a model")
    with pytest.raises(InputError, match="truncated or corrupted"):
        load_model(garbage, ct)

    state = torch.load(path, weights_only=False)
    state["format_version"] = FORMAT_VERSION + 1
    newer = tmp_path / "newer.pt"
    torch.save(state, newer)
    with pytest.raises(InputError, match="newer model format"):
        load_model(newer, ct)

    other = tiny_ct(blobs=((0.1, 0.1, 0.2), (-0.35, -0.1, -0.3), (0.0, 0.3, -0.1)))
    with pytest.raises(InputError, match=r"trained on another CT \(24x24x24 voxels of 6 x 6 x 6 mm"):
        load_model(path, other)

    with pytest.raises(InputError, match="model file not found"):
        load_model(tmp_path / "missing.pt", ct)


def test_ct_too_small_or_too_large_for_the_configuration():
    config = TrainConfig(**TINY)
    small = Volume(torch.zeros(10, 10, 10), torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0])))
    with pytest.raises(InputError, match="at least 8 voxels"):
        working_volume(small, config)
    huge = Volume(torch.zeros(40, 40, 40), torch.diag(torch.tensor([30.0, 30.0, 30.0, 1.0])))
    with pytest.raises(InputError, match="too large"):
        working_volume(huge, config)
    with pytest.raises(InputError, match="GiB"):
        working_volume(tiny_ct(), replace(config, memory_budget_gib=1e-4))


def test_train_command_refuses_to_overwrite_and_resumes(ct, tmp_path):
    ct_path = tmp_path / "ct.nii.gz"
    _write_ct(ct, ct_path)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"base": "small", **TINY}))
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
    ct_path = tmp_path / "ct.nii.gz"
    _write_ct(ct, ct_path)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"base": "small", **TINY}))
    out = tmp_path / "model.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "SphericalRegLib.cli", "train", "--ct", str(ct_path), "--out", str(out),
           "--config", str(config), "--steps", "2", "--device", "cpu"]
    done = subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = read_checkpoint(out)
    assert state["world_size"] == 2 and state["step"] == 2


def test_an_interrupt_saves_the_finished_steps(ct, tmp_path):
    from SphericalRegLib.train import run

    class InterruptedAtStepTwo(Trainer):
        def train_step(self):
            if self.step == 1:
                raise KeyboardInterrupt  # as Ctrl-C arriving during the second step
            return super().train_step()

    out = tmp_path / "model.pt"
    with pytest.raises(KeyboardInterrupt):
        run(InterruptedAtStepTwo(ct, TrainConfig(**TINY)), out)
    state = read_checkpoint(out, ct)
    assert state["step"] == 1 and len(state["history"]["loss"]) == 1


def test_exported_model_is_smaller_and_loads_to_the_same_networks(ct, trainer, tmp_path):
    full = tmp_path / "model.pt"
    trainer.save(full)
    small = tmp_path / "deploy.pt"
    assert cli.main(["export", str(full), str(small)]) == 0
    assert small.stat().st_size < 0.6 * full.stat().st_size
    assert cli.main(["export", str(full), str(small)]) == 2  # never overwrites unasked
    a, b = load_model(full, ct), load_model(small, ct)
    for name in ("features", "similarity", "regressor"):
        for k, v in getattr(a, name).state_dict().items():
            w = getattr(b, name).state_dict()[k]
            assert w.dtype == v.dtype
            assert torch.allclose(w.float(), v.float(), rtol=1e-3, atol=1e-4)
