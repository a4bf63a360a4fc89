"""The trainer on a tiny CT: losses, the double backward, validation and the interrupted run."""

from __future__ import annotations

import math

import pytest
import torch

from SphericalRegLib.checkpoint import read_checkpoint
from SphericalRegLib.errors import InputError
from SphericalRegLib.similarity import SimilarityNet
from SphericalRegLib.training import Trainer, TrainConfig, direction_loss, target_gradient
from fixtures import TINY


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


def test_training_compares_the_xray_with_a_drr_cut_to_its_field(trainer):
    from dataclasses import replace

    config = trainer.config
    try:
        trainer.config = replace(config, field_cut_p=1.0)
        batch = trainer.sample(3, torch.Generator().manual_seed(5))
    finally:
        trainer.config = config
    xray, field, moving = batch["xray"], batch["field"], batch["moving"]
    assert (~field).any() and field.any() and (xray[~field] == 0).all()
    with torch.no_grad():
        feats = trainer.feature_volume()
    S_cut, _ = trainer.similarity_gradient(feats, xray, moving, create_graph=False, field=field)
    S_full, _ = trainer.similarity_gradient(feats, xray, moving, create_graph=False)
    with torch.no_grad():  # what registration computes (register.stages.learnt_residual)
        drr = trainer.renderer(feats, moving) * field.to(feats.dtype)
        sim = trainer.similarity
        expected = 0.5 * sim.residual(sim.embed_xray(xray), sim.embed_drr(drr)).pow(2).sum(-1)
    assert torch.allclose(S_cut.float(), expected.float(), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(S_cut, S_full, rtol=1e-3)
    assert trainer.sample(2, torch.Generator().manual_seed(5))["field"].all()  # off unless configured


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
    assert "reg_iso_mm_small_detector" not in val  # field cuts off: no detector of another size drawn


def test_validation_reads_the_regressor_on_the_smallest_detector_training_drew(trainer):
    from dataclasses import replace

    config = trainer.config
    try:
        trainer.config = replace(config, field_cut_p=0.5, field_min_side=0.4)
        val = trainer.validate()
        small = trainer.validation_set()["small_detector"]
    finally:
        trainer.config = config
    clean = trainer.validation_set()["xray"]
    H, W = clean.shape[-2:]
    centre = (slice(int(0.33 * H), int(0.67 * H) + 1), slice(int(0.33 * W), int(0.67 * W) + 1))
    assert torch.equal(small[..., centre[0], centre[1]], clean[..., centre[0], centre[1]])
    border = torch.ones(H, W, dtype=torch.bool)
    border[int(0.27 * H):int(0.73 * H) + 1, int(0.27 * W):int(0.73 * W) + 1] = False
    assert (small[..., border] == 0).all() and (clean[..., border] != 0).any()  # a centred square of side 0.4
    assert val["reg_iso_mm_small_detector"] >= 0 and val["reg_rot_deg_small_detector"] >= 0


def test_an_interrupt_saves_the_finished_steps(ct, tmp_path):
    from SphericalRegLib.training import run

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


def test_a_termination_signal_saves_the_finished_steps_too(ct, tmp_path):
    """A scheduler's SIGTERM, or SIGINT sent to a run started in a script's background (which
    inherits SIGINT ignored), stops the run like Ctrl-C: the finished steps are saved."""
    import os
    import signal

    from SphericalRegLib.training import run

    for sig in (signal.SIGTERM, signal.SIGINT):
        class SignalledAtStepTwo(Trainer):
            def train_step(self):
                if self.step == 1:
                    os.kill(os.getpid(), sig)
                return super().train_step()

        out = tmp_path / f"model_{sig.name}.pt"
        before = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            with pytest.raises(KeyboardInterrupt):
                run(SignalledAtStepTwo(ct, TrainConfig(**TINY)), out)
        finally:
            signal.signal(signal.SIGINT, before)
        assert read_checkpoint(out, ct)["step"] in (1, 2)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_the_anchor_term_lowers_the_similarity_at_the_truth(trainer):
    batch = trainer.sample(2, torch.Generator().manual_seed(4), augment=False)
    params = [p for p in trainer.similarity.parameters() if p.requires_grad]
    kept = [p.detach().clone() for p in params]  # the fixture is shared by the module's tests
    before = trainer.anchor_loss(trainer.feature_volume(), batch)
    grads = torch.autograd.grad(before, params, allow_unused=True)
    assert before > 0 and any(g is not None and g.abs().sum() > 0 for g in grads)
    with torch.no_grad():  # one small step down the anchor's own gradient
        for p, g in zip(params, grads):
            if g is not None:
                p -= 1e-3 * g / max(float(g.norm()), 1e-12)
    after = trainer.anchor_loss(trainer.feature_volume(), batch)
    with torch.no_grad():
        for p, k in zip(params, kept):
            p.copy_(k)
    assert after < before
    assert trainer.losses(batch)["anchor"] == 0  # off in the tiny (and every shipped) configuration


def test_the_regressor_sees_its_own_larger_batch_and_the_similarity_the_same_one(ct):
    """``regressor_batch`` adds X-rays for the regressor alone: its loss is over all of them, and the
    similarity's batch (and so its loss) is the one the run would have drawn without them."""
    plain = Trainer(ct, TrainConfig(**TINY))
    wider = Trainer(ct, TrainConfig(**{**TINY, "regressor_batch": 6}))
    seen = []
    wider.regressor.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    a, b = plain.train_step(), wider.train_step()
    assert seen == [6]
    assert b["direction"] == pytest.approx(a["direction"], rel=1e-6)
    assert b["pose"] != pytest.approx(a["pose"], rel=1e-6)


def test_physics_kept_to_the_regressors_own_xrays_leaves_the_similarity_as_without_physics(ct):
    """``physics_similarity`` False: the similarity's batch is the one drawn without the physics family,
    the X-rays the regressor reads alone go through it, and in the regressor's lead every X-ray does."""
    extra = {"regressor_batch": 6, "physics_p": 1.0}
    plain = Trainer(ct, TrainConfig(**{**TINY, "regressor_batch": 6}))
    kept = Trainer(ct, TrainConfig(**{**TINY, **extra, "physics_similarity": False}))
    everywhere = Trainer(ct, TrainConfig(**{**TINY, **extra}))
    seen = {}
    for name, trainer in (("plain", plain), ("kept", kept)):
        trainer.regressor.register_forward_pre_hook(lambda module, args, name=name: seen.update({name: args[0]}))
    a, b, c = plain.train_step(), kept.train_step(), everywhere.train_step()
    assert b["direction"] == pytest.approx(a["direction"], rel=1e-6)
    assert c["direction"] != pytest.approx(a["direction"], rel=1e-6)
    n = TINY["batch_size"]
    assert torch.equal(seen["kept"][:n], seen["plain"][:n])
    assert not torch.equal(seen["kept"][n:], seen["plain"][n:])
    lead = Trainer(ct, TrainConfig(**{**TINY, **extra, "physics_similarity": False, "steps": 4,
                                      "regressor_only_share": 0.5}))
    draw = lead.sample(2, torch.Generator().manual_seed(5), physics=False)["xray"]
    assert not torch.equal(lead.sample(2, torch.Generator().manual_seed(5))["xray"], draw)


def test_a_regressor_batch_up_to_the_batch_is_the_batch_and_a_negative_one_is_refused(ct):
    trainer = Trainer(ct, TrainConfig(**{**TINY, "regressor_batch": 1}))  # a GPU run's larger --batch-size
    seen = []
    trainer.regressor.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    trainer.train_step()
    assert seen == [TINY["batch_size"]]
    with pytest.raises(InputError, match="regressor_batch"):
        TrainConfig(**{**TINY, "regressor_batch": -1})


def test_the_regressor_trains_alone_for_its_share_of_the_steps_then_every_network_trains(ct):
    """``regressor_only_share``: the first steps move the regressor alone, on its whole batch and
    without the similarity's loss; from then on the features and the similarity train too, their
    learning rate warming up from where the lead ended."""
    trainer = Trainer(ct, TrainConfig(**{**TINY, "steps": 4, "regressor_only_share": 0.5, "regressor_batch": 3}))
    assert trainer.regressor_only_steps == 2

    def weights():
        return {name: torch.cat([p.detach().flatten().clone() for p in m.parameters()])
                for name, m in trainer.networks.items()}

    seen = []
    trainer.regressor.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    start = weights()
    lead = [trainer.train_step() for _ in range(2)]
    after_lead = weights()
    assert all(entry["direction"] == 0 for entry in lead)
    assert not torch.equal(after_lead["regressor"], start["regressor"])
    assert torch.equal(after_lead["similarity"], start["similarity"])
    assert torch.equal(after_lead["features"], start["features"])
    joint = trainer.train_step()
    assert joint["direction"] > 0
    assert not torch.equal(weights()["similarity"], after_lead["similarity"])
    assert seen == [3, 3, 3]  # the lead's X-rays are the regressor's batch; later the batch and its extra ones
    trainer.step = 1  # a validation in the lead measures the regressor and leaves the untrained similarity out
    lead_validation = trainer.validate()
    assert math.isnan(lead_validation["grad_within30"]) and lead_validation["reg_geodesic_mm"] > 0
    trainer.step = 3
    assert 0 <= trainer.validate()["grad_within30"] <= 1
    trainer.config.initialised_from, trainer.step = "trained.pt", 1  # a similarity from --init is validated in the lead
    assert 0 <= trainer.validate()["grad_within30"] <= 1
    with pytest.raises(InputError, match="regressor_only_share"):
        TrainConfig(**{**TINY, "regressor_only_share": 1.0})


def test_a_trained_models_trainer_holds_its_networks_at_the_step_it_was_saved(tiny_model_file, tiny_volume):
    state = read_checkpoint(tiny_model_file, tiny_volume)
    trainer = Trainer.of_model(tiny_model_file, tiny_volume, val_size=3)
    assert trainer.step == state["step"] > 0 and trainer.config.val_size == 3
    for name, module in trainer.networks.items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, state["networks"][name][key].to(value)), (name, key)
