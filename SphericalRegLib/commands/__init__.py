"""The ``sphericalreg`` subcommands, one module each: arguments, ``main(args) -> int``, the mapping
of flags to the library's fields, and the device choice. Library modules never see argparse.

Library errors name fields (``optimizer``); :func:`flags_for_fields` turns them into the flags a
command-line user typed (``--optimizer``).
"""

from __future__ import annotations

from contextlib import contextmanager

from ..errors import InputError

COMMANDS = {
    "demo": ("SphericalRegLib.commands.demo", "simulate a case of the example CT, register it, print mTRE"),
    "simulate": ("SphericalRegLib.commands.simulate", "write simulated X-ray cases of a CT with ground truth"),
    "train": ("SphericalRegLib.commands.train", "train a patient-specific model (regressor + similarity) from a CT"),
    "register": ("SphericalRegLib.commands.register", "register the X-ray of a case folder to its CT"),
    "evaluate": ("SphericalRegLib.commands.evaluate", "run several methods on simulated cases and tabulate"),
    "landscape": ("SphericalRegLib.commands.landscape", "plot the learnt cost and NCC along each pose axis through a case's truth"),
    "export": ("SphericalRegLib.commands.export", "write a deployable model (weights only, float16) from a checkpoint"),
}


@contextmanager
def flags_for_fields(fields: dict[str, str]):
    """Re-raise an :class:`InputError` whose source is one of ``fields`` (library field names) as
    one about the flag the user typed, ``fields[source]``."""
    try:
        yield
    except InputError as e:
        if e.source not in fields:
            raise
        raise e.renamed(fields[e.source]) from None


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's CPU threads for this process."""
    if threads:
        import torch

        torch.set_num_threads(threads)
