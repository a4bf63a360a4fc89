"""SphericalReg: 2D/3D X-ray to CT registration by spherical similarity learning and
differentiable Levenberg-Marquardt (Chen & Kong, WACV 2026).

Pure Python and torch; no 3D Slicer import anywhere in this package.
"""

__version__ = "0.1.0"
