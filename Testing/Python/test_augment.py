"""Training-time randomisation of the simulated X-rays and of the bone attenuation."""

from __future__ import annotations

import pytest
import torch

from SphericalRegLib.augment import cut_field, random_bone_scale, randomise_physics, randomise_xray
from SphericalRegLib.errors import InputError
from fixtures import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_torch_thread():
        yield


def test_randomise_xray_is_seeded_pure_and_finite():
    g = torch.Generator().manual_seed(0)
    img = 5 * torch.rand(8, 1, 48, 40, generator=g)
    before = img.clone()
    a = randomise_xray(img, torch.Generator().manual_seed(7))
    b = randomise_xray(img, torch.Generator().manual_seed(7))
    c = randomise_xray(img, torch.Generator().manual_seed(8))
    assert torch.equal(img, before)
    assert a.shape == img.shape and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    changed = (a - img).abs().amax(dim=(1, 2, 3)) > 1e-6
    assert changed.all()  # nine transforms at p = 0.5: all skipped has odds 1/512 per image
    assert not torch.equal(randomise_xray(img, torch.Generator().manual_seed(1), p=0.0), a)
    torch.testing.assert_close(randomise_xray(img, torch.Generator().manual_seed(1), p=0.0), img)
    every = randomise_xray(img, torch.Generator().manual_seed(1), p=1.0)
    assert torch.isfinite(every).all() and (every.std(dim=(1, 2, 3)) > 0).all()


def test_random_bone_scale():
    s = random_bone_scale(1000, torch.Generator().manual_seed(0))
    assert s.shape == (1000,) and s.min() >= 0.7 and s.max() < 1.5
    assert s.std() > 0.1
    torch.testing.assert_close(s, random_bone_scale(1000, torch.Generator().manual_seed(0)))


def _drrs(n=6, size=40, seed=0):
    """Line-integral images of a body (an ellipse, 1-3) with a bone-like disc and air around."""
    g = torch.Generator().manual_seed(seed)
    v, u = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    body = (1 - u**2 / 0.6 - v**2 / 0.9).clamp_min(0).sqrt() * 3
    bone = ((u - 0.1) ** 2 + v**2 < 0.05).float() * 1.5
    return (body + bone)[None, None].repeat(n, 1, 1, 1) * (0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=g))


def test_randomise_physics_is_seeded_pure_and_finite():
    img = _drrs()
    before = img.clone()
    a = randomise_physics(img, torch.Generator().manual_seed(7), pixel_mm=4.0)
    b = randomise_physics(img, torch.Generator().manual_seed(7), pixel_mm=4.0)
    c = randomise_physics(img, torch.Generator().manual_seed(8), pixel_mm=4.0)
    assert torch.equal(img, before) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == img.shape and torch.isfinite(a).all() and (a >= 0).all()
    assert torch.equal(randomise_physics(img, torch.Generator().manual_seed(1), p=0.0), img)
    every = randomise_physics(img, torch.Generator().manual_seed(1), p=1.0, pixel_mm=4.0)
    assert torch.isfinite(every).all() and (every.std(dim=(1, 2, 3)) > 0).all()
    assert ((every - img).abs().amax(dim=(1, 2, 3)) > 0.05).all()
    with pytest.raises(InputError):
        randomise_physics(img[:, 0], torch.Generator())


def test_the_field_is_what_the_reader_would_report():
    img = _drrs(n=8)
    same, field = cut_field(img, torch.Generator().manual_seed(0), p=0.0)
    assert torch.equal(same, img) and field.all()
    cut, field = cut_field(img, torch.Generator().manual_seed(0), p=1.0)
    assert field.dtype == torch.bool and field.shape == img.shape
    assert (cut[~field] == 0).all() and torch.equal(cut[field], img[field])
    outside = (~field).flatten(1).float().mean(1)
    assert (outside > 0).all() and (outside < 0.5).all()  # a band along the borders, not the image
    assert field[:, :, 32, 32].all()  # the centre always stays in the field
    # a shuttered band the physics draws is zero in the X-ray and outside its field
    out, shut = randomise_physics(img, torch.Generator().manual_seed(5), p=1.0, pixel_mm=4.0, return_field=True)
    assert (~shut).any() and (out[~shut] == 0).all()
    assert torch.equal(out, randomise_physics(img, torch.Generator().manual_seed(5), p=1.0, pixel_mm=4.0))


def _state_after(draw, seed: int) -> torch.Tensor:
    """The state of a generator seeded ``seed`` after ``draw(generator)``."""
    g = torch.Generator().manual_seed(seed)
    draw(g)
    return g.get_state()


def test_randomise_physics_effects():
    from SphericalRegLib import augment

    img = _drrs(n=4)
    every = torch.ones(4, dtype=torch.bool)
    L = augment._hardening(img, torch.Generator().manual_seed(0), every)
    for b in range(4):  # the hardening curve is increasing and concave: thick paths are hardened most
        x, y = img[b].flatten(), L[b].flatten()
        order = x.argsort()
        assert (y[order].diff() >= -1e-5).all()
        thin, thick = (x > 0.3) & (x < 1.0), x > 3.0
        assert (y[thick] / x[thick]).mean() < 0.97 * (y[thin] / x[thin]).mean()
    tools = augment._instrument_paths(img, torch.Generator().manual_seed(3), pixel_mm=4.0, wanted=every)
    assert tools.shape == img.shape and (tools >= 0).all() and (tools.amax(dim=(1, 2, 3)) > 0).sum() >= 2
    # images without the effect are left alone, yet their draws are made: the others' are those of the full draw
    some = torch.tensor([True, False, False, True])
    g = torch.Generator().manual_seed(0)
    hardened = augment._hardening(img, g, some)
    assert torch.equal(hardened[some], L[some]) and torch.equal(hardened[~some], img[~some])
    assert torch.equal(g.get_state(), _state_after(lambda h: augment._hardening(img, h, every), 0))
    g = torch.Generator().manual_seed(3)
    placed = augment._instrument_paths(img, g, 4.0, some)
    assert torch.equal(placed[some], tools[some]) and not placed[~some].any()
    assert torch.equal(g.get_state(), _state_after(lambda h: augment._instrument_paths(img, h, 4.0, every), 3))
    # with the effects of intensity alone, the output is the line integral of what was imaged: air stays at 0
    # only when no processing re-estimates it; the mean stays near the input's where nothing large was drawn
    out = randomise_physics(img, torch.Generator().manual_seed(2), p=0.3, pixel_mm=4.0)
    assert (out.mean(dim=(1, 2, 3)) / img.mean(dim=(1, 2, 3))).sub(1).abs().max() < 2.0


def test_train_config_physics_option():
    from SphericalRegLib.training.config import PRESETS, TrainConfig

    # the README's preset and the regressor fine-tune run the regressor under the physics family; small
    # keeps the similarity's X-rays as they were
    assert TrainConfig().physics_p == PRESETS["full"].physics_p == 0.0
    assert PRESETS["small"].physics_p > 0 and not PRESETS["small"].physics_similarity
    assert PRESETS["finetune"].physics_p > 0 and PRESETS["finetune"].trained == ("regressor",)
    assert TrainConfig(physics_p=0.3).physics_p == 0.3
    with pytest.raises(InputError):
        TrainConfig(physics_p=1.5)


def test_the_trainer_draws_physics_only_when_asked():
    from SphericalRegLib.training import Trainer, TrainConfig
    from fixtures import TINY, tiny_ct

    ct = tiny_ct()
    plain, physics = Trainer(ct, TrainConfig(**TINY)), Trainer(ct, TrainConfig(**{**TINY, "physics_p": 1.0}))
    a = plain.sample(3, torch.Generator().manual_seed(0))
    b = physics.sample(3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a["truth"], b["truth"])  # the poses are drawn before the images
    assert torch.isfinite(b["xray"]).all() and b["xray"].shape == a["xray"].shape
    assert not torch.allclose(a["xray"], b["xray"])
    assert torch.equal(plain.sample(3, torch.Generator().manual_seed(0))["xray"], a["xray"])
    assert torch.isfinite(torch.tensor(physics.train_step()["loss"]))


def test_a_cut_field_stands_for_detectors_down_to_min_side():
    img = _drrs(n=64)
    with pytest.raises(InputError):
        cut_field(img, torch.Generator(), p=1.0, min_side=0.0)
    _, bands = cut_field(img, torch.Generator().manual_seed(0), p=1.0)
    _, small = cut_field(img, torch.Generator().manual_seed(0), p=1.0, min_side=0.35)
    kept = small.flatten(1).float().mean(1)
    side = small.any(dim=-1).flatten(1).float().mean(1)  # rows of the field, as a fraction of the image's
    assert kept.min() < 0.25 < bands.flatten(1).float().mean(1).min()  # some fields far smaller than bands make
    assert side.min() >= 0.35 * (1 - 2 * 0.12) - 2 / 64 and side.max() <= 1
    for f in small[:, 0]:  # each field is one rectangle: its rows all span the same columns
        rows = f.any(dim=1)
        assert torch.equal(f[rows], f[rows][:1].expand_as(f[rows]))


def test_a_side_power_above_one_draws_small_detectors_more_often():
    img = _drrs(n=64)
    with pytest.raises(InputError, match="side_power"):
        cut_field(img, torch.Generator(), p=1.0, min_side=0.35, side_power=0.0)

    def sides(power):
        _, field = cut_field(img, torch.Generator().manual_seed(0), p=1.0, min_side=0.35, side_power=power)
        return field.any(dim=-1).flatten(1).float().mean(1)  # rows of the field, as a fraction of the image's

    uniform, small = sides(1.0), sides(2.0)
    assert (small < 0.5).float().mean() > (uniform < 0.5).float().mean() + 0.1
    assert small.min() >= 0.35 * (1 - 2 * 0.12) - 2 / 64
