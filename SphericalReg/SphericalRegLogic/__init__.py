"""SphericalReg's Slicer logic: MRML nodes in, arrays and matrices to SphericalRegLib, nodes out.

A package rather than SphericalRegLogic.py: Slicer tries to load every .py file beside a
scripted module as a module of its own, but never looks inside folders. It is split by concern:

========================  =================================================================
``parameters``            the parameter node the panel binds to (application only)
``nodes``                 volumes, the X-ray and its camera, the pose as a transform, the C-arm
``display``               the DRR / difference / edges over the X-ray in the slice views
``jobs``                  the commands, the background process, the job record
``dependencies``          what is missing and installing it (stdlib + packaging only)
``export``                ITK transform file, scene bundle (.mrb), OpenIGTLink
``sampledata``            the example through the Sample Data module
``logic``                 :class:`SphericalRegLogic`: start and finish jobs, register in-process
``drr_worker``            the DRR step of a registration (run as a subprocess, never imported here)
========================  =================================================================

Everything here runs without Qt, so it works in the application, in ``PythonSlicer`` and with
the ``slicer-core`` package. torch and SphericalRegLib are imported inside the functions that
need them: the module loads in a Slicer that has not installed them yet.
"""

from .dependencies import missing_packages
from .display import (
    COMPARE_MODES,
    comparison_node,
    difference_image,
    edge_image,
    set_overlay_opacity,
    show_overlay,
)
from .export import export_transform, openigtlink_available, save_scene_bundle, send_transform
from .jobs import (
    BackgroundProcess,
    Job,
    Progress,
    drr_command,
    parse_progress,
    register_command,
    train_command,
)
from .logic import CONFIDENCE_WARNING, SphericalRegLogic, gpu_available, resolve_device_choice
from .nodes import (
    ATTRIBUTE_PREFIX,
    FurtherView,
    beam_model_node,
    camera_from_dicom_tags,
    camera_from_node,
    create_drr_node,
    detector_ijk_to_camera,
    detector_plane_node,
    further_view,
    is_single_slice,
    pose_from_transform_node,
    pose_to_transform_node,
    read_result,
    relative_pose_beside_file,
    set_camera_attributes,
    show_c_arm,
    source_marker_node,
    store_result,
    update_node_from_volume,
    view_name,
    volume_from_node,
    write_case,
    write_volume_nrrd,
    xray_for_registration,
    xray_image_from_node,
)

__all__ = [
    "ATTRIBUTE_PREFIX", "BackgroundProcess", "COMPARE_MODES", "CONFIDENCE_WARNING", "FurtherView", "Job", "Progress",
    "SphericalRegLogic", "beam_model_node", "camera_from_dicom_tags", "camera_from_node", "comparison_node",
    "create_drr_node", "detector_ijk_to_camera", "detector_plane_node", "difference_image", "drr_command",
    "edge_image", "export_transform", "further_view", "gpu_available", "is_single_slice", "missing_packages",
    "openigtlink_available", "parse_progress", "pose_from_transform_node", "pose_to_transform_node",
    "read_result", "register_command", "relative_pose_beside_file", "resolve_device_choice", "save_scene_bundle",
    "send_transform",
    "set_camera_attributes", "set_overlay_opacity", "show_c_arm", "show_overlay", "source_marker_node",
    "store_result", "train_command", "update_node_from_volume", "view_name", "volume_from_node", "write_case",
    "write_volume_nrrd", "xray_for_registration", "xray_image_from_node",
]
