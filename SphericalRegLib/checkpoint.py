"""A trained model on disk: the checkpoint file, its format version and the CT fingerprint.

A checkpoint holds everything registration needs besides the CT: the full
:class:`~SphericalRegLib.training.config.TrainConfig`, the C-arm camera it was trained for, the
state of the three networks (CT features, similarity, regressor) and a fingerprint of the CT, so
that a model is never applied to a CT it was not trained on. Training state (optimiser, scheduler,
step, RNG states, history) rides along so a run resumes exactly; :func:`export_model` drops it for
deployment. Kept apart from training and from the networks so that both sides read and write one
format.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .camera import Camera
from .errors import InputError
from .io import atomic_write
from .volume import Volume

if TYPE_CHECKING:  # SphericalRegLib.training imports this module
    from .training.config import TrainConfig

__all__ = ["FORMAT_VERSION", "ct_fingerprint", "same_ct", "save_checkpoint", "read_checkpoint", "export_model"]

FORMAT_VERSION = 1
"""Bumped whenever the checkpoint layout or the meaning of a stored field changes."""


def ct_fingerprint(ct: Volume) -> dict:
    """Shape, spacing, ijk_to_ras and a hash of the HU data averaged onto 16^3 and rounded."""
    data = ct.data if ct.data.dim() == 3 else ct.data[0]
    low = F.adaptive_avg_pool3d(data.detach().to(torch.float64).cpu()[None, None], (16, 16, 16))
    digest = hashlib.sha256(low.round().to(torch.int64).numpy().tobytes()).hexdigest()
    return dict(
        shape=list(ct.shape),
        spacing=[round(float(s), 6) for s in ct.spacing],
        ijk_to_ras=ct.ijk_to_ras.tolist(),
        hu_sha256=digest,
    )


def same_ct(a: dict, b: dict) -> bool:
    """Whether two :func:`ct_fingerprint` dictionaries are of the same CT: shape, HU hash, and
    ijk_to_ras within 1e-3 (the spacing is implied by both and not compared on its own)."""
    return (
        a["shape"] == b["shape"]
        and a["hu_sha256"] == b["hu_sha256"]
        and torch.allclose(torch.tensor(a["ijk_to_ras"]), torch.tensor(b["ijk_to_ras"]), atol=1e-3)
    )


def save_checkpoint(path, *, config: TrainConfig, camera: Camera, fingerprint: dict, networks: dict,
                    step: int, optimizer=None, scheduler=None, history=None, rng=None,
                    world_size: int = 1, extra: dict | None = None) -> None:
    """Write the checkpoint atomically (temporary file in the same folder, then ``os.replace``).

    ``networks``: ``{"features": module, "similarity": module, "regressor": module}``.
    """
    path = Path(path)
    state = dict(
        format="sphericalreg-model",
        format_version=FORMAT_VERSION,
        config=config.to_dict(),
        camera=camera.to_json(),
        ct=fingerprint,
        networks={name: module.state_dict() for name, module in networks.items()},
        optimizer=optimizer.state_dict() if optimizer is not None else None,
        scheduler=scheduler.state_dict() if scheduler is not None else None,
        step=int(step),
        history=history or {},
        rng=rng or {},
        world_size=int(world_size),
        **(extra or {}),
    )
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read_checkpoint(path, ct: Volume | None = None, map_location="cpu") -> dict:
    """The checkpoint dictionary, checked: a real checkpoint, of this format version, and (given
    ``ct``) trained on that CT. Every failure is an :class:`InputError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "model file not found", "a .pt file written by 'sphericalreg train'")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for a damaged zip/pickle
        raise InputError(path, f"is not a readable model checkpoint, truncated or corrupted "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                         "a .pt file written by 'sphericalreg train'") from None
    if not isinstance(state, dict) or state.get("format") != "sphericalreg-model":
        raise InputError(path, "is a torch file but not a SphericalReg model",
                         "a .pt file written by 'sphericalreg train'")
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        age = "an older" if isinstance(version, int) and version < FORMAT_VERSION else "a newer"
        raise InputError(path, f"was written in {age} model format (version {version})",
                         f"format version {FORMAT_VERSION}: retrain with this sphericalreg "
                         "or use the version that wrote it")
    if ct is not None:
        mine = ct_fingerprint(ct)
        theirs = state["ct"]
        if not same_ct(mine, theirs):
            raise InputError(
                path,
                f"was trained on another CT ({_describe(theirs)}), not this one ({_describe(mine)})",
                "the CT the model was trained on: models are patient-specific, train one with 'sphericalreg train'",
            )
    return state


def _describe(fp: dict) -> str:
    shape = "x".join(str(s) for s in fp["shape"])
    spacing = " x ".join(f"{s:g}" for s in fp["spacing"])
    return f"{shape} voxels of {spacing} mm, HU hash {fp['hu_sha256'][:8]}"


def export_model(source, target, *, half: bool = True, overwrite: bool = False) -> Path:
    """A deployable copy of a training checkpoint: networks, configuration, camera, CT fingerprint
    and curves, without optimiser, scheduler and RNG state; floating weights in float16 unless
    ``half`` is False (loading casts them back to float32). Returns ``target``."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise InputError(target, "already exists", "a new path, or overwrite=True (--overwrite)")
    state = read_checkpoint(source)
    cast = (lambda t: t.half() if t.is_floating_point() else t) if half else (lambda t: t)
    state["networks"] = {name: {k: cast(v) for k, v in sd.items()} for name, sd in state["networks"].items()}
    for key in ("optimizer", "scheduler", "rng"):
        state[key] = None
    state["exported_from"] = {"path": str(source), "half": half}
    atomic_write(target, lambda tmp: torch.save(state, tmp))
    return target
