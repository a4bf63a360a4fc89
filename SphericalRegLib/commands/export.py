"""``sphericalreg export``: a deployable model (weights only, float16) from a training checkpoint."""

from __future__ import annotations

from ..checkpoint import export_model


def add_arguments(p) -> None:
    p.add_argument("model", help="checkpoint written by 'sphericalreg train'")
    p.add_argument("out", help="the deployable model file to write")
    p.add_argument("--float32", action="store_true", help="keep float32 weights (default: float16, half the size)")
    p.add_argument("--overwrite", action="store_true")


def main(args) -> int:
    out = export_model(args.model, args.out, half=not args.float32, overwrite=args.overwrite)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")
    return 0
