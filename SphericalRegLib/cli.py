"""sphericalreg: 2D/3D X-ray to CT registration by spherical similarity learning.

Each subcommand is a module of :mod:`SphericalRegLib.commands` exposing ``add_arguments(parser)``
and ``main(args) -> int``; the library itself never sees argparse.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Spinning OpenMP workers cost far more than they save on the small, shared CPUs this often runs
# on; must be set before torch is first imported. An explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .commands import COMMANDS
from .errors import InputError



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sphericalreg", description=__doc__.splitlines()[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"sphericalreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            p.set_defaults(_missing=True)
    return parser


def main(argv=None) -> int:
    import warnings

    # e3nn scripts its kernels with torch.jit; the deprecation is not the user's to act on
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_missing", False):
        parser.error(f"'{args.command}' is not available in this build")
    try:
        return int(importlib.import_module(args._module).main(args) or 0)
    except InputError as e:
        print(f"sphericalreg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sphericalreg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
