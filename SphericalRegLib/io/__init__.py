"""Reading CTs, X-rays and case folders; writing JSON and Slicer-loadable transforms.

Every file problem becomes an :class:`~SphericalRegLib.errors.InputError` that names the file,
what was wrong and what was expected. World coordinates are RAS mm (ITK reads LPS:
RAS = diag(-1, -1, 1) LPS). Results are written by :mod:`SphericalRegLib.register.outputs`.
"""

from .cases import CT_NAMES, XRAY_NAMES, Case, as_pose, read_case, read_pose, read_truth, truth_path
from .dicom import read_dicom_series
from .files import atomic_write, read_json, write_csv, write_json
from .images import LPS_TO_RAS, read_ct, read_xray
from .transforms import read_itk_transform, write_itk_transform

__all__ = [
    "Case", "read_ct", "read_xray", "read_case", "read_truth", "read_pose", "truth_path", "as_pose",
    "read_dicom_series", "read_json", "write_json", "write_csv", "atomic_write", "write_itk_transform", "read_itk_transform",
    "CT_NAMES", "XRAY_NAMES", "LPS_TO_RAS",
]
