"""The module's logic: MRML nodes in, background jobs started and finished, nodes out.

Usable from the panel, the Python console or a script, without Qt. One API: the node helpers are
the functions of :mod:`nodes`, :mod:`display` and :mod:`export`; this class holds what needs
state (the job, the device choice) and the registration in this process for scripts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

import slicer

from . import dependencies
from .jobs import BackgroundProcess, Job, drr_command, register_command, train_command
from .nodes import (
    ATTRIBUTE_PREFIX,
    FurtherView,
    further_view,
    input_error,
    is_single_slice,
    read_result,
    rigid,
    scene_of,
    show_c_arm,
    store_result,
    view_name,
    volume_from_node,
    write_case,
    write_volume_nrrd,
    xray_for_registration,
)

try:  # the Slicer application; absent under slicer-core and PythonSlicer scripts
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:
    _LogicBase = object

CONFIDENCE_WARNING = 0.5
"""Below this confidence the panel warns that the pose should be checked by eye."""

DIVERGED = 3
"""``sphericalreg register``'s exit status when the registration diverged (outputs written)."""
RESULT_METRICS = ("confidence", "similarity", "seconds", "iterations")
UNCERTAINTY_METRICS = ("depth_sd_mm", "inplane_sd_mm")
VIEW_METRICS = ("confidence", "final_ncc")


def gpu_available() -> Optional[bool]:
    """Whether torch sees a CUDA GPU; None when torch is not installed (nothing is installed to ask)."""
    if dependencies.installed_version("torch") is None:
        return None
    try:
        import torch
    except ImportError:
        return None
    return bool(torch.cuda.is_available())


def resolve_device_choice(choice: Optional[str]) -> Optional[str]:
    """The ``--device`` for the subprocess: None for "auto" (the library's choice: a GPU if torch sees one)."""
    if choice in (None, "", "auto"):
        return None
    if choice not in ("cpu", "cuda"):
        raise input_error("device", f"is {choice!r}", "auto, cpu or cuda")
    return choice


class SphericalRegLogic(_LogicBase):
    """Registration and training of one CT and X-ray, in background processes.

    :meth:`start_registration` writes the case into a new temporary folder and starts the job;
    :meth:`finish_registration` reads its output files onto the nodes chosen at the start (the
    DRR node from the subprocess's ``drr.npy``: this process never renders), then deletes the
    folder. :meth:`register` runs in this process and blocks, for scripts.
    """

    def __init__(self):
        if _LogicBase is not object:
            _LogicBase.__init__(self)
        self.job: Optional[Job] = None

    def getParameterNode(self):
        from .parameters import SphericalRegParameterNode

        return SphericalRegParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ jobs

    @staticmethod
    def _work_dir(prefix: str) -> Path:
        app = getattr(slicer, "app", None)
        root = app.temporaryPath if app is not None else None
        return Path(tempfile.mkdtemp(prefix=prefix, dir=root))

    @staticmethod
    def further_views(xray_node, other_views) -> list:
        """``other_views`` as checked :class:`FurtherView` (numbered 1, 2, ...): each a FurtherView
        or ``(xray_node, camera, relative)`` with ``relative`` a transform node, a 4x4 matrix or
        None (a geometry.json beside the X-ray's file); a clear message names a bad view."""
        views = []
        for k, view in enumerate(other_views, start=1):
            if isinstance(view, FurtherView):
                view = (view.xray_node, view.camera, view.camera_from_reference)
            node, camera, relative = view
            views.append(further_view(k, node, camera, relative, reference_xray_node=xray_node))
        seen = {}
        for view in views:
            previous = seen.setdefault(view.xray_node.GetID(), view)
            if previous is not view:
                raise input_error(f"{view.name} ({view.xray_node.GetName()})", f"is the same node as {previous.name}",
                                  "one X-ray node per view")
        return views

    def start_registration(self, ct_node, xray_node, camera, model_path, output_transform_node=None,
                           init_camera_from_world=None, device: Optional[str] = None, env=None,
                           work_dir=None, python: Optional[str] = None, extra_args=(), other_views=(),
                           relative_sd_deg: float = 0.0, distortion=None) -> Job:
        """Write the case (CT as NRRD, X-ray, geometry, optional start pose, and ``view_k/`` for each
        of ``other_views``: see :meth:`further_views`) and start the two background steps
        (register all views jointly, then every view's DRR). ``relative_sd_deg`` > 0: the further
        views' relative poses are known only to about that many degrees and are refined
        (``--relative-sd``). ``distortion``: an image-intensifier C-arm's (pincushion, S) from its
        dewarp calibration, undone before the intensity stage (``--distortion``); None or zeros: none.
        The nodes are captured now."""
        if self.job is not None and self.job.running:
            raise input_error("registration", "another job is running", "one job at a time (Cancel it first)")
        if not is_single_slice(xray_node):
            raise input_error(xray_node.GetName() if xray_node else "X-ray", "is not a single-slice image",
                              "a 2D X-ray")
        views = self.further_views(xray_node, other_views)
        if not Path(model_path).is_file():
            raise input_error(model_path, "is not a model file", "a .pt model made by Train")
        if relative_sd_deg < 0:
            raise input_error("relative pose sd", f"is {relative_sd_deg} deg", "0 (exact) or more")
        if relative_sd_deg > 0 and views:
            extra_args = [*extra_args, "--relative-sd", repr(float(relative_sd_deg))]
        if distortion is not None and any(distortion):
            from SphericalRegLib.distortion import validate_distortion
            from SphericalRegLib.errors import InputError

            try:
                k, s = validate_distortion(distortion)
            except InputError as e:
                raise input_error("image-intensifier distortion", e.problem, e.expected) from None
            extra_args = [*extra_args, "--distortion", f"{k!r},{s!r}"]
        work = Path(work_dir) if work_dir is not None else self._work_dir("SphericalReg-")
        try:
            case = write_case(ct_node, xray_node, camera, work / "case", init_camera_from_world, views)
            out = work / "result"
            device = resolve_device_choice(device)
            steps = [register_command(case, model_path, out, use_init=init_camera_from_world is not None,
                                      python=python, device=device, extra_args=extra_args),
                     drr_command(case, out / "result.json", out / "drr.npy", python=python, device=device)]
            process = BackgroundProcess(steps, env=env, accept=[{0, DIVERGED}, {0}]).start()
        except Exception:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
            raise
        self.job = Job("register", process, work, ct_id=ct_node.GetID(), xray_id=xray_node.GetID(),
                       output_transform_id=output_transform_node.GetID() if output_transform_node else None,
                       camera=camera, result_path=out / "result.json", drr_path=out / "drr.npy",
                       model_path=Path(model_path),
                       views=[{"index": v.index, "name": v.name, "xray_id": v.xray_node.GetID(), "camera": v.camera,
                               "drr_path": out / f"drr_{v.name}.npy"} for v in views])
        return self.job

    def start_training(self, ct_node, output_path, device: Optional[str] = None, overwrite: bool = False,
                       env=None, work_dir=None, python: Optional[str] = None, extra_args=()) -> Job:
        """Write the CT and start ``sphericalreg train`` on it. ``overwrite``: the user confirmed
        replacing ``output_path`` (the save dialog asks); the old file is removed when training starts."""
        if self.job is not None and self.job.running:
            raise input_error("training", "another job is running", "one job at a time (Cancel it first)")
        output_path = Path(output_path)
        if output_path.exists():
            if not overwrite:
                raise input_error(output_path, "already exists", "a new model file name, or confirm replacing it")
            output_path.unlink()
        work = Path(work_dir) if work_dir is not None else self._work_dir("SphericalReg-train-")
        try:
            write_volume_nrrd(ct_node, work / "ct.nrrd")
            command = train_command(work / "ct.nrrd", output_path, python=python,
                                    device=resolve_device_choice(device), extra_args=extra_args)
            process = BackgroundProcess(command, env=env).start()
        except Exception:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
            raise
        self.job = Job("train", process, work, ct_id=ct_node.GetID(), model_path=output_path)
        return self.job

    def cancel(self) -> None:
        """Stop the running job (the whole process tree) and delete its temporary folder."""
        job, self.job = self.job, None
        if job is not None:
            job.cancel()
            job.cleanup()

    def finish_registration(self, job: Job, scene=None) -> dict:
        """The job's result on the nodes it started with: the output transform (a new one unless
        one was chosen), the C-arm under it and the DRR node, made from ``drr.npy`` on the X-ray's
        grid (replacing the one an earlier registration made for this X-ray). For each further
        view: its own transform (world_from_camera of that view, from result.json's ``per_view``,
        as ``world_from_camera_view_k.tfm`` holds it; referenced from the output transform as
        ``SphericalReg.view_k`` and reused), its C-arm under it and its DRR node from
        ``drr_view_k.npy`` on its X-ray's grid. Deletes the job's folder. Returns ``{"result",
        "transform", "drr", "c_arm", "diverged", "views"}``; ``views`` has one entry per view, view 0
        first: ``{"index", "name", "xray", "transform", "drr", "c_arm", "final_ncc", "residual_shift_mm",
        "confidence", "uncertainty", "relative_pose_refined"}``."""
        scene = scene or slicer.mrmlScene
        try:
            ct, xray = scene.GetNodeByID(job.ct_id), scene.GetNodeByID(job.xray_id)
            further = [(v, scene.GetNodeByID(v["xray_id"])) for v in job.views]
            if ct is None or xray is None or any(node is None for _, node in further):
                raise input_error("scene", "the CT or an X-ray the registration started with was removed",
                                  "the nodes kept until the registration ends")
            output = scene.GetNodeByID(job.output_transform_id) if job.output_transform_id else None
            result = read_result(job.result_path)
            uncertainty = result.get("uncertainty") or {}
            metrics = {**{k: result.get(k) for k in RESULT_METRICS},
                       **{k: uncertainty.get(k) for k in UNCERTAINTY_METRICS}}
            transform = store_result(ct, result["camera_from_world"], output, metrics, scene)
            c_arm = show_c_arm(transform, job.camera, xray, xray_for_registration(xray))
            drr = self.drr_node_from_file(xray, job.drr_path)
            per_view = self.per_view(result, 1 + len(further))
            views = [{"index": 0, "name": view_name(0), "xray": xray, "transform": transform, "drr": drr,
                      "c_arm": c_arm, **per_view[0]}]
            for view, node in further:
                info = per_view[view["index"]]
                view_transform = self._view_transform(ct, transform, view["name"], info, scene)
                views.append({"index": view["index"], "name": view["name"], "xray": node, "transform": view_transform,
                              "drr": self.drr_node_from_file(node, view["drr_path"]),
                              "c_arm": show_c_arm(view_transform, view["camera"], node, xray_for_registration(node),
                                                  index=view["index"]), **info})
        finally:
            job.cleanup()
            if self.job is job:
                self.job = None
        diverged = bool(job.process.codes and job.process.codes[0] == DIVERGED) or bool(result.get("diverged"))
        return {"result": result, "transform": transform, "drr": drr, "c_arm": c_arm, "diverged": diverged,
                "views": views}

    @staticmethod
    def per_view(result: dict, n_views: int) -> list:
        """Each view's ``{"camera_from_world", "final_ncc", "residual_shift_mm", "confidence", "uncertainty",
        "relative_pose_refined"}`` from result.json: its ``per_view`` list for several views, the
        top-level figures for one. A result with fewer views than the job wrote is an error."""
        if n_views == 1:
            return [{"camera_from_world": result["camera_from_world"], "final_ncc": result.get("final_ncc"),
                     "residual_shift_mm": result.get("residual_shift_mm"), "confidence": result.get("confidence"), "uncertainty": result.get("uncertainty"),
                     "relative_pose_refined": None}]
        listed = result.get("per_view") or []
        if result.get("views") != n_views or len(listed) != n_views:
            raise input_error("result.json", f"reports {result.get('views')} views ({len(listed)} in per_view)",
                              f"the {n_views} views the registration was given")
        views = []
        for k, view in enumerate(listed):
            name = view_name(k)
            if view.get("name") not in (None, name):
                raise input_error("result.json", f"per_view[{k}] is {view.get('name')!r}", name)
            views.append({"camera_from_world": rigid(view.get("camera_from_world", np.zeros(0)),
                                                     f"result.json: per_view {name}: camera_from_world"),
                          "final_ncc": view.get("final_ncc"), "residual_shift_mm": view.get("residual_shift_mm"),
                          "confidence": view.get("confidence"),
                          "uncertainty": view.get("uncertainty"),
                          "relative_pose_refined": view.get("relative_pose_refined")})
        return views

    @staticmethod
    def _view_transform(ct, reference_transform, name: str, info: dict, scene):
        """View ``name``'s world_from_camera as a transform node under the CT's parent, the one an
        earlier result made (referenced from view 0's transform) reused."""
        role = ATTRIBUTE_PREFIX + name
        existing = reference_transform.GetNodeReference(role)
        if existing is None:
            existing = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode",
                                               scene.GenerateUniqueName(f"{reference_transform.GetName()} {name}"))
        uncertainty = info.get("uncertainty") or {}
        metrics = {**{k: info.get(k) for k in VIEW_METRICS}, **{k: uncertainty.get(k) for k in UNCERTAINTY_METRICS}}
        node = store_result(ct, info["camera_from_world"], existing, metrics, scene)
        reference_transform.SetNodeReferenceID(role, node.GetID())
        return node

    @staticmethod
    def drr_node_from_file(xray_node, path):
        """The DRR node of ``xray_node`` (its ``SphericalReg.drr`` reference, reused) holding the
        image in ``path`` (the subprocess's drr.npy)."""
        from .nodes import create_drr_node

        path = Path(path)
        if not path.is_file():
            raise input_error(path, "was not written", "the DRR the registration's second step writes")
        image = np.load(path, allow_pickle=False)
        existing = xray_node.GetNodeReference(ATTRIBUTE_PREFIX + "drr")
        node = create_drr_node(xray_node, image, node=existing)
        xray_node.SetNodeReferenceID(ATTRIBUTE_PREFIX + "drr", node.GetID())
        return node

    def finish_training(self, job: Job) -> Path:
        job.cleanup()
        if self.job is job:
            self.job = None
        if not Path(job.model_path).is_file():
            raise input_error(job.model_path, "was not written", "the model file training saves")
        return Path(job.model_path)

    # ------------------------------------------------------------------ in this process (scripts)

    def register(self, ct_node, xray_node, camera, model_path, output_transform_node=None,
                 progress_callback=None, cancel_event=None, init=None, device=None, other_views=(), **options):
        """Register in this process (blocks; the panel uses :meth:`start_registration`).

        ``other_views`` as for :meth:`start_registration` (registered jointly; the transform is
        view 0's, each view's pose is in ``result.views``). Returns ``(transform node,
        RegistrationResult)``; ``options`` are RegisterOptions fields.
        """
        import torch
        from SphericalRegLib.confidence import load_calibration
        from SphericalRegLib.devices import resolve_device
        from SphericalRegLib.model import load_model
        from SphericalRegLib.register import Registrar, RegisterOptions
        from SphericalRegLib.views import View
        from SphericalRegLib.volume import Volume

        views = [View(torch.from_numpy(xray_for_registration(v.xray_node).astype(np.float32)), v.camera,
                      torch.from_numpy(v.camera_from_reference), name=v.name)
                 for v in self.further_views(xray_node, other_views)]
        ct = volume_from_node(ct_node)
        ct = Volume(ct.data.to(torch.float32), ct.ijk_to_ras)  # HU as the library reads them
        image = torch.from_numpy(xray_for_registration(xray_node).astype(np.float32))
        start = None if init is None else torch.from_numpy(rigid(init, "init"))
        model = load_model(model_path, ct, resolve_device(resolve_device_choice(device)))
        registrar = Registrar(model, ct, RegisterOptions(**options), load_calibration(model_path))
        result = registrar.register(image, camera, start, other_views=views, progress=progress_callback,
                                    cancel=cancel_event)
        node = store_result(ct_node, result.camera_from_world, output_transform_node, {
            "confidence": result.confidence, "similarity": result.similarity,
            "seconds": result.seconds, "iterations": result.iterations,
        }, scene_of(ct_node))
        return node, result

    # ------------------------------------------------------------------ dependencies

    @staticmethod
    def install_dependencies(confirm: bool = True, force: bool = False, log=print) -> bool:
        """Install what is missing inside Slicer after one question to the user (torch and
        torchvision through the PyTorch extension, each other package with the requirements
        Slicer does not bundle); ``force`` reinstalls the whole set. Returns whether everything
        the registration imports then imports (checked in a fresh ``PythonSlicer``)."""
        current = dependencies.plan()
        if not current.missing and not force:
            return True
        if confirm:
            listed = ", ".join(current.missing) or ", ".join(dependencies.REQUIREMENTS)
            from .i18n import _

            question = (_("SphericalReg needs these Python packages: {packages}.").format(packages=listed) + "\n"
                        + _("Install them now? This downloads a few hundred MB and may take several minutes."))
            if not slicer.util.confirmOkCancelDisplay(question, _("SphericalReg: install Python packages")):
                return False
        if current.torch_missing:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise input_error("PyTorch", "extension is not installed",
                                  "the PyTorch extension, from the Extensions Manager") from None
            torch_logic = PyTorchUtils.PyTorchUtilsLogic()
            if torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=dependencies.TORCH_VERSION,
                                        torchvisionVersionRequirement=dependencies.TORCHVISION_VERSION) is None:
                return False
        # one string: Slicer 5.6+ splits it with shlex, older releases with str.split
        dependencies.install(pip=lambda args: slicer.util.pip_install(" ".join(args)), force=force, log=log)
        from .jobs import python_executable, subprocess_environment

        env = slicer.util.startupEnvironment() if hasattr(slicer.util, "startupEnvironment") else None
        problem = dependencies.check_imports(python_executable(), env=subprocess_environment(env))
        if problem:
            log(f"SphericalReg: an installed package does not import: {problem}")
        return problem is None and not dependencies.plan().missing
