"""Learnability of the similarity's pose gradient (issue 10, part 1): ladder, profile and fixes.

Every subcommand trains (or times) the patient-specific model on the example chest CT with the
``small`` preset and one torch thread, and prints one markdown table row per run. Held-out poses
for the reported numbers come from ``--report-seed`` (never used for any choice made in this
script); the training poses come from ``--seed``.

    python benchmarks/learnability.py profile [--size 64]
    python benchmarks/learnability.py oracle --size 64 [--dof 6]  # reference: image MSE/NCC gradients vs g*
    python benchmarks/learnability.py probe --size 32            # the embedding's response to shifts
    python benchmarks/learnability.py gradcheck --dof 1 --size 32 --encoder tied --augment off
    python benchmarks/learnability.py ladder --dof 1|3|6 --augment on|off --size 32|64 [--steps 300]
    python benchmarks/learnability.py ladder ... --loss value|direction|both|dirnorm|rank|regressor
                                      [--encoder tied|coords] [--lr-scale 3] [--features plain]
                                      [--metric se3] [--curriculum 150] [--frame iso] [--batch 4]
                                      [--fixed-batch] [--seed 0]
    python benchmarks/learnability.py header                    # the markdown header of ladder rows

The fixes measured in docs/learnability.md: ``--encoder tied`` (the DRR stem starts as the X-ray
stem on the mu channel), ``--loss dirnorm`` (each sample's direction term weighted by its own
detached |g|), ``--metric se3``.

Ladder DOF (offsets of the moving pose from the truth, in the camera frame about the isocentre;
the ground truths keep the preset's full spread): 1 = in-plane x translation, 3 = x, y, z
translations, 3r = the three rotations, 6 = all. Every run is scored on ``--val-size`` (64)
held-out poses: the share of similarity gradients within 30 deg of g* (6-D twist, rotation part
and translation part as in ``Trainer.validate``), the median twist angle, for 1 DOF the share
with the right sign along x, and the regressor's errors.

``--frame iso`` (a candidate fix) differentiates the similarity and the target along a twist
about the isocentre instead of the camera source: ``exp(xi) T`` becomes
``C^-1 exp(xi) C T`` with ``C`` the translation to the isocentre's camera position, so a rotation
component no longer carries the lever arm of the source-isocentre distance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("LEARNABILITY_THREADS", "1")))

# ---- library names (the only block to edit when the modules move) -------------------------------
# After the refactor: SphericalRegLib.training.objective (centred, pose_distance, target_gradient,
# direction_loss, twist_angles), .training.trainer (Trainer), .training.config (TrainConfig,
# PRESETS), SphericalRegLib.example (example_ct_path).
import SphericalRegLib as _lib  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

if (_Path(_lib.__file__).parent / "training").is_dir():  # the refactored layout
    from SphericalRegLib.training import (PRESETS, Trainer, centred, direction_loss, pose_distance,  # noqa: E402
                                          target_gradient, twist_angles)
    from SphericalRegLib.training.objective import METRICS  # noqa: E402
    from SphericalRegLib.example import example_ct_path  # noqa: E402
else:  # the layout of /work/before (train.py, model.py, demo.py)
    from SphericalRegLib.train import (Trainer, centred, direction_loss, pose_distance,  # noqa: E402
                                       target_gradient, twist_angles)
    from SphericalRegLib.model import PRESETS  # noqa: E402
    METRICS = ("so4", "se3")
    from SphericalRegLib.demo import example_ct_path  # noqa: E402
from SphericalRegLib.io import read_ct  # noqa: E402
from SphericalRegLib.geometry import make_pose, perturb_left, rotation_angle, se3_exp, se3_log  # noqa: E402
from SphericalRegLib.poses import camera_frame_offset, sample_offsets  # noqa: E402
from SphericalRegLib.augment import random_bone_scale, randomise_xray  # noqa: E402
from SphericalRegLib.volume import hu_to_mu  # noqa: E402
from SphericalRegLib.intensity import ncc  # noqa: E402
from SphericalRegLib.regressor import pose_loss  # noqa: E402
# ---------------------------------------------------------------------------------------------------

DOF = {"1": (3,), "3": (3, 4, 5), "3r": (0, 1, 2), "6": (0, 1, 2, 3, 4, 5)}
"""Active components of the moving offset (rotation x, y, z, translation x, y, z)."""


def _translation(t):
    eye = torch.eye(3, dtype=t.dtype, device=t.device).expand(*t.shape[:-1], 3, 3)
    return make_pose(eye, t)


class CoordStem(torch.nn.Module):
    """A library stem (Conv2d, GroupNorm, SiLU) widened by two coordinate input channels."""

    def __init__(self, stem):
        super().__init__()
        conv = stem[0]
        self.conv = torch.nn.Conv2d(conv.in_channels + 2, conv.out_channels, 3, padding=1)
        self.rest = stem[1:]

    def forward(self, x):
        B, _, H, W = x.shape
        r = torch.linspace(-1, 1, H, dtype=x.dtype).view(1, 1, H, 1).expand(B, 1, H, W)
        c = torch.linspace(-1, 1, W, dtype=x.dtype).view(1, 1, 1, W).expand(B, 1, H, W)
        return self.rest(self.conv(torch.cat([x, r, c], 1)))


class LadderTrainer(Trainer):
    """The library's Trainer with restricted offsets, a switchable loss, twist frame and curriculum."""

    def __init__(self, ct, config, dof="6", augment=True, loss="both", frame="source", curriculum=0,
                 encoder="library", **kw):
        self.dof, self.augment, self.loss_mode, self.frame = DOF[dof], augment, loss, frame
        self.curriculum = curriculum
        super().__init__(ct, config, **kw)
        if "tied" in encoder:
            # the DRR stem starts as the X-ray stem on channel 0 (mu) and ignores the learnt channels:
            # at initialisation S(truth) = 0 for a clean X-ray and S grows with the offset
            sim = self.similarity
            with torch.no_grad():
                sim.stem_drr[0].weight.zero_()
                sim.stem_drr[0].weight[:, :1] = sim.stem_xray[0].weight
                sim.stem_drr[0].bias.copy_(sim.stem_xray[0].bias)
                sim.stem_drr[1].load_state_dict(sim.stem_xray[1].state_dict())
        if encoder == "coords":
            # CoordConv stems: two fixed channels of the pixel's row and column in [-1, 1], so that the
            # globally pooled trunk can still say where things are in the image
            sim = self.similarity
            sim.stem_xray = CoordStem(sim.stem_xray)
            sim.stem_drr = CoordStem(sim.stem_drr)
            c = config
            groups = [dict(params=list(self.features.parameters()), lr=c.lr_features),
                      dict(params=list(sim.parameters()), lr=c.lr_similarity),
                      dict(params=list(self.regressor.parameters()), lr=c.lr_regressor)]
            groups = [g for g in groups if g["params"]]
            self.optimizer = torch.optim.AdamW(groups, weight_decay=c.weight_decay)
            sched = self.scheduler.lr_lambdas[0]
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, sched)

    # -- the twist frame: source (the library) or isocentre
    def _perturb(self, xi, T):
        if self.frame == "source":
            return perturb_left(xi, T)
        p = torch.zeros(xi.shape[0], 3, dtype=xi.dtype)
        p[:, 2] = self.depth
        return _translation(p) @ se3_exp(xi) @ _translation(-p) @ T

    def target(self, moving, truth):
        c = self.config
        if self.frame == "source":
            return target_gradient(moving, truth, c.metric, self.length, self.isocentre, self.depth)
        with torch.enable_grad():
            xi = torch.zeros(moving.shape[0], 6, dtype=torch.float64, requires_grad=True)
            d = pose_distance(self._perturb(xi, moving.double()), truth.double(), c.metric, self.length,
                              self.isocentre, self.depth)
            (g,) = torch.autograd.grad((d ** 2).sum(), xi)
        return g.detach()

    def similarity_gradient(self, feats, xray, moving, create_graph):
        xi = torch.zeros(moving.shape[0], 6, dtype=torch.float64, device=self.device, requires_grad=True)
        drr = self.renderer(feats, self._perturb(xi, moving))
        residual = self.similarity.residual(self.similarity.embed_xray(xray), self.similarity.embed_drr(drr))
        S = 0.5 * residual.pow(2).sum(-1)
        (g,) = torch.autograd.grad(S.sum(), xi, create_graph=create_graph)
        return S, g

    # -- data: the library's sampling with inactive DOF zeroed and an optional curriculum on the scale
    def sample(self, n, generator, augment=None):
        augment = self.augment if augment is None else augment
        c = self.config
        truth = sample_offsets(n, c.truth_rot_deg, c.truth_trans_mm, self.depth, generator) @ self.reference
        lo, hi = c.moving_scale
        if self.curriculum and self.training_now:
            hi = lo + (hi - lo) * min(1.0, 0.2 + 0.8 * self.step / self.curriculum)
        scale = lo + (hi - lo) * torch.rand(n, 1, generator=generator, dtype=torch.float64)
        rot = torch.deg2rad(torch.tensor(c.moving_rot_deg, dtype=torch.float64))
        angles = torch.randn(n, 3, generator=generator, dtype=torch.float64) * rot * scale
        trans = torch.randn(n, 3, generator=generator, dtype=torch.float64) * torch.tensor(
            c.moving_trans_mm, dtype=torch.float64) * scale
        mask = torch.zeros(6, dtype=torch.float64)
        mask[list(self.dof)] = 1
        angles, trans = angles * mask[:3], trans * mask[3:]
        moving = camera_frame_offset(angles, trans, self.depth) @ truth
        bone = random_bone_scale(n, generator, *c.bone_scale) if augment else torch.ones(n, dtype=torch.float64)
        xray = self.simulate(truth, bone)
        if augment:
            xray = randomise_xray(xray, generator, p=c.augment_p)
        return dict(truth=truth, moving=moving, xray=xray)

    training_now = False

    def train_step(self):
        self.training_now = True
        try:
            return super().train_step()
        finally:
            self.training_now = False

    # -- losses
    def losses(self, batch):
        c = self.config
        distance = pose_distance(batch["moving"], batch["truth"], c.metric, self.length, self.isocentre, self.depth)
        zero = torch.zeros((), dtype=torch.float32)
        if self.loss_mode == "regressor":  # the regressor alone: no similarity, no rendering of features
            predicted = self.regressor(batch["xray"])
            pose = pose_loss(centred(predicted, self.isocentre, self.depth),
                             centred(batch["truth"].to(predicted.dtype), self.isocentre, self.depth),
                             length=self.length).mean()
            return dict(loss=pose, direction=zero, value=zero, pose=pose, rank=zero, similarity=zero)
        feats = self.feature_volume()
        if self.loss_mode in ("direction", "both", "dirnorm"):
            target = self.target(batch["moving"], batch["truth"])
            S, g = self.similarity_gradient(feats, batch["xray"], batch["moving"], create_graph=True)
            if self.loss_mode == "dirnorm":
                # each sample's direction term weighted by its own |g| (detached, relative to the batch
                # mean): d(1 - cos)/dg scales like 1/|g|, so without this the samples whose gradient is
                # nearly zero (saturated, far offsets) dominate every update
                t = target.to(g)
                w_rot = g[:, :3].norm(dim=-1).detach()
                w_tr = g[:, 3:].norm(dim=-1).detach()
                w_rot, w_tr = w_rot / w_rot.mean().clamp_min(1e-12), w_tr / w_tr.mean().clamp_min(1e-12)
                unit = lambda v: v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # noqa: E731
                rot = (unit(g[:, :3]) - unit(t[:, :3])).pow(2).sum(-1)
                trn = (unit(g[:, 3:]) - unit(t[:, 3:])).pow(2).sum(-1)
                direction = (w_rot * rot + w_tr * trn).mean()
            else:
                direction = direction_loss(g, target).mean()
        else:
            drr = self.renderer(feats, batch["moving"])
            r = self.similarity.residual(self.similarity.embed_xray(batch["xray"]), self.similarity.embed_drr(drr))
            S = 0.5 * r.pow(2).sum(-1)
            direction = zero
        rms = (2 * S / self.similarity.tokens).clamp_min(1e-12).sqrt()
        value = F.smooth_l1_loss(rms, (distance / c.value_scale_mm).to(rms.dtype))
        rank = zero
        if self.loss_mode == "rank":
            # a second moving pose halfway along the same offset must score lower than the first
            off = batch["moving"] @ torch.linalg.inv(batch["truth"])
            half = se3_exp(0.5 * se3_log(off)) @ batch["truth"]
            drr2 = self.renderer(feats, half)
            r2 = self.similarity.residual(self.similarity.embed_xray(batch["xray"]),
                                          self.similarity.embed_drr(drr2))
            rms2 = (r2.pow(2).mean(-1)).clamp_min(1e-12).sqrt()
            rank = F.softplus(10 * (rms2 - rms + 0.05)).mean() / 10
        predicted = self.regressor(batch["xray"])
        pose = pose_loss(centred(predicted, self.isocentre, self.depth),
                         centred(batch["truth"].to(predicted.dtype), self.isocentre, self.depth),
                         length=self.length).mean()
        if self.loss_mode == "direction":
            total = direction + c.regressor_weight * pose
        elif self.loss_mode in ("both", "dirnorm"):
            total = direction + c.value_weight * value + c.regressor_weight * pose
        elif self.loss_mode == "value":
            total = value + c.regressor_weight * pose
        else:  # rank
            total = rank + c.value_weight * value + c.regressor_weight * pose
        return dict(loss=total, direction=direction, value=value, pose=pose, rank=rank,
                    similarity=S.mean().detach())

    # -- scoring
    def score(self, val):
        for m in self.networks.values():
            m.eval()
        with torch.no_grad():
            feats = self.feature_volume()
        gs, ts, est = [], [], []
        for s in range(0, len(val["moving"]), 8):
            sl = slice(s, s + 8)
            _, g = self.similarity_gradient(feats, val["xray"][sl], val["moving"][sl], create_graph=False)
            gs.append(g.detach())
            ts.append(self.target(val["moving"][sl], val["truth"][sl]))
            with torch.no_grad():
                est.append(self.regressor(val["xray"][sl]).double())
        g = torch.cat(gs)
        out = summarise(self, g, torch.cat(ts), torch.cat(est), val)
        keep = self.config
        for metric in METRICS:  # the 6-D share against each metric's target
            self.config = replace(keep, metric=metric)
            t = self.target(val["moving"], val["truth"])
            out["twist30_" + metric] = float((twist_angles(g, t, self.length)["twist"] < 30).double().mean())
        self.config = keep
        return out


def summarise(tr, g, t, est, val):
    a = twist_angles(g, t, tr.length)
    out = dict(twist30=float((a["twist"] < 30).double().mean()), rot30=float((a["rot"] < 30).double().mean()),
               tr30=float((a["tr"] < 30).double().mean()), median=float(a["twist"].median()),
               signx=float((torch.sign(g[:, 3]) == torch.sign(t[:, 3])).double().mean()))
    act = list(tr.dof)
    ga, ta = g[:, act], t[:, act]
    if len(act) > 1:
        cos = (ga * ta).sum(-1) / (ga.norm(dim=-1) * ta.norm(dim=-1)).clamp_min(1e-12)
        out["active30"] = float((torch.rad2deg(torch.acos(cos.clamp(-1, 1))) < 30).double().mean())
    else:
        out["active30"] = out["signx"]
    truth = val["truth"]
    dist = pose_distance(val["moving"], truth, "se3", tr.length, tr.isocentre, tr.depth)
    near = dist <= dist.median()
    ok = a["twist"] < 30
    out["twist30_near"], out["twist30_far"] = float(ok[near].double().mean()), float(ok[~near].double().mean())
    out["reg_rot"] = float(torch.rad2deg(rotation_angle(est[:, :3, :3], truth[:, :3, :3])).mean())
    out["reg_iso"] = float((centred(est, tr.isocentre, tr.depth)[:, :3, 3]
                            - centred(truth, tr.isocentre, tr.depth)[:, :3, 3]).norm(dim=-1).mean())
    return out


def grad_norms(tr, batch):
    """Per network, the gradient norm of each loss term on one batch (relative to the parameter norm)."""
    losses = tr.losses(batch)
    out = {}
    for term in ("direction", "value", "pose", "rank"):
        if not losses[term].requires_grad:
            continue
        for name, net in tr.networks.items():
            ps = [p for p in net.parameters() if p.requires_grad]
            if not ps:
                continue
            gr = torch.autograd.grad(losses[term], ps, retain_graph=True, allow_unused=True)
            n = math.sqrt(sum(float(x.pow(2).sum()) for x in gr if x is not None))
            out[f"{term}/{name}"] = n
    return out


# ----------------------------------------------------------------------------- setup


def make_trainer(args, **kw):
    ct = read_ct(example_ct_path())
    c = PRESETS["small"]
    scale = args.lr_scale
    c = replace(c, image_size=args.size, steps=args.steps, batch_size=args.batch, seed=args.seed,
                features=args.features, metric=args.metric, warmup_steps=min(c.warmup_steps, max(1, args.steps // 8)),
                lr_similarity=c.lr_similarity * scale, lr_features=c.lr_features * scale,
                lr_regressor=c.lr_regressor * scale, val_size=args.val_size, val_seed=args.report_seed,
                fixed_batch=args.fixed_batch, similarity_kwargs=json.loads(args.similarity))
    return LadderTrainer(ct, c, dof=args.dof, augment=args.augment == "on", loss=args.loss, frame=args.frame,
                         curriculum=args.curriculum, encoder=args.encoder, **kw)


def validation(tr, seed, n):
    g = torch.Generator().manual_seed(seed)
    return tr.sample(n, g, augment=False)


def ladder(args):
    tr = make_trainer(args)
    val = validation(tr, args.report_seed, args.val_size)
    t0 = time.perf_counter()
    before = tr.score(val)
    t_val = time.perf_counter() - t0
    hist = []
    t0 = time.perf_counter()
    while tr.step < tr.config.steps:
        hist.append(tr.train_step())
        if tr.step % 50 == 0:
            m = lambda k: sum(h[k] for h in hist[-50:]) / len(hist[-50:])  # noqa: E731
            print(f"  step {tr.step}: loss {m('loss'):.3f} dir {m('direction'):.3f} value {m('value'):.3f} "
                  f"rank {m('rank'):.3f} pose {m('pose'):.3f} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    t_train = time.perf_counter() - t0
    after = tr.score(val)
    last = lambda k: sum(h[k] for h in hist[-50:]) / len(hist[-50:])  # noqa: E731
    first = lambda k: sum(h[k] for h in hist[:50]) / len(hist[:50])  # noqa: E731
    tr_batch = tr.sample(args.batch, torch.Generator().manual_seed(99))
    norms = grad_norms(tr, tr_batch) if args.loss != "regressor" else {}
    print("| " + " | ".join([
        f"{args.dof}", args.augment, str(args.size), args.loss, args.features + ("" if args.encoder == "library" else "+" + args.encoder)
        + ("" if args.similarity == "{}" else " " + args.similarity), args.metric, args.frame,
        f"{args.lr_scale:g}", str(args.curriculum), str(args.batch) + (" fixed" if args.fixed_batch else ""),
        str(args.steps),
        f"{t_train:.0f} ({t_train / args.steps:.2f}/step)",
        f"{first('direction'):.2f} -> {last('direction'):.2f}", f"{first('value'):.3f} -> {last('value'):.3f}",
        f"{before['twist30']:.0%} -> {after['twist30']:.0%}", f"{after['rot30']:.0%}", f"{after['tr30']:.0%}",
        f"{before['active30']:.0%} -> {after['active30']:.0%}", f"{after['median']:.0f}",
        f"{after['twist30_near']:.0%} / {after['twist30_far']:.0%}",
        f"{before['twist30_so4']:.0%} -> {after['twist30_so4']:.0%} / {before['twist30_se3']:.0%} -> {after['twist30_se3']:.0%}",
        f"{before['reg_rot']:.1f}/{before['reg_iso']:.0f} -> {after['reg_rot']:.1f}/{after['reg_iso']:.0f}",
    ]) + " |", flush=True)
    print("  grad norms (one batch, after training): " + ", ".join(f"{k} {v:.3g}" for k, v in norms.items()),
          file=sys.stderr)
    print("  twist<30 against each metric's target: " + ", ".join(
        f"{m} {before['twist30_' + m]:.0%} -> {after['twist30_' + m]:.0%}" for m in METRICS), file=sys.stderr)
    print(f"  validation of {args.val_size} poses: {t_val:.0f} s", file=sys.stderr)


LADDER_HEADER = ("| dof | aug | px | loss | features | metric | frame | lr x | curric. | batch | steps | train s | "
                 "direction loss | value loss | twist<30 | rot<30 | tr<30 | active<30 | median deg | twist<30 near/far | twist<30 vs so4 / se3 target | regressor deg/mm |\n"
                 "|" + "---|" * 22)


# ----------------------------------------------------------------------------- profile


def profile(args):
    tr = make_trainer(args)
    c = tr.config
    T = {}

    def tick(name, t0):
        T[name] = T.get(name, 0.0) + time.perf_counter() - t0
        return time.perf_counter()

    reps = args.repeats
    for rep in range(reps + 1):
        if rep == 1:
            T.clear()
        gen = torch.Generator().manual_seed(rep)
        for m in tr.networks.values():
            m.train()
        t = time.perf_counter()
        batch = tr.sample(c.batch_size, gen)
        t = tick("sample: simulate X-rays + randomise", t)
        target = tr.target(batch["moving"], batch["truth"])
        t = tick("target g* (float64 autograd)", t)
        feats = tr.feature_volume()
        t = tick("feature CNN forward", t)
        xi = torch.zeros(c.batch_size, 6, dtype=torch.float64, requires_grad=True)
        drr = tr.renderer(feats, tr._perturb(xi, batch["moving"]))
        t = tick("render feature DRR (forward)", t)
        zx = tr.similarity.embed_xray(batch["xray"])
        zd = tr.similarity.embed_drr(drr)
        S = 0.5 * tr.similarity.residual(zx, zd).pow(2).sum(-1)
        t = tick("encoder forward (X-ray + DRR)", t)
        (g,) = torch.autograd.grad(S.sum(), xi, create_graph=True)
        t = tick("first backward dS/dxi (create_graph)", t)
        loss = direction_loss(g, target).mean()
        tr.optimizer.zero_grad()
        loss.backward()
        t = tick("double backward (to encoder + feature CNN)", t)
        pose = pose_loss(centred(tr.regressor(batch["xray"]), tr.isocentre, tr.depth),
                         centred(batch["truth"].float().double(), tr.isocentre, tr.depth), length=tr.length)
        pose.backward()
        t = tick("regressor forward + backward", t)
        tr.optimizer.step()
        t = tick("optimizer step", t)
        if rep == reps:
            # the double backward split: feature CNN alone (backward of a scalar of the feature volume)
            feats = tr.feature_volume()
            t = time.perf_counter()
            (feats * torch.randn_like(feats)).sum().backward()
            T["(feature CNN backward alone, inside the double backward)"] = time.perf_counter() - t
    total = sum(v for k, v in T.items() if not k.startswith("("))
    print(f"| part ({args.size} px, batch {args.batch}, {args.features}) | s/step | share |\n|---|---|---|")
    for k, v in T.items():
        per = v / reps if not k.startswith("(") else v
        print(f"| {k} | {per:.3f} | {per / (total / reps):.0%} |")
    print(f"| total | {total / reps:.3f} | 100% |")
    # a full library train_step for comparison
    t = time.perf_counter()
    for _ in range(reps):
        tr.train_step()
    print(f"\nlibrary Trainer.train_step: {(time.perf_counter() - t) / reps:.3f} s/step")
    norms = grad_norms(tr, tr.sample(c.batch_size, torch.Generator().manual_seed(5)))
    print("grad norms at (near) initialisation, one batch: "
          + ", ".join(f"{k} {v:.3g}" for k, v in norms.items()))
    pn = {name: math.sqrt(sum(float(p.pow(2).sum()) for p in net.parameters())) for name, net in tr.networks.items()}
    print("parameter norms: " + ", ".join(f"{k} {v:.3g}" for k, v in pn.items()))


# ----------------------------------------------------------------------------- oracle


def oracle(args):
    """Is g* a direction the image can show? Gradients of hand-made image costs at the same poses."""
    tr = make_trainer(args)
    val = validation(tr, args.report_seed, args.val_size)
    mu = hu_to_mu(tr.hu)[None]
    rows = []
    for metric in METRICS:
        for frame in ("source", "iso"):
            tr.frame = frame
            tr.config = replace(tr.config, metric=metric)
            t = tr.target(val["moving"], val["truth"])
            for cost in ("mse", "ncc"):
                gs = []
                for s in range(0, len(t), 8):
                    sl = slice(s, s + 8)
                    xi = torch.zeros(len(t[sl]), 6, dtype=torch.float64, requires_grad=True)
                    drr = tr.renderer(mu, tr._perturb(xi, val["moving"][sl]))
                    x = val["xray"][sl]
                    S = ((drr - x) ** 2).mean((1, 2, 3)) if cost == "mse" else 1 - ncc(drr, x)
                    (g,) = torch.autograd.grad(S.sum(), xi)
                    gs.append(g)
                g = torch.cat(gs)
                est = val["truth"]
                r = summarise(tr, g, t, est, val)
                # the target with its rotation part replaced by the image-cost's own best guess is not
                # knowable; report the translation part's norm share as the lever-arm indicator
                lever = float((t[:, :3].norm(dim=-1) / tr.length / t[:, 3:].norm(dim=-1)).median())
                rows.append(f"| {cost} | {metric} | {frame} | {r['twist30']:.0%} | {r['rot30']:.0%} | "
                            f"{r['tr30']:.0%} | {r['median']:.0f} | {r['active30']:.0%} | {lever:.2f} |")
    print(f"oracle on {args.val_size} held-out poses (seed {args.report_seed}), dof {args.dof}, {args.size} px:")
    print("| image cost | metric | twist frame | twist<30 | rot<30 | tr<30 | median deg | active<30 | "
          "median |g*_rot|/L / |g*_tr| |\n|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def probe(args):
    """How much does the similarity's embedding see an in-plane shift, against a change of anatomy?"""
    tr = make_trainer(args)
    for m in tr.networks.values():
        m.eval()
    val = validation(tr, args.report_seed, 16)
    x = val["xray"]
    sim = tr.similarity
    rows = []
    with torch.no_grad():
        z = sim.embed_xray(x)
        for shift in (1, 2, 4, 8):
            zs = sim.embed_xray(torch.roll(x, shifts=shift, dims=-1))
            rows.append((f"X-ray rolled {shift} px", float(sim.residual(z, zs).pow(2).mean().sqrt())))
        rows.append(("another ground truth's X-ray", float(sim.residual(z, z.roll(1, 0)).pow(2).mean().sqrt())))
        mu = hu_to_mu(tr.hu)[None]
        xi = torch.zeros(len(x), 6, dtype=torch.float64)
        for mm in (2.0, 5.0, 15.0, 30.0):
            xi[:, 3] = mm
            drr = tr.renderer(mu, perturb_left(xi, val["truth"]))
            rows.append((f"DRR of mu at +{mm:g} mm x (X-ray stem)", float(sim.residual(z, sim.embed_xray(drr)).pow(2).mean().sqrt())))
            rows.append(("  same, image MSE / MSE between truths", float(((drr - x) ** 2).mean() / ((x - x.roll(1, 0)) ** 2).mean())))
    print(f"| change of the X-ray ({args.size} px, network at initialisation) | RMS token distance (rad) |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v:.4f} |")


def gradcheck(args):
    """Is the double-backward gradient of the direction loss right? Central differences along a
    random parameter direction, per network, on one fixed batch (float32 networks, so expect ~1e-2)."""
    tr = make_trainer(args)
    for m in tr.networks.values():
        m.eval()
    batch = tr.sample(args.batch, torch.Generator().manual_seed(3), augment=False)
    print("| network | term | autograd | central difference (eps) | ratio |\n|---|---|---|---|---|")
    for name in ("similarity", "features"):
        ps = [p for p in tr.networks[name].parameters()]
        for term in ("direction", "value"):
            torch.manual_seed(0)
            d = [torch.randn_like(p) for p in ps]
            nd = math.sqrt(sum(float(x.pow(2).sum()) for x in d))
            d = [x / nd for x in d]
            loss = tr.losses(batch)[term]
            gr = torch.autograd.grad(loss, ps, allow_unused=True)
            auto = sum(float((g * x).sum()) for g, x in zip(gr, d) if g is not None)
            for eps in (1e-2, 1e-3):
                with torch.no_grad():
                    for p, x in zip(ps, d):
                        p.add_(eps * x)
                lp = float(tr.losses(batch)[term])
                with torch.no_grad():
                    for p, x in zip(ps, d):
                        p.sub_(2 * eps * x)
                lm = float(tr.losses(batch)[term])
                with torch.no_grad():
                    for p, x in zip(ps, d):
                        p.add_(eps * x)
                fd = (lp - lm) / (2 * eps)
                print(f"| {name} | {term} | {auto:.4g} | {fd:.4g} ({eps:g}) | {fd / auto if auto else float('nan'):.3f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("profile", "oracle", "ladder", "header", "probe", "gradcheck"))
    p.add_argument("--dof", default="6", choices=tuple(DOF))
    p.add_argument("--augment", default="on", choices=("on", "off"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--loss", default="both", choices=("both", "direction", "value", "rank", "regressor", "dirnorm"))
    p.add_argument("--features", default="equivariant", choices=("equivariant", "plain"))
    p.add_argument("--metric", default="so4", choices=METRICS)
    p.add_argument("--frame", default="source", choices=("source", "iso"))
    p.add_argument("--encoder", default="library", choices=("library", "coords", "tied"))
    p.add_argument("--similarity", default="{}", help='SimilarityNet keyword arguments as JSON, e.g. \'{"token_stage": 2, "tokens": 64}\'')
    p.add_argument("--lr-scale", type=float, default=1.0)
    p.add_argument("--curriculum", type=int, default=0, help="steps over which the offset scale grows to full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fixed-batch", action="store_true", help="the same training batch every step (overfit test)")
    p.add_argument("--report-seed", type=int, default=7_000_001)
    p.add_argument("--val-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.command == "header":
        print(LADDER_HEADER)
    else:
        dict(profile=profile, oracle=oracle, ladder=ladder, probe=probe, gradcheck=gradcheck)[args.command](args)


if __name__ == "__main__":
    main()
