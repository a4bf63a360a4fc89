"""File primitives every writer and reader shares: atomic writes, JSON in and out, and the
checks that turn a missing or existing file into a clear :class:`~SphericalRegLib.errors.InputError`."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from torch import Tensor

from ..errors import InputError

__all__ = ["atomic_write", "write_json", "write_csv", "read_json", "refuse_existing", "require_file"]


def require_file(path: Path, what: str) -> None:
    """An :class:`InputError` unless ``path`` exists; ``what`` says what was expected there."""
    if not path.exists():
        raise InputError(path, "file not found", what)


def read_json(path: str | Path, what: str) -> dict:
    """A JSON object from ``path``; a missing file, bad JSON or a non-object is an :class:`InputError`
    that says ``what`` was expected."""
    path = Path(path)
    require_file(path, what)
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"is not valid JSON ({e})", what) from None
    if not isinstance(obj, dict):
        raise InputError(path, "is not a JSON object", what)
    return obj


def refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise InputError(path, "already exists", "a new path, or overwrite=True (--overwrite) to replace it")


def atomic_write(path: str | Path, write) -> None:
    """``write(temporary_path)`` then rename over ``path``: never a half-written file, whatever interrupts.

    The temporary file sits in the same folder (same file system) and gets the permissions any new
    file of the user would get, not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(obj):
    if isinstance(obj, Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: str | Path, obj, overwrite: bool = False) -> Path:
    """Write ``obj`` as indented JSON, atomically; refuses to replace a file unless ``overwrite``."""
    path = Path(path)
    refuse_existing(path, overwrite)
    text = json.dumps(obj, indent=2, default=_jsonable) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def write_csv(path: str | Path, fieldnames: list[str], rows) -> Path:
    """``rows`` (dicts keyed by ``fieldnames``) as a CSV table with a header, atomically; replaces ``path``."""
    path = Path(path)

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fieldnames)
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)
    return path
