"""Long work off the GUI thread: the commands the panel launches, a background process that runs
them one after the other with their output queued for the panel, and the job record that keeps
the nodes chosen when the job started and the temporary folder it must delete.

The registration is two steps, both ``PythonSlicer`` subprocesses (the GUI process never loads a
model nor renders a DRR):

1. ``python -m SphericalRegLib.cli register CASE --model M --out OUT`` (result.json,
   transform.json, world_from_camera.tfm, overlay.png); its exit status 3 (diverged: outputs
   written, the pose flagged) goes on to the DRR so the user can see why;
2. ``python drr_worker.py CASE OUT/result.json OUT/drr.npy``: the CT's DRR at the found pose on
   the X-ray's full grid, rendered in row blocks so memory stays bounded at any detector size;
   for a case with further views (``view_k/``) also each view's, to ``OUT/drr_view_k.npy``.

The panel then makes each DRR node from those files.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

DRR_WORKER = Path(__file__).resolve().with_name("drr_worker.py")
LOG_LINES = 2000
"""How many output lines a job keeps for the panel's log."""


def python_executable() -> str:
    """Slicer's PythonSlicer launcher when it exists, otherwise this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def library_root() -> str:
    """The folder that holds the SphericalRegLib package (found without importing it)."""
    spec = importlib.util.find_spec("SphericalRegLib")
    if spec is None or not spec.submodule_search_locations:
        from .nodes import input_error

        raise input_error("SphericalRegLib", "is not installed next to the module", "the extension's SphericalRegLib")
    return str(Path(list(spec.submodule_search_locations)[0]).parent)


def _command(subcommand: str, args: list, python: Optional[str]) -> List[str]:
    return [python or python_executable(), "-m", "SphericalRegLib.cli", subcommand, *map(str, args)]


def register_command(case_dir, model_path, out_dir, use_init: bool = False, python: Optional[str] = None,
                     device: Optional[str] = None, extra_args=()) -> List[str]:
    """``PythonSlicer -m SphericalRegLib.cli register CASE --model MODEL --out OUT [--init] [--device D]``."""
    args = [case_dir, "--model", model_path, "--out", out_dir, *(["--init"] if use_init else []),
            *(["--device", device] if device else []), *extra_args]
    return _command("register", args, python)


def drr_command(case_dir, result_path, drr_path, python: Optional[str] = None,
                device: Optional[str] = None) -> List[str]:
    """``PythonSlicer drr_worker.py CASE RESULT DRR [--device D]``: the DRR at the result, as .npy."""
    return [python or python_executable(), str(DRR_WORKER), str(case_dir), str(result_path), str(drr_path),
            *(["--device", device] if device else [])]


def train_command(ct_path, model_path, python: Optional[str] = None, device: Optional[str] = None,
                  extra_args=()) -> List[str]:
    """``PythonSlicer -m SphericalRegLib.cli train --ct CT --out MODEL [--device D] ...``."""
    return _command("train", ["--ct", ct_path, "--out", model_path, *(["--device", device] if device else []),
                              *extra_args], python)


@dataclass(frozen=True)
class Progress:
    fraction: Optional[float]
    message: str


_STAGE = re.compile(r"^PROGRESS\s+(\S+)\s+(\d+(?:\.\d+)?)\s*$")
_TQDM = re.compile(r"(\d+)\s*/\s*(\d+)\s*\[")
_COUNT = re.compile(r"\b(?:iteration|iter|step|epoch)s?\s*[:=]?\s*(\d+)\s*/\s*(\d+)", re.IGNORECASE)


def parse_progress(line: str) -> Optional[Progress]:
    """Progress of one output line: ``PROGRESS <stage> <fraction>`` (register, drr), a tqdm bar
    ``... 30/200 [...`` (train) or ``step 3/50``. None for a blank line; a line without a count
    gives fraction None and is shown as a message."""
    text = line.strip()
    if not text:
        return None
    m = _STAGE.match(text)
    if m:
        return Progress(min(1.0, float(m.group(2))), m.group(1))
    for pattern in (_TQDM, _COUNT):
        m = pattern.search(text)
        if m and int(m.group(2)) > 0:
            return Progress(min(1.0, int(m.group(1)) / int(m.group(2))), text)
    return Progress(None, text)


def subprocess_environment(env: Optional[dict] = None, threads: Optional[int] = None) -> dict:
    """The environment of the subprocess: SphericalRegLib importable, unbuffered output."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (library_root(), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


class BackgroundProcess:
    """Commands run one after the other off the GUI thread: each one's output lines queued by a
    reader thread and drained by :meth:`poll` (the panel calls it from a QTimer); the next command
    starts when one ends with status 0. :meth:`cancel` kills the whole process tree."""

    def __init__(self, command, env: Optional[dict] = None, cwd=None, accept=None):
        steps = command if command and isinstance(command[0], (list, tuple)) else [command]
        self.steps = [[str(c) for c in step] for step in steps]
        # exit statuses after which the next step still runs, per step (default: 0 only)
        self.accept = [set(a) for a in accept] if accept else [{0} for _ in self.steps]
        self.codes: List[int] = []
        self.env = env
        self.cwd = cwd
        self.proc = None
        self.step = -1
        self.cancelled = False
        self._lines: queue.Queue = queue.Queue()
        self._reader = None
        self._failed_code = None

    @property
    def command(self) -> List[str]:
        return self.steps[max(self.step, 0)]

    def start(self) -> "BackgroundProcess":
        self._start_next()
        return self

    def _start_next(self) -> None:
        self.step += 1
        env = subprocess_environment(self.env)
        options = {}
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            options["start_new_session"] = True  # its own process group, so cancel reaches children
        self.proc = subprocess.Popen(self.steps[self.step], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, encoding="utf-8", errors="replace", bufsize=1, env=env,
                                     cwd=self.cwd, **options)
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()

    def _read(self, proc):
        for line in proc.stdout:
            self._lines.put(line.rstrip("\r\n"))
        proc.stdout.close()

    def _advance(self) -> None:
        """Start the next step when the current one has ended well."""
        if self.proc is None or self.cancelled or self._failed_code is not None:
            return
        if self.proc.poll() is None or self._reader.is_alive():
            return
        if len(self.codes) <= self.step:
            self.codes.append(self.proc.returncode)
        if self.proc.returncode not in self.accept[self.step]:
            self._failed_code = self.proc.returncode
        elif self.step + 1 < len(self.steps):
            self._start_next()

    def poll(self) -> List[str]:
        """Output lines since the last call; never blocks."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                break
        self._advance()
        return lines

    @property
    def running(self) -> bool:
        if self.proc is None:
            return False
        self._advance()
        alive = self.proc.poll() is None or self._reader.is_alive()
        return alive or (not self.cancelled and self._failed_code is None and self.step + 1 < len(self.steps)
                         and self.proc.returncode in self.accept[self.step])

    @property
    def returncode(self) -> Optional[int]:
        """None while running; the failing step's status, else 0 when every step ended with an
        accepted status."""
        if self.running:
            return None
        if self._failed_code is not None:
            return self._failed_code
        return 0 if self.proc.returncode in self.accept[self.step] else self.proc.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        """Block until every step has ended (tests and scripts; the panel polls)."""
        import time

        start = time.time()
        while self.running:
            if timeout is not None and time.time() - start > timeout:
                raise subprocess.TimeoutExpired(self.command, timeout)
            self.proc.wait(None if timeout is None else max(0.01, timeout - (time.time() - start)))
            self._reader.join(1.0)
            self._advance()
        return self.returncode

    def cancel(self) -> None:
        if self.proc is None:
            return
        self.cancelled = True
        if self.proc.poll() is not None:
            return
        if os.name == "nt":
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(self.proc.pid)], capture_output=True)
        else:
            import signal

            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


@dataclass
class Job:
    """One background job and what it was started with.

    The node IDs are the panel's choice at the moment the job started: the result lands on them
    even if the user selects other nodes while it runs. ``work_dir`` (the case, an uncompressed
    copy of the CT) is deleted by :meth:`cleanup` when the job ends, fails or is cancelled.
    ``xray_id``, ``camera`` and ``drr_path`` are view 0's; ``views`` holds each further view's
    (``{"index", "name", "xray_id", "camera", "drr_path"}``), empty for one X-ray.
    """

    kind: str  # "register" or "train"
    process: BackgroundProcess
    work_dir: Path
    ct_id: Optional[str] = None
    xray_id: Optional[str] = None
    output_transform_id: Optional[str] = None
    camera: object = None
    result_path: Optional[Path] = None
    drr_path: Optional[Path] = None
    model_path: Optional[Path] = None
    views: List[dict] = field(default_factory=list)
    log: List[str] = field(default_factory=list)

    def poll(self) -> List[str]:
        lines = self.process.poll()
        self.log.extend(lines)
        del self.log[:-LOG_LINES]
        return lines

    @property
    def running(self) -> bool:
        return self.process.running

    def cancel(self) -> None:
        self.process.cancel()

    def cleanup(self) -> None:
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
