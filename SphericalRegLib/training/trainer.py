"""One rank's training loop: pose sampling, the losses, validation, gradient averaging and checkpoints.

The trainer ties the objective (:mod:`SphericalRegLib.training.objective`) to the CT prepared at
the working resolution (:mod:`SphericalRegLib.preparation`), the networks
(:func:`SphericalRegLib.model.build_networks`) and the checkpoint file
(:mod:`SphericalRegLib.checkpoint`); :func:`run` drives it to the configured number of steps.

Distributed: under ``torchrun`` each rank samples its own poses and the gradients are averaged
with ``torch.distributed.all_reduce`` after each backward. DistributedDataParallel is not used:
its reducer hooks expect one plain backward per forward and do not support the
``autograd.grad(create_graph=True)`` pass in between.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..camera import ISOCENTRE_FRACTION, Camera, canonical_ap_pose
from ..checkpoint import ct_fingerprint, read_checkpoint, save_checkpoint
from ..errors import InputError
from ..geometry import perturb_left, rotation_angle
from ..model import build_networks
from ..poses import camera_frame_offset, sample_offsets
from ..preparation import check_anatomy_in_view, pose_length, training_camera, working_volume
from ..quality import describe_quality, model_quality
from ..render import Renderer
from ..volume import Volume, hu_to_mu
from .config import NETWORK_FIELDS, TrainConfig
from .objective import METRICS, centred, direction_loss, pose_distance, target_gradient, twist_angles
from .plots import curves_path, plot_history

__all__ = ["Trainer", "run"]


SIMILARITY_MEASURES = ("grad_within30", "rot_within30", "tr_within30", "grad_angle_median_deg",
                       *(f"grad_within30_{m}" for m in METRICS))
"""What :meth:`Trainer.validate` reports of the similarity (NaN before it has been trained at all)."""


def _step_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(rank), int(step)]).generate_state(1)[0])


class Trainer:
    """One rank's training state: the CT at the working resolution, the networks, the optimiser.

    ct: the CT in HU; config: the run; camera: the training camera (default from the CT);
    rank, world_size: this process in a torch.distributed group (1 alone).
    """

    def __init__(self, ct: Volume, config: TrainConfig, camera: Camera | None = None, device="cpu",
                 rank: int = 0, world_size: int = 1, source="CT"):
        self.config = config
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.camera = camera or training_camera(ct, config)
        self.fingerprint = ct_fingerprint(ct)
        self.volume = working_volume(ct, config, self.camera, source)
        self.hu = self.volume.data.to(self.device)
        self.spacing = self.volume.spacing
        self.isocentre = ct.centre
        self.depth = ISOCENTRE_FRACTION * self.camera.sdd
        self.length = pose_length(ct)
        self.reference = canonical_ap_pose(self.isocentre, self.camera.sdd)
        self.renderer = Renderer(self.camera, self.volume.ijk_to_ras, self.volume.shape,
                                 config.n_samples).to(self.device)
        self.anatomy_share = check_anatomy_in_view(self.hu, self.renderer, self.reference, source)

        torch.manual_seed(config.seed)
        self.features, self.similarity, self.regressor = (m.to(self.device) for m in build_networks(
            config, self.reference, self.isocentre, self.length))
        self.networks = dict(features=self.features, similarity=self.similarity, regressor=self.regressor)
        rates = dict(features=config.lr_features, similarity=config.lr_similarity, regressor=config.lr_regressor)
        for name, module in self.networks.items():
            module.requires_grad_(name in config.trained)
        groups = [dict(params=list(self.networks[name].parameters()), lr=rates[name], name=name)
                  for name in self.networks if name in config.trained]
        groups = [g for g in groups if g["params"]]
        self.optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
        lead = self.regressor_only_steps

        def schedule(start):  # warm-up, then cosine to a tenth, over the steps from ``start`` on
            warmup, total = max(1, config.warmup_steps), max(1, config.steps - start)

            def factor(step):
                step -= start
                if step < 0:
                    return 0.0
                if step < warmup:
                    return (step + 1) / warmup
                return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
            return factor

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [schedule(0 if g["name"] == "regressor" else lead) for g in groups])
        self.step = 0
        self.history: dict[str, list] = {}
        if world_size > 1:
            self._broadcast_parameters()
        self._validation = None

    # -- data

    def sample(self, n: int, generator: torch.Generator, augment: bool = True,
               physics: bool = True) -> dict[str, Tensor]:
        """Ground truths, moving poses ``(n, 4, 4)`` float64, X-rays ``(n, 1, rows, cols)`` and the
        masks of their exposed fields (same shape, bool), zero outside it as registration reads them.
        ``physics`` False leaves out the physics family (``physics_p``) whatever the configuration."""
        from ..augment import cut_field, random_bone_scale, randomise_physics, randomise_xray

        c = self.config
        truth = sample_offsets(n, c.truth_rot_deg, c.truth_trans_mm, self.depth, generator) @ self.reference
        lo, hi = c.moving_scale
        scale = lo + (hi - lo) * torch.rand(n, 1, generator=generator, dtype=torch.float64)
        rot = torch.deg2rad(torch.tensor(c.moving_rot_deg, dtype=torch.float64))
        angles = torch.randn(n, 3, generator=generator, dtype=torch.float64) * rot * scale
        trans = torch.randn(n, 3, generator=generator, dtype=torch.float64) * torch.tensor(c.moving_trans_mm,
                                                                                           dtype=torch.float64) * scale
        moving = camera_frame_offset(angles, trans, self.depth) @ truth
        bone = random_bone_scale(n, generator, *c.bone_scale) if augment else torch.ones(n, dtype=torch.float64)
        xray = self.simulate(truth, bone)
        field = torch.ones_like(xray, dtype=torch.bool)
        if augment and physics and c.physics_p > 0:
            xray, field = randomise_physics(xray, generator, p=c.physics_p, pixel_mm=min(self.camera.pixel_spacing),
                                            return_field=True)
        if augment:
            xray = randomise_xray(xray, generator, p=c.augment_p)
        if augment and c.field_cut_p > 0:
            xray, cut = cut_field(xray, generator, p=c.field_cut_p, min_side=c.field_min_side,
                                 side_power=c.field_side_power)
            field = field & cut
        xray = torch.where(field, xray, torch.zeros_like(xray))  # the reader's zeros come last
        return dict(truth=truth.to(self.device), moving=moving.to(self.device), xray=xray, field=field)

    @torch.no_grad()
    def simulate(self, truth: Tensor, bone_scale: Tensor) -> Tensor:
        """Line integrals of the attenuation at ``truth`` ``(B, 4, 4)``, one bone scale each: ``(B, 1, rows, cols)``."""
        mu = hu_to_mu(self.hu, bone_scale.to(self.device, torch.float32).reshape(-1, 1, 1, 1, 1))
        mu = mu.expand(truth.shape[0], 1, *self.hu.shape) if mu.dim() == 3 else mu
        return self.renderer(mu, truth.to(self.device))

    # -- objective

    def feature_volume(self) -> Tensor:
        """``(C, I, J, K)`` features of the CT at bone scale 1, in the autograd graph of the feature net."""
        return self.features(hu_to_mu(self.hu)[None], self.spacing)

    def similarity_gradient(self, feats: Tensor, xray: Tensor, moving: Tensor, create_graph: bool,
                            field: Tensor | None = None):
        """``S`` ``(B,)`` and ``g = dS/dxi`` ``(B, 6)`` at ``exp(xi) moving``, xi = 0; the DRR is cut
        to the X-ray's ``field`` ``(B, 1, rows, cols)`` (default: all of it), as registration cuts it."""
        xi = torch.zeros(moving.shape[0], 6, dtype=torch.float64, device=self.device, requires_grad=True)
        drr = self.renderer(feats, perturb_left(xi, moving))
        if field is not None:
            drr = drr * field.to(drr)
        residual = self.similarity.residual(self.similarity.embed_xray(xray), self.similarity.embed_drr(drr))
        S = 0.5 * residual.pow(2).sum(-1)
        (g,) = torch.autograd.grad(S.sum(), xi, create_graph=create_graph)
        return S, g

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The training losses of one batch (each a scalar tensor)."""
        from ..regressor import pose_loss

        c = self.config
        if self.trains_similarity:
            target = target_gradient(batch["moving"], batch["truth"], c.metric, self.length, self.isocentre,
                                     self.depth)
            feats = self.feature_volume()
            S, g = self.similarity_gradient(feats, batch["xray"], batch["moving"], create_graph=True,
                                            field=batch["field"])
            direction = direction_loss(g, target, weighted=c.weighted_direction).mean()
            distance = pose_distance(batch["moving"], batch["truth"], c.metric, self.length, self.isocentre,
                                     self.depth)
            rms = (2 * S / self.similarity.tokens).clamp_min(1e-12).sqrt()  # RMS token distance
            value = F.smooth_l1_loss(rms, (distance / c.value_scale_mm).to(rms.dtype))
            anchor = self.anchor_loss(feats, batch) if c.anchor_weight > 0 else torch.zeros_like(value)
        else:  # the regressor alone: no feature DRR, no double backward
            S = direction = value = anchor = torch.zeros((), dtype=torch.float64, device=self.device)
        xray, truth = batch["xray"], batch["truth"]
        if "regressor_xray" in batch:
            xray, truth = torch.cat([xray, batch["regressor_xray"]]), torch.cat([truth, batch["regressor_truth"]])
        predicted = self.regressor(xray)
        # about the CT centre, like the similarity's targets: the scanner's RAS origin must not matter
        pose = pose_loss(centred(predicted, self.isocentre, self.depth),
                         centred(truth.to(predicted.dtype), self.isocentre, self.depth),
                         **self._pose_loss_kwargs()).mean()
        total = direction + c.value_weight * value + c.anchor_weight * anchor + c.regressor_weight * pose
        return dict(loss=total, direction=direction, value=value, anchor=anchor, pose=pose,
                    similarity=S.mean().detach())

    def anchor_loss(self, feats: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """The value term at the true pose itself (distance 0): the RMS token distance between each
        X-ray and the feature DRR at its truth, pulled to 0, so that the minimum is trained and not
        only the slopes. Measured without gain (docs/learnability.md, sections 11-12): the minimum's
        offset it was meant for came from registration's input, not from the training."""
        drr = self.renderer(feats, batch["truth"]) * batch["field"].to(feats.dtype)
        residual = self.similarity.residual(self.similarity.embed_xray(batch["xray"]), self.similarity.embed_drr(drr))
        rms = residual.pow(2).mean(-1).clamp_min(1e-12).sqrt()
        return F.smooth_l1_loss(rms, torch.zeros_like(rms))

    @property
    def _trains_similarity_at_all(self) -> bool:
        return bool({"features", "similarity"} & set(self.config.trained))

    @property
    def regressor_only_steps(self) -> int:
        """The steps at the start that train the regressor alone (``config.regressor_only_share``)."""
        c = self.config
        if "regressor" not in c.trained or not self._trains_similarity_at_all:
            return 0
        return int(round(c.regressor_only_share * c.steps))

    @property
    def similarity_starts_untrained(self) -> bool:
        """Whether the features and the similarity start from random weights (not from ``--init``'s model)."""
        c = self.config
        return c.initialised_from is None or bool({"features", "similarity"} & set(c.afresh))

    @property
    def trains_similarity(self) -> bool:
        """Whether this step trains the features and the similarity: not in the regressor's lead."""
        return self._trains_similarity_at_all and self.step >= self.regressor_only_steps

    def _pose_loss_kwargs(self) -> dict:
        return dict(length=self.length)

    def train_step(self) -> dict[str, float]:
        """One optimisation step on a freshly sampled batch (the same batch each time with ``fixed_batch``)."""
        c = self.config
        seed = _step_seed(c.seed, self.rank, 0 if c.fixed_batch else self.step)
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        for name, m in self.networks.items():
            m.train(name in c.trained)  # a network kept fixed keeps its normalisation statistics too
        joint = self.trains_similarity  # else the regressor alone, on all its X-rays at once
        batch = self.sample(c.batch_size if joint else max(c.batch_size, c.regressor_batch), generator,
                            physics=c.physics_similarity or not joint)
        if joint and c.regressor_batch > c.batch_size and "regressor" in c.trained:
            more = self.sample(c.regressor_batch - c.batch_size, generator)
            batch.update(regressor_xray=more["xray"], regressor_truth=more["truth"])
        losses = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=False)
        losses["loss"].backward()
        if self.world_size > 1:
            self._all_reduce_gradients()
        # per network: the double-backward gradient of the similarity must not shrink the regressor's
        grad_norm = max(float(torch.nn.utils.clip_grad_norm_(group["params"], c.clip_grad))
                        for group in self.optimizer.param_groups)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["grad_norm"] = float(grad_norm)
        out["lr"] = max(self.scheduler.get_last_lr())
        return out

    # -- validation

    def validation_set(self) -> dict[str, Tensor]:
        """The held-out poses and clean X-rays (bone scale 1, no augmentation), from ``val_seed`` only."""
        if self._validation is None:
            generator = torch.Generator().manual_seed(self.config.val_seed)
            self._validation = self.sample(self.config.val_size, generator, augment=False)
        return self._validation

    def validate(self) -> dict[str, float]:
        """Regressor errors (and, for scale, those of always answering the canonical view: the pose
        prior) and the share of similarity gradients pointing within 30 degrees of g*: NaN while the
        regressor trains alone and the similarity has never been trained (it starts from random weights)."""
        c, val = self.config, self.validation_set()
        for m in self.networks.values():
            m.eval()
        angles = dict(twist=[], rot=[], tr=[], **{f"twist_{m}": [] for m in METRICS})
        errors = dict(geodesic=[], rot=[], iso=[], prior=[])
        untrained = self.step < self.regressor_only_steps and self.similarity_starts_untrained
        with torch.no_grad():
            feats = None if untrained else self.feature_volume()
        for start in range(0, c.val_size, c.batch_size):
            sl = slice(start, start + c.batch_size)
            xray, truth, moving = val["xray"][sl], val["truth"][sl], val["moving"][sl]
            if not untrained:
                _, g = self.similarity_gradient(feats, xray, moving, create_graph=False)
                for metric in METRICS:  # all, so that models trained on any compare
                    target = target_gradient(moving, truth, metric, self.length, self.isocentre, self.depth)
                    parts = twist_angles(g.detach(), target, self.length)
                    angles[f"twist_{metric}"].append(parts["twist"])
                    if metric == c.metric:
                        for k, v in parts.items():
                            angles[k].append(v)
            with torch.no_grad():
                est = self.regressor(xray).double()
            errors["geodesic"].append(pose_distance(est, truth, "se3", self.length, self.isocentre, self.depth))
            errors["prior"].append(pose_distance(self.reference.to(truth).expand_as(truth), truth, "se3", self.length,
                                                 self.isocentre, self.depth))
            rot, iso = self._regressor_errors(est, truth)
            errors["rot"].append(rot)
            errors["iso"].append(iso)
        e = {k: torch.cat(v) for k, v in errors.items()}
        similarity = dict.fromkeys(SIMILARITY_MEASURES, math.nan)
        if not untrained:
            a = {k: torch.cat(v) for k, v in angles.items()}
            similarity.update(grad_angle_median_deg=float(a["twist"].median()), **{
                name: float((a[angle] < 30).double().mean()) for name, angle in (
                    ("grad_within30", "twist"), ("rot_within30", "rot"), ("tr_within30", "tr"),
                    *((f"grad_within30_{m}", f"twist_{m}") for m in METRICS))})
        physics = self._validate_regressor_under_physics() if c.physics_p > 0 else {}
        if c.field_cut_p > 0 and c.field_min_side < 1:
            physics.update(self._validate_regressor_on_small_detector())
        return dict(**physics,
            reg_geodesic_mm=float(e["geodesic"].mean()), prior_geodesic_mm=float(e["prior"].mean()),
            reg_rot_deg=float(e["rot"].mean()),
            reg_iso_mm=float(e["iso"].mean()),
            **similarity,
        )

    @torch.no_grad()
    def _validate_regressor_on(self, name: str, image) -> dict[str, float]:
        """The regressor's mean rotation (deg) and isocentre (mm) errors on the validation poses
        imaged as ``image(clean X-rays (B, 1, H, W)) -> X-rays``, kept as ``name`` for later validations."""
        c, val = self.config, self.validation_set()
        if name not in val:
            val[name] = image(val["xray"].cpu()).to(self.device)
        rot, iso = [], []
        for start in range(0, c.val_size, c.batch_size):
            sl = slice(start, start + c.batch_size)
            r, i = self._regressor_errors(self.regressor(val[name][sl]).double(), val["truth"][sl])
            rot.append(r)
            iso.append(i)
        return {f"reg_rot_deg_{name}": float(torch.cat(rot).mean()), f"reg_iso_mm_{name}": float(torch.cat(iso).mean())}

    def _validate_regressor_under_physics(self) -> dict[str, float]:
        """Through the physics family (every effect at ``physics_p``, one fixed draw from
        ``val_seed``): what a start costs on other X-ray systems."""
        from ..augment import randomise_physics

        c = self.config
        return self._validate_regressor_on("physics", lambda x: randomise_physics(
            x, torch.Generator().manual_seed(c.val_seed + 1), p=c.physics_p, pixel_mm=min(self.camera.pixel_spacing)))

    def _validate_regressor_on_small_detector(self) -> dict[str, float]:
        """On a centred detector of the smallest side training drew (``field_min_side``): what a
        start costs from a C-arm whose detector is that much smaller than the training camera's."""
        side = self.config.field_min_side

        def crop(x: Tensor) -> Tensor:
            H, W = x.shape[-2:]
            rows = ((torch.arange(H) + 0.5) / H - 0.5).abs() <= side / 2
            cols = ((torch.arange(W) + 0.5) / W - 0.5).abs() <= side / 2
            return x * (rows[:, None] & cols[None, :]).to(x)

        return self._validate_regressor_on("small_detector", crop)

    def _regressor_errors(self, est: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
        """Rotation error (deg) and isocentre error (mm) ``(B,)`` each of poses ``est`` against ``truth`` ``(B, 4, 4)``."""
        rot = torch.rad2deg(rotation_angle(est[:, :3, :3], truth[:, :3, :3]))
        iso = (centred(est, self.isocentre, self.depth)[:, :3, 3]
               - centred(truth, self.isocentre, self.depth)[:, :3, 3]).norm(dim=-1)
        return rot, iso

    # -- distributed

    def _parameters(self):
        return [p for m in self.networks.values() for p in m.parameters()]

    def _broadcast_parameters(self):
        import torch.distributed as dist

        for p in self._parameters():
            dist.broadcast(p.data, src=0)

    def _all_reduce_gradients(self):
        import torch.distributed as dist

        params = self._parameters()
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p))
            offset += n

    # -- checkpoints

    def record(self, entries: dict[str, float], prefix: str = "") -> None:
        self.history.setdefault(prefix + "step", []).append(self.step)
        for k, v in entries.items():
            self.history.setdefault(prefix + k, []).append(v)

    def rng_state(self) -> dict:
        state = dict(torch=torch.get_rng_state(), step_seed=[self.config.seed, self.rank, self.step])
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def save(self, path) -> None:
        save_checkpoint(path, config=self.config, camera=self.camera, fingerprint=self.fingerprint,
                        networks=self.networks, step=self.step, optimizer=self.optimizer,
                        scheduler=self.scheduler, history=self.history, rng=self.rng_state(),
                        world_size=self.world_size, extra={"quality": model_quality(self.history)})

    @classmethod
    def of_model(cls, path, ct: Volume, **overrides) -> "Trainer":
        """A trainer holding the trained networks of the model at ``path`` (of ``ct``), at the step it
        was saved at (so that validation knows a regressor's lead), its configuration with ``overrides``
        (e.g. ``val_size``, ``val_seed``): a trained model's validation and probes."""
        state = read_checkpoint(path, ct)
        trainer = cls(ct, replace(TrainConfig.from_dict(state["config"], path), **overrides),
                      Camera.from_json(state["camera"], path))
        trainer.start_from(state)
        trainer.step = int(state["step"])
        return trainer

    def start_from(self, state: dict) -> None:
        """Start from the trained networks of another model (any CT: xvr's generic-then-patient
        recipe), keeping what is bound to this CT: the regressor's reference pose and pivot.

        A network this run trains whose architecture fields (:data:`NETWORK_FIELDS`) differ from
        the starting model's starts afresh, as do those in ``config.afresh``; one it does not train
        must match."""
        theirs = state.get("config", {})
        for name, module in self.networks.items():
            if name in self.config.afresh:
                print(f"note: the {name} network starts afresh (\"afresh\" in the configuration)", file=sys.stderr)
                continue
            changed = [f for f in NETWORK_FIELDS[name] if f in theirs and theirs[f] != getattr(self.config, f)]
            if changed:
                if name not in self.config.trained:
                    raise InputError("--init", f"its {name} network has other {', '.join(changed)} than this "
                                     "configuration, and this run does not train it",
                                     f"the starting model's {', '.join(changed)}, or {name} in \"trained\"")
                print(f"note: the {name} network starts afresh ({', '.join(changed)} differ from the starting "
                      "model's)", file=sys.stderr)
                continue
            weights = dict(state["networks"][name])  # load_state_dict casts a half-precision export
            if name == "regressor":
                own = module.state_dict()
                weights.update(reference_pose=own["reference_pose"], pivot=own["pivot"])
            try:
                module.load_state_dict(weights)
            except RuntimeError as e:
                raise InputError("--init", f"its {name} network does not fit this configuration "
                                 f"({str(e).splitlines()[0]})",
                                 "a model of the same architecture (features, image size, kwargs)") from None

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint dictionary (from :func:`SphericalRegLib.checkpoint.read_checkpoint`)."""
        for name, module in self.networks.items():
            module.load_state_dict(state["networks"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.history = state.get("history", {})
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())  # map_location may have moved it


@contextmanager
def _stops_as_interrupts():
    """SIGTERM (a scheduler's or ``kill``'s stop) raises KeyboardInterrupt like Ctrl-C, and SIGINT does
    even for a run started in the background of a script, which inherits SIGINT ignored; so either
    saves the finished steps. Only the main thread can set handlers: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(trainer: Trainer, out: Path, main_process: bool = True) -> None:
    """Train ``trainer`` to ``config.steps``, validating, plotting and checkpointing to ``out``.

    Ctrl-C, SIGINT or SIGTERM saves a checkpoint of the last finished step before the interrupt goes on.
    """
    with _stops_as_interrupts():
        _run(trainer, out, main_process)


def _run(trainer: Trainer, out: Path, main_process: bool) -> None:
    from tqdm import tqdm

    c = trainer.config
    if main_process:
        regressor = f" (the regressor {c.regressor_batch})" if c.regressor_batch > c.batch_size else ""
        if trainer.regressor_only_steps:
            regressor += f", the first {trainer.regressor_only_steps} steps the regressor alone"
        if c.physics_p > 0:
            regressor += (f", X-ray physics family at {c.physics_p:g}"
                          + ("" if c.physics_similarity else " on the regressor's own X-rays"))
        print(f"training {c.preset}: {c.steps} steps, batch {c.batch_size}{regressor} x {trainer.world_size} "
              f"process(es), "
              f"CT at {tuple(trainer.volume.shape)} voxels of {float(trainer.volume.spacing.max()):.2f} mm, "
              f"{trainer.camera.rows}x{trainer.camera.cols} images, features {c.features}, space {c.space}, "
              f"metric {c.metric} (length {trainer.length:.0f} mm), device {trainer.device}", file=sys.stderr)
    bar = tqdm(total=c.steps, initial=trainer.step, disable=not main_process, dynamic_ncols=True,
               desc="train", mininterval=1.0)
    saved_at = trainer.step
    try:
        while trainer.step < c.steps:
            t0 = time.perf_counter()
            entries = trainer.train_step()
            entries["seconds"] = time.perf_counter() - t0
            trainer.record(entries)
            bar.update(1)
            bar.set_postfix(loss=f"{entries['loss']:.3f}", dir=f"{entries['direction']:.3f}",
                            pose=f"{entries['pose']:.3f}", refresh=False)
            last = trainer.step == c.steps
            if trainer.step % c.val_every == 0 or last:
                val = trainer.validate()
                trainer.record(val, prefix="val_")
                if main_process:
                    bar.write(f"step {trainer.step}: regressor {val['reg_geodesic_mm']:.1f} mm geodesic, "
                              f"{val['reg_rot_deg']:.2f} deg, isocentre {val['reg_iso_mm']:.1f} mm; "
                              + (f"similarity not trained yet (the regressor trains alone to step "
                                 f"{trainer.regressor_only_steps})" if math.isnan(val["grad_within30"]) else
                                 f"similarity gradients within 30 deg: {val['grad_within30']:.0%} "
                                 f"(rotation {val['rot_within30']:.0%}, translation {val['tr_within30']:.0%})")
                              + (f"; regressor under the physics family {val['reg_rot_deg_physics']:.2f} deg, "
                                 f"isocentre {val['reg_iso_mm_physics']:.1f} mm" if "reg_iso_mm_physics" in val else "")
                              + (f"; on a detector {c.field_min_side:.0%} of the training side "
                                 f"{val['reg_rot_deg_small_detector']:.2f} deg, isocentre "
                                 f"{val['reg_iso_mm_small_detector']:.1f} mm" if "reg_iso_mm_small_detector" in val else ""))
            if main_process and (trainer.step % c.checkpoint_every == 0 or last):
                trainer.save(out)
                plot_history(trainer.history, curves_path(out))
                saved_at = trainer.step
        if main_process:
            for line in describe_quality(model_quality(trainer.history)):
                bar.write(line)
    except KeyboardInterrupt:
        if main_process and trainer.step > saved_at:
            trainer.save(out)
            plot_history(trainer.history, curves_path(out))
            bar.write(f"interrupted: saved step {trainer.step} to {out}; continue with --resume")
        raise
    finally:
        bar.close()
