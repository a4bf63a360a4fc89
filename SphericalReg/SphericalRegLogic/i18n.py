"""Translatable strings: Slicer's ``tr``/``translate`` (Slicer 5.3 and later), or a stand-in that
returns the text unchanged (older releases, PythonSlicer scripts and slicer-core)."""

try:
    from slicer.i18n import tr as _  # noqa: F401
    from slicer.i18n import translate  # noqa: F401
except ImportError:  # no slicer.i18n here
    def _(text: str) -> str:
        return text

    def translate(context: str, text: str) -> str:
        return text

__all__ = ["_", "translate"]
