"""Register a case folder of the conventions, end to end: read, load, register, write."""

from __future__ import annotations

from pathlib import Path

from ..confidence import load_calibration
from ..errors import InputError
from ..io import read_case
from ..model import load_model
from .options import RegisterOptions
from .outputs import write_outputs
from .records import RegistrationResult
from .registrar import Registrar

__all__ = ["register_case"]


def register_case(folder, model_path, *, out=None, use_init: bool = False, options: RegisterOptions | None = None,
                  views: int | None = None, overwrite: bool = False, progress=None, cancel=None,
                  device="cpu", encoding: str | None = None) -> tuple[RegistrationResult, dict]:
    """Register a case folder of the conventions and write its outputs (to ``out``, default the folder).

    ``views``: how many of the case's views to register jointly, from view 0 (default all).
    ``encoding``: how the X-ray's values relate to line integrals (:data:`~SphericalRegLib.xray.ENCODINGS`
    or "auto"); default what a DICOM's Pixel Intensity Relationship says, else "auto"."""
    case = read_case(folder)
    if use_init and case.init is None:
        raise InputError(Path(folder) / "init.json", "not found", "an init.json when starting from the given pose (--init)")
    if views is not None and not 1 <= views <= len(case.views):
        raise InputError("views", f"is {views} but {folder} holds {len(case.views)} view(s)",
                         f"a number from 1 to {len(case.views)}")
    model = load_model(model_path, case.ct, device)
    registrar = Registrar(model, case.ct, options, load_calibration(model_path))
    reading = {**case.reading, **({"encoding": encoding} if encoding else {})}
    result = registrar.register(case.xray, case.camera, case.init if use_init else None, **reading,
                                other_views=case.views[1:views], progress=progress, cancel=cancel)
    paths = write_outputs(Path(out or folder), result, overwrite=overwrite)
    return result, paths
