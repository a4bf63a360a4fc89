"""Registration of one X-ray to its CT with a trained model, as a pipeline of named stages.

``Registrar.register`` runs, in order (:mod:`.stages`): the initial pose (the regressor, or a
given pose); Levenberg-Marquardt on the learnt spherical similarity; the keep-or-discard check of
its answer; a coarse translation search; Levenberg-Marquardt on patch NCC of line-integral DRRs,
coarse to fine; when the learnt stage ran and the start the search did not keep lies in another
basin, that start runs the first level too and the lower cost there goes on. Each stage returns a
:class:`StageRecord`; :class:`RegistrationResult` gathers them. The X-ray is prepared once per image size (:class:`XrayPyramid`) and the CT once per
Registrar, so many X-rays of one CT register without repeating it.
"""

from ..errors import Cancelled
from .case import register_case
from .context import RegistrationContext
from .options import IntensityLevel, RegisterOptions
from .outputs import save_overlay, write_outputs
from .pyramid import XrayPyramid
from .records import RegistrationResult, StageRecord
from .registrar import Registrar
from .residuals import ncc_residual

__all__ = ["Registrar", "RegisterOptions", "IntensityLevel", "RegistrationResult", "StageRecord", "XrayPyramid",
           "RegistrationContext", "ncc_residual", "register_case", "write_outputs", "save_overlay", "Cancelled"]
