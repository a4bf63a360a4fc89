"""Which torch device a job runs on: one rule for every command and for the Slicer panel."""

from __future__ import annotations

import torch

from .errors import InputError

__all__ = ["resolve_device"]


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """The torch device called ``name`` (field ``device``): cuda when available unless named;
    ``cuda`` means this rank's GPU under torchrun."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("device", f"is {name} but no CUDA device is available", "cpu")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name != "cpu":
        raise InputError("device", f"is {name!r}", "cpu or cuda")
    return torch.device("cpu")
